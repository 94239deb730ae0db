"""Training one spec end to end: plan, train or resume, score on test, register the best skill.

Errors in the spec or its data become a failed result, never an exception, so one bad spec
does not stop `shadowzoo zoo train` from training the others.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from registry import Database, NewVariant, ShadowzooError, Workspace, sha256_text
from shadow.providers import ProviderPool
from zoo.spec import SpecFile, Zoo
from zoo.train.train_config import ExternalTrainConfig
from zoo.train.external import run_external
from zoo.train.loop import Trainer
from zoo.train.outcome import Progress, Register, RunResult, trained_label
from zoo.train.plan import Plan, plan_run, train_config
from zoo.train.rundir import RunDir


def train_spec(spec_file: SpecFile, zoo: Zoo, workspace: Workspace, registry: Register,
               database: Database | None, progress: Progress) -> RunResult:
    """Train one spec (built-in or external); errors become a failed result, never an exception."""
    name = spec_file.spec.name
    try:
        config = train_config(spec_file)
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
    state["test"] = {"base": await trainer.test_score(plan.base_skill), "best": await trainer.test_score(best)}
    if best == plan.base_skill:
        return _finish(trainer, "no_improvement" if status == "finished" else status,
                       "no candidate beat the base skill on the selection split", None)
    parent = registry.store.variant_with_fingerprint(plan.spec_file.spec.slot, plan.resolved.fingerprint)
    summary = _summary(trainer, status)
    registration = registry.register(NewVariant(
        slot=plan.spec_file.spec.slot, label=trained_label(plan.spec_file.spec.name), kind="chat",
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
