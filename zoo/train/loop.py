"""The skill-training loop of SKILLOPT.md: rollout, reflect, aggregate, select, update, gate.

A run is a fixed sequence of units, known from the config: every step of every epoch,
and from epoch 2 an epoch boundary (slow update, meta skill). After each unit the run
directory `<state_dir>/train/<spec>/<run-id>/` gets that unit's artifacts (candidate skill,
edit report, scores, decision) and then `state.json`, so an interrupted run resumes at the
first unit not recorded. Batches are seeded by their position, so a resumed run makes the
same choices as one never interrupted. Spend is counted per call; reaching `max_cost_usd`
ends the run cleanly with the best skill so far. `zoo.train.run` drives a whole run.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

import polars as pl

from registry import ShadowzooError, sha256_text
from scorer.quality_metrics import score_rows
from shadow.apply import apply_variant
from shadow.pricing import workspace_prices
from shadow.providers import ProviderPool
from zoo.train.dataset import Item
from zoo.train.edits import Edit, apply_edits, set_guidance
from zoo.train.gate import GateDecision, decide
from zoo.train.meter import BudgetExhausted, Meter
from zoo.train.optimizer import CallStats, Optimizer, Trajectory
from zoo.train.outcome import Progress
from zoo.train.plan import Plan, Unit
from zoo.train.rundir import RunDir
from zoo.train.schedule import edit_budget

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
GIVE_UP_AFTER_CALLS = 3


class Trainer:
    """Runs the units of one plan on one event loop, recording each as it completes."""

    def __init__(self, plan: Plan, run_dir: RunDir, pool: ProviderPool, progress: Progress) -> None:
        self.plan = plan
        self.cfg = plan.config
        self.run = run_dir
        self.pool = pool
        self.progress = progress
        saved = run_dir.state() or {}
        self.state: dict[str, Any] = saved or self._initial_state()
        self.meter = Meter(workspace_prices(plan.workspace), self.cfg.max_cost_usd, saved.get("meter"))
        self.stats = CallStats(**saved.get("optimizer_stats", {}))
        self.optimizer = Optimizer(self._ask_optimizer, self.stats)
        self._slots = asyncio.Semaphore(self.cfg.concurrency)

    def _initial_state(self) -> dict[str, Any]:
        base = self.plan.base_skill
        return {"run_id": self.run.run_id, "spec": self.plan.spec_file.spec.name, "status": "running",
                "done": 0, "current": base, "best": base, "best_score": None, "epoch_start": base,
                "rejected": [], "memory": "", "history": [], "units": []}

    # -- the whole run

    async def train(self) -> str:
        """Run every unit not yet done; return the final status ('finished' or 'budget_exhausted')."""
        units = self.plan.units()
        if self.state["best_score"] is None:
            self.state["best_score"] = _mean(await self.selection_scores(self.plan.base_skill))
            self.state["base_score"] = self.state["best_score"]
        try:
            for index in range(self.state["done"], len(units)):
                await self._run_unit(units[index], index, len(units))
                self._give_up_if_optimizer_useless()
        except BudgetExhausted as exc:
            self.progress(f"stopping: {exc}; keeping the best skill so far")
            self.state["budget_note"] = str(exc)
            return "budget_exhausted"
        return "finished"

    async def _run_unit(self, unit: Unit, index: int, total: int) -> None:
        started, waited = time.perf_counter(), self.meter.waiting_s
        if unit.step is None:
            record = await self.epoch_boundary(unit)
        else:
            budget = edit_budget(self.cfg.lr_scheduler, index, total, self.cfg.edit_budget, self.cfg.min_edit_budget)
            record = await self.step(unit, budget)
        wall = time.perf_counter() - started
        record["timing"] = {"wall_s": wall, "model_wait_s": self.meter.waiting_s - waited}
        self.run.write(f"{unit.name}/decision.json", record)
        self.state["units"].append({"unit": unit.name, **record["summary"], "timing": record["timing"]})
        self.state["done"] = index + 1
        self.save()
        self.progress(f"[{index + 1}/{total}] {unit.name}: {record['summary']['outcome']}")

    def save(self) -> None:
        self.state["meter"] = self.meter.saved()
        self.state["optimizer_stats"] = {"calls": self.stats.calls, "failed": self.stats.failed,
                                         "unparseable": self.stats.unparseable, "by_task": self.stats.by_task}
        self.run.write("state.json", self.state)

    def _give_up_if_optimizer_useless(self) -> None:
        if self.stats.calls >= GIVE_UP_AFTER_CALLS and self.stats.usable == 0:
            raise ShadowzooError(
                f"the optimizer gave no usable reply in {self.stats.calls} calls "
                f"({self.stats.failed} failed, {self.stats.unparseable} not JSON); see the log for the replies"
            )

    # -- one step: rollout, reflect, aggregate, select, update, gate

    async def step(self, unit: Unit, budget: int) -> dict[str, Any]:
        current = self.state["current"]
        trajectories = await self.rollout(current, self._batch(unit))
        self.meter.check()
        failed = [t for t in trajectories if t.score < 1]
        succeeded = [] if self.cfg.failure_only else [t for t in trajectories if t.score >= 1]
        patches = await self.reflect(current, failed, succeeded)
        merged = await self.aggregate(patches)
        kept = await self.select(current, merged, budget)
        self.meter.check()
        candidate, statuses = apply_edits(current, kept)
        self.run.write(f"{unit.name}/candidate.md", candidate)
        self.run.write(f"{unit.name}/edits.json", {
            "budget": budget, "proposed": sum(len(p) for group in patches for p in group),
            "merged": [e.as_dict() for e in merged],
            "kept": [{**e.as_dict(), "status": s} for e, s in zip(kept, statuses)],
        })
        outcome = await self.gate(unit, candidate, [e.as_dict() for e in kept])
        outcome["summary"].update({"train_score": _mean([t.score for t in trajectories]), "kept": len(kept)})
        return outcome

    async def rollout(self, skill: str, items: list[Item]) -> list[Trajectory]:
        """The target answers each item with the skill; each answer is scored by the slot's metrics."""
        outputs = await asyncio.gather(*(self._answer(skill, item) for item in items))
        scores = self._score(items, outputs)
        return [Trajectory(i.input, i.expected, o, s) for i, o, s in zip(items, outputs, scores)]

    async def reflect(self, skill: str, failed: list[Trajectory], succeeded: list[Trajectory]) -> list[list[list[Edit]]]:
        """Patches from minibatches: failure-driven first, then success-driven."""
        size = self.cfg.minibatch_size
        groups = []
        for trajectories, is_failure in ((failed, True), (succeeded, False)):
            batches = [trajectories[i:i + size] for i in range(0, len(trajectories), size)]
            patches = await asyncio.gather(*(
                self.optimizer.reflect(skill, batch, is_failure, self.state["memory"], self.state["rejected"])
                for batch in batches
            ))
            groups.append([p for p in patches if p])
        return groups

    async def aggregate(self, groups: list[list[list[Edit]]]) -> list[Edit]:
        """Hierarchical merge, merge_batch_size patches at a time; then one final merge of the two kinds."""
        merged = [await self._merge_down(patches) for patches in groups]
        pool = [patch for patch in merged if patch]
        if not pool:
            return []
        final = await self.optimizer.merge(pool, self.state["memory"], final=True) if len(_flat(pool)) > 1 else None
        return _dedupe(final if final else _flat(pool))

    async def _merge_down(self, patches: list[list[Edit]]) -> list[Edit]:
        while len(patches) > 1:
            groups = [patches[i:i + self.cfg.merge_batch_size] for i in range(0, len(patches), self.cfg.merge_batch_size)]
            replies = await asyncio.gather(*(self.optimizer.merge(g, self.state["memory"], final=False) for g in groups))
            patches = [reply if reply else _flat(group) for reply, group in zip(replies, groups)]
        return patches[0] if patches else []

    async def select(self, skill: str, edits: list[Edit], budget: int) -> list[Edit]:
        """Keep `budget` edits: the optimizer's ranking, else the first ones."""
        if len(edits) <= budget:
            return edits
        order = await self.optimizer.rank(skill, edits, budget, self.state["memory"])
        if not order:
            return edits[:budget]
        return [edits[i] for i in order[:budget]]

    async def gate(self, unit: Unit, candidate: str, edits: list[dict]) -> dict[str, Any]:
        """Accept the candidate only if it beats the current skill on the selection split."""
        current = self.state["current"]
        if candidate == current:
            return {"summary": {"outcome": "no change proposed", "accepted": False}}
        tokens = len(candidate) // CHARS_PER_TOKEN
        if self.cfg.max_skill_tokens is not None and tokens > self.cfg.max_skill_tokens:
            self._reject(edits, "too_long", None, None)
            outcome = f"rejected unscored: ~{tokens} tokens > max_skill_tokens {self.cfg.max_skill_tokens}"
            return {"summary": {"outcome": outcome, "accepted": False}}
        new, old = await self.selection_scores(candidate), await self.selection_scores(current)
        decision = decide(self.cfg.gate, new, old, self.cfg.gate_alpha)
        self.run.write(f"{unit.name}/scores.json", {"candidate": new, "current": old})
        self._record(candidate, decision, edits)
        verdict = "accepted" if decision.accepted else "rejected"
        outcome = f"{verdict}: selection {decision.current_mean:.3f} -> {decision.candidate_mean:.3f} ({decision.reason})"
        return {"summary": {"outcome": outcome, "accepted": decision.accepted}, "decision": decision.as_dict()}

    def _record(self, candidate: str, decision: GateDecision, edits: list[dict]) -> None:
        if not decision.accepted:
            self._reject(edits, "gate", decision.current_mean, decision.candidate_mean)
            return
        self.state["current"] = candidate
        if decision.candidate_mean > self.state["best_score"]:
            self.state["best"], self.state["best_score"] = candidate, decision.candidate_mean
        self.state["history"].append({"accepted": edits, "before": decision.current_mean, "after": decision.candidate_mean})

    def _reject(self, edits: list[dict], why: str, before: float | None, after: float | None) -> None:
        entry = {"edits": edits, "why": why, "before": before, "after": after}
        self.state["rejected"].append(entry)
        self.state["history"].append({"rejected": edits, "why": why, "before": before, "after": after})

    # -- epoch boundary: slow update and meta skill

    async def epoch_boundary(self, unit: Unit) -> dict[str, Any]:
        """Slow update (gated like any candidate), then the meta-skill memory."""
        record: dict[str, Any] = {"summary": {"outcome": "epoch boundary", "accepted": False}}
        if self.cfg.slow_update:
            record = await self._slow_update(unit)
        if self.cfg.meta_skill:
            memory = await self.optimizer.meta_memory(self.state["history"][-20:], self.state["memory"])
            if memory:
                self.state["memory"] = memory
                self.run.write(f"{unit.name}/memory.md", memory)
        self.state["epoch_start"] = self.state["current"]
        return record

    async def _slow_update(self, unit: Unit) -> dict[str, Any]:
        sample = self._batch(unit)
        before = await self.rollout(self.state["epoch_start"], sample)
        after = await self.rollout(self.state["current"], sample)
        self.meter.check()
        guidance = await self.optimizer.slow_update(self.state["current"], _movement(before, after), self.state["memory"])
        if guidance is None:
            return {"summary": {"outcome": "slow update: no usable guidance", "accepted": False}}
        candidate = set_guidance(self.state["current"], guidance)
        self.run.write(f"{unit.name}/candidate.md", candidate)
        outcome = await self.gate(unit, candidate, [{"op": "slow_update", "content": guidance}])
        outcome["summary"]["outcome"] = "slow update " + outcome["summary"]["outcome"]
        return outcome

    # -- model calls and scores

    async def selection_scores(self, skill: str) -> list[float]:
        """Per-item gate scores of a skill on the selection split, cached by the skill's sha256."""
        return await self._split_scores(skill, "selection", self.plan.splits.selection)

    async def test_score(self, skill: str) -> float:
        """A skill's mean score on the test split (reported, never used to choose)."""
        return _mean(await self._split_scores(skill, "test", self.plan.splits.test))

    async def _split_scores(self, skill: str, split: str, items: list[Item]) -> list[float]:
        key = f"{split}-{sha256_text(skill)}"
        cached = self.run.cached_scores(key)
        if cached is None:
            cached = [t.score for t in await self.rollout(skill, items)]
            self.run.write(f"scores/{key}.json", cached)
        return cached

    async def _answer(self, skill: str, item: Item) -> str | None:
        provider, model, params = self.plan.target
        body = apply_variant(model, params, skill, item.request())
        client = self.pool.get(provider)
        assert client is not None, "the resolver checked the target's provider"
        async with self._slots:
            with self.meter.waiting():
                result = await client.chat(body)
        self.meter.charge(model, result)
        self.meter.target_calls += 1
        if not result.ok:
            self.meter.target_failures += 1
        return result.output if result.ok else None

    async def _ask_optimizer(self, task: str, messages: list[dict[str, str]]) -> str | None:
        chosen = self.cfg.optimizer_model
        client = self.pool.get(chosen.provider)
        assert client is not None, "plan_run checked the optimizer's provider"
        body = {"model": chosen.model, "messages": messages, "temperature": chosen.temperature,
                "max_tokens": chosen.max_tokens}
        with self.meter.waiting():
            result = await client.chat(body)
        self.meter.charge(chosen.model, result)
        if not result.ok:
            log.warning("optimizer %s call failed after %d attempt(s): %s", task, result.attempts, result.error)
        return result.output if result.ok else None

    def _score(self, items: list[Item], outputs: list[str | None]) -> list[float]:
        frame = pl.DataFrame({"output": outputs, "label_json": [json.dumps(i.expected) for i in items]},
                             schema={"output": pl.Utf8, "label_json": pl.Utf8})
        soft = [q if q is not None else 0.0 for q in score_rows(self.plan.quality, frame).to_list()]
        hard = [1.0 if q >= 1 - 1e-9 else 0.0 for q in soft]
        if self.cfg.gate_metric == "hard":
            return hard
        if self.cfg.gate_metric == "soft":
            return soft
        w = self.cfg.mixed_weight
        return [(1 - w) * h + w * s for h, s in zip(hard, soft)]

    def _batch(self, unit: Unit) -> list[Item]:
        """The unit's train items, chosen by a generator seeded with its position (resume-safe)."""
        train = self.plan.splits.train
        rng = random.Random(f"{self.cfg.seed}:{unit.name}")
        return rng.sample(train, min(self.cfg.batch_size, len(train)))


def _movement(before: list[Trajectory], after: list[Trajectory]) -> dict[str, list[Trajectory]]:
    """Items sorted by how they moved from the previous epoch's skill to the current one."""
    groups: dict[str, list[Trajectory]] = {"improved": [], "regressed": [], "persistent_failure": [], "stable_success": []}
    for old, new in zip(before, after):
        if new.score > old.score:
            groups["improved"].append(new)
        elif new.score < old.score:
            groups["regressed"].append(new)
        else:
            groups["stable_success" if new.score >= 1 else "persistent_failure"].append(new)
    return groups


def _flat(patches: list[list[Edit]]) -> list[Edit]:
    return [edit for patch in patches for edit in patch]


def _dedupe(edits: list[Edit]) -> list[Edit]:
    return list(dict.fromkeys(edits))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
