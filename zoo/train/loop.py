"""The skill-training loop of SKILLOPT.md: rollout, reflect, aggregate, select, update, gate.

A run is a fixed sequence of units, known from the config: every step of every epoch,
and from epoch 2 an epoch boundary (slow update, meta skill). After each unit the run
directory `<state_dir>/train/<spec>/<run-id>/` gets that unit's artifacts (candidate skill,
edit report, scores, decision) and then `state.json`, so an interrupted run resumes at the
first unit not recorded. Batches are seeded by their position, so a resumed run makes the
same choices as one never interrupted. Spend is counted per call; reaching `max_cost_usd`
ends the run cleanly with the best skill so far. A finished run registers its best skill
as a challenger (never touching the champion); the test split is scored and reported only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from registry import ConfigError, Database, NewVariant, Registration, ShadowzooError, VariantStore, Workspace, sha256_text
from registry.config import Price
from scorer.metrics import QualityPlan, plan_quality, score_rows
from shadow.apply import apply_variant
from shadow.pricing import cost_usd, price_of, workspace_prices
from shadow.providers import ChatResult, ProviderPool
from zoo.resolve import Resolved, resolve_spec
from zoo.spec import SpecFile, Zoo
from zoo.train.config import ExternalTrainConfig, SkillOptConfig, parse_train
from zoo.train.dataset import Item, Splits, load_items, split_items
from zoo.train.external import run_external
from zoo.train.edits import Edit, apply_edits, set_guidance
from zoo.train.gate import GateDecision, decide
from zoo.train.optimizer import CallStats, Optimizer, Trajectory
from zoo.train.schedule import edit_budget

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
GIVE_UP_AFTER_CALLS = 3
Progress = Callable[[str], None]


class BudgetExhausted(Exception):
    """Spend reached `max_cost_usd`: stop before the next model call's stage completes."""


class Register:
    """What training needs of the registry: lookups, and registering the result."""

    def __init__(self, store: VariantStore, register: Callable[[NewVariant], Registration]) -> None:
        self.store = store
        self.register = register


@dataclass
class RunResult:
    """How one spec's training ended."""

    spec: str
    status: str
    reason: str = ""
    run_dir: Path | None = None
    version_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("finished", "budget_exhausted", "no_improvement")


@dataclass(frozen=True)
class Unit:
    """One resumable piece of a run: a step of an epoch, or an epoch boundary."""

    epoch: int
    step: int | None

    @property
    def name(self) -> str:
        return f"epoch{self.epoch}-step{self.step}" if self.step is not None else f"epoch{self.epoch}-boundary"


# ---------------------------------------------------------------- metering


class Meter:
    """Spend, calls, and wall time spent with at least one model call in flight."""

    def __init__(self, prices: dict[str, Price], max_cost_usd: float | None, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.prices = prices
        self.max_cost_usd = max_cost_usd
        self.spent_usd: float = saved.get("spent_usd", 0.0)
        self.unpriced_calls: int = saved.get("unpriced_calls", 0)
        self.target_calls: int = saved.get("target_calls", 0)
        self.target_failures: int = saved.get("target_failures", 0)
        self.waiting_s = 0.0
        self._in_flight = 0
        self._since = 0.0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Count wall time while any model call is outstanding (concurrent calls overlap)."""
        if self._in_flight == 0:
            self._since = time.perf_counter()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.waiting_s += time.perf_counter() - self._since

    def charge(self, model: str, result: ChatResult) -> None:
        cost = cost_usd(price_of(self.prices, model), result.usage)
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.spent_usd += cost

    def check(self) -> None:
        if self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd:
            raise BudgetExhausted(f"spent ${self.spent_usd:.4f} of max_cost_usd ${self.max_cost_usd:g}")

    def saved(self) -> dict[str, Any]:
        return {"spent_usd": self.spent_usd, "unpriced_calls": self.unpriced_calls,
                "target_calls": self.target_calls, "target_failures": self.target_failures}


# ---------------------------------------------------------------- preparing a run


@dataclass
class Plan:
    """Everything a run of one spec needs, checked before any model call."""

    spec_file: SpecFile
    resolved: Resolved
    config: SkillOptConfig
    workspace: Workspace
    splits: Splits
    quality: QualityPlan
    base_skill: str

    @property
    def target(self) -> tuple[str, str, dict[str, Any]]:
        config = self.resolved.config
        return config["provider"], config["model"], dict(config.get("params", {}))

    def units(self) -> list[Unit]:
        per_epoch = self.config.steps_per_epoch or max(1, len(self.splits.train) // self.config.batch_size)
        boundary = self.config.slow_update or self.config.meta_skill
        units = []
        for epoch in range(1, self.config.num_epochs + 1):
            units.extend(Unit(epoch, step) for step in range(1, per_epoch + 1))
            if boundary and epoch >= 2:
                units.append(Unit(epoch, None))
        return units


def plan_run(spec_file: SpecFile, zoo: Zoo, workspace: Workspace, store: VariantStore,
             database: Database | None) -> Plan:
    """Validate the spec's train block, resolve the spec, load and split the items."""
    config = _train_config(spec_file)
    if not isinstance(config, SkillOptConfig):
        raise ConfigError(f"{spec_file.path}: train: the external form is run by zoo.train.external")
    if spec_file.spec.kind != "chat":
        raise ConfigError(f"{spec_file.path}: train: only chat specs have a skill to train")
    resolved = resolve_spec(spec_file, zoo, workspace, store)
    provider = config.optimizer_model.provider
    if provider not in workspace.config.providers:
        known = ", ".join(sorted(workspace.config.providers)) or "none"
        raise ConfigError(f"{spec_file.path}: train.optimizer_model.provider: {provider!r} is not configured (providers: {known})")
    slot = spec_file.spec.slot
    quality = plan_quality(workspace.slot(slot).metrics, f"{workspace.config_path}: slots.{slot}.metrics")
    if quality.empty:
        raise ConfigError(f"{workspace.config_path}: slots.{slot}.metrics: training needs at least one metric")
    items = _items(config, workspace, slot, database)
    splits = split_items(items, config.ratio, config.seed, config.min_items)
    return Plan(spec_file, resolved, config, workspace, splits, quality, resolved.skill_text or "")


def _items(config: SkillOptConfig, workspace: Workspace, slot: str, database: Database | None) -> list:
    """The dataset, holding the database only while traffic is read (training itself takes minutes)."""
    if database is None:
        return load_items(config, workspace, slot, None)
    with database.reading() as db:
        return load_items(config, workspace, slot, db)


def _train_config(spec_file: SpecFile) -> SkillOptConfig | ExternalTrainConfig:
    raw = spec_file.spec.train
    if raw is None:
        raise ConfigError(f"{spec_file.path}: no train: block; add one to say how to train this spec")
    return parse_train(raw, str(spec_file.path))


# ---------------------------------------------------------------- the run directory


class RunDir:
    """A run's directory: state.json, one folder of artifacts per unit, cached scores."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def for_plan(plan: Plan, fingerprint: str) -> "RunDir":
        """The newest unfinished run of this spec with the same inputs, else a new one."""
        root = plan.workspace.state_dir / "train" / plan.spec_file.spec.name
        for candidate in sorted(root.glob("*/state.json"), reverse=True):
            state = json.loads(candidate.read_text())
            if state.get("status") == "running" and state.get("fingerprint") == fingerprint:
                return RunDir(candidate.parent)
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return RunDir(root / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    def state(self) -> dict[str, Any] | None:
        path = self.path / "state.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write(self, relative: str, data: Any) -> None:
        """Write one artifact atomically: JSON, or text for .md files."""
        path = self.path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(data if isinstance(data, str) else json.dumps(data, indent=2, ensure_ascii=False, default=str))
        tmp.replace(path)

    def cached_scores(self, key: str) -> list[float] | None:
        path = self.path / "scores" / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------- the trainer


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

    async def test_scores(self, skill: str) -> list[float]:
        return await self._split_scores(skill, "test", self.plan.splits.test)

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


# ---------------------------------------------------------------- one spec, end to end


def train_spec(spec_file: SpecFile, zoo: Zoo, workspace: Workspace, registry: Register,
               database: Database | None, progress: Progress) -> RunResult:
    """Train one spec (built-in or external); errors become a failed result, never an exception."""
    name = spec_file.spec.name
    try:
        config = _train_config(spec_file)
        if isinstance(config, ExternalTrainConfig):
            return run_external(spec_file, zoo, workspace, registry, config, progress)
        plan = plan_run(spec_file, zoo, workspace, registry.store, database)
    except ShadowzooError as exc:
        return RunResult(name, "failed", str(exc))
    return asyncio.run(_train_plan(plan, registry, progress))


async def _train_plan(plan: Plan, registry: Register, progress: Progress) -> RunResult:
    fingerprint = sha256_text(json.dumps([plan.config.model_dump(mode="json"), plan.resolved.fingerprint]))
    run_dir = RunDir.for_plan(plan, fingerprint)
    pool = ProviderPool(plan.workspace.config.providers)
    name = plan.spec_file.spec.name
    try:
        trainer = Trainer(plan, run_dir, pool, progress)
        trainer.state["fingerprint"] = fingerprint
        resumed = trainer.state["done"]
        progress(f"{name}: run {run_dir.run_id} {'resumed at unit ' + str(resumed + 1) if resumed else 'started'}; "
                 f"items {plan.splits.counts()}")
        try:
            status = await trainer.train()
        except ShadowzooError as exc:
            return _finish(trainer, "failed", str(exc), None)
        return await _conclude(trainer, status, registry)
    finally:
        await pool.aclose()


async def _conclude(trainer: Trainer, status: str, registry: Register) -> RunResult:
    """Score on test (reported only), then register the best skill if it differs from the base."""
    plan, state = trainer.plan, trainer.state
    if trainer.meter.target_calls and trainer.meter.target_failures == trainer.meter.target_calls:
        return _finish(trainer, "failed", "the target model failed on every call", None)
    best = state["best"]
    state["test"] = {"base": _mean(await trainer.test_scores(plan.base_skill)), "best": _mean(await trainer.test_scores(best))}
    if best == plan.base_skill:
        return _finish(trainer, "no_improvement" if status == "finished" else status,
                       "no candidate beat the base skill on the selection split", None)
    parent = registry.store.variant_with_fingerprint(plan.spec_file.spec.slot, plan.resolved.fingerprint)
    summary = _summary(trainer, status)
    registration = registry.register(NewVariant(
        slot=plan.spec_file.spec.slot, label=_trained_label(plan.spec_file.spec.name), kind="chat",
        config={k: v for k, v in plan.resolved.config.items() if k != "skill_sha"}, skill_text=best,
        parent=parent.version_id if parent else None, source="train", spec_path=str(plan.spec_file.path), meta=summary,
    ))
    return _finish(trainer, status, state.get("budget_note", ""), registration.variant.version_id)


def _finish(trainer: Trainer, status: str, reason: str, version_id: str | None) -> RunResult:
    trainer.state.update({"status": status, "reason": reason, "version_id": version_id})
    trainer.save()
    summary = _summary(trainer, status)
    trainer.run.write("summary.json", {**summary, "reason": reason, "version_id": version_id})
    trainer.progress(f"{trainer.plan.spec_file.spec.name}: {status}" + (f": {reason}" if reason else "")
                     + (f"; registered {version_id}" if version_id else ""))
    return RunResult(trainer.plan.spec_file.spec.name, status, reason, trainer.run.path, version_id, summary)


def _summary(trainer: Trainer, status: str) -> dict[str, Any]:
    state, stats = trainer.state, trainer.stats
    accepted = sum(1 for h in state["history"] if "accepted" in h)
    return {
        "run_id": trainer.run.run_id, "run_dir": str(trainer.run.path), "status": status, "optimizer": "skillopt",
        "units_done": state["done"], "accepted": accepted, "rejected": len(state["rejected"]),
        "selection": {"base": state.get("base_score"), "best": state["best_score"]}, "test": state.get("test"),
        "spend_usd": trainer.meter.spent_usd, "unpriced_calls": trainer.meter.unpriced_calls,
        "target_calls": trainer.meter.target_calls, "optimizer_calls": stats.calls,
        "optimizer_unusable": stats.failed + stats.unparseable, "base_skill_sha": sha256_text(trainer.plan.base_skill),
        "best_skill_sha": sha256_text(state["best"]),
    }


def _trained_label(name: str) -> str:
    """Trained variants get their own label, so `base: <spec>` still means the spec itself."""
    return f"{name[:57]}-train"
