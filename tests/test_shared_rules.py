"""Rules several parts of shadowzoo apply, each kept in one place: the UTC day and what was
spent in it, the daily cap the runner and the judge spend under, the guardrails the
leaderboard and the post-promotion watch hold variants to, and the scope of a pause."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from ops.prometheus_metrics import DaemonMetrics
from ops.operations import LocalOperations
from ops.tasks import AUTO_ACTOR, TaskContext, score, watch
from registry import utc_day_start
from shadow import pauses
from shadow.budget import DailyBudget, DailyCap, budget_left, spent_today
from tests.scoring_data import Answers, demo_registry, simulate

SLOT = "support-triage"
MIDNIGHT = datetime(2026, 3, 2)


def test_spend_today_starts_at_utc_midnight_for_the_runner_and_for_status_alike(workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    for request_id in ("late", "early"):
        answers.request(request_id, ids["baseline"], "billing")
        answers.result(request_id, ids["cheap-mini"], "billing")
    answers.write(registry)
    with registry.database.transaction() as db:
        db.execute("UPDATE shadow_results SET cost_usd = 0.40, finished_at = ? WHERE request_id = 'late'",
                   [MIDNIGHT - timedelta(microseconds=1)])
        db.execute("UPDATE shadow_results SET cost_usd = 0.25, finished_at = ? WHERE request_id = 'early'", [MIDNIGHT])
    limits = {SLOT: 1.0}
    with registry.database.reading() as db:
        spent = spent_today(db, now=MIDNIGHT + timedelta(hours=1))
        left = budget_left(db, limits, now=MIDNIGHT + timedelta(hours=1))
    registry.close()
    assert spent == {SLOT: 0.25} and left == {SLOT: 0.75}
    assert utc_day_start(MIDNIGHT - timedelta(microseconds=1)) == MIDNIGHT - timedelta(days=1)
    budget = DailyBudget(limits, spent)

    async def reserve(estimate: float) -> str | None:
        return await budget.reserve(SLOT, estimate)

    assert asyncio.run(reserve(0.76)) is not None  # status says 0.75 is left: the runner agrees
    assert asyncio.run(reserve(0.75)) is None


def test_a_call_that_does_not_fit_the_cap_waits_for_the_calls_in_flight_and_then_runs() -> None:
    cap = DailyCap(limit_usd=1.0, spent_usd=0.2)
    order: list[str] = []

    async def first() -> None:
        assert await cap.reserve(0.6)
        order.append("first reserved")
        await asyncio.sleep(0)
        order.append("first settled")
        cap.settle(0.6, 0.1)

    async def second() -> None:
        assert await cap.reserve(0.5)  # 0.2 + 0.6 + 0.5 > 1.0 until the first costs only 0.1
        order.append("second reserved")
        cap.settle(0.5, 0.5)

    async def both() -> bool:
        await asyncio.gather(first(), second())
        return await cap.reserve(0.5)

    assert asyncio.run(both()) is False and cap.exhausted  # 0.8 spent: no room for 0.5, nothing in flight
    assert order == ["first reserved", "first settled", "second reserved"]
    assert abs(cap.committed - 0.8) < 1e-9


def _context(workspace_dir: Path, **scoring: object) -> tuple[TaskContext, dict[str, str]]:
    registry, ids = demo_registry(workspace_dir, **scoring)
    return TaskContext(registry.workspace, LocalOperations(registry), DaemonMetrics()), ids


def test_the_watch_rolls_back_a_new_champion_whose_live_p95_latency_breaks_the_guardrail(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir, max_p95_latency_ratio=2.0)
    registry = context.operations.registry
    answers = Answers()
    simulate(answers, ids["baseline"], {}, n=100)
    answers.write(registry)
    score(context)
    registry.promote(SLOT, ids["flash"], "tester", "trial", None)
    slow = Answers()
    for i in range(100):
        slow.request(f"after{i}", ids["flash"], "billing", label="billing", latency_ms=2000.0)
    slow.write(registry)
    score(context)
    assert watch(context)["rolled_back"] == [ids["flash"]]
    last = registry.history(SLOT)[-1]
    assert last.actor == AUTO_ACTOR and last.reason.startswith("post-promotion watch: p95 latency")
    assert last.reason.endswith("vs 400 ms before")
    registry.close()


def test_pausing_everything_shows_every_challenger_paused_and_pausing_one_shows_only_it(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir)
    registry = context.operations.registry
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["cheap-mini"]: 0.7, ids["flash"]: 0.7}, n=20)
    answers.write(registry)

    def paused() -> set[str]:
        score(context)
        return {row.version_id for row in context.boards[SLOT].rows if row.status == "paused"}

    pauses.pause(registry, ids["cheap-mini"], "alice", "too dear")
    assert paused() == {ids["cheap-mini"]}
    pauses.pause(registry, None, "alice", "incident")
    challengers = {row.version_id for row in context.boards[SLOT].rows if row.role == "challenger"}
    assert paused() == challengers and len(challengers) > 2
    registry.close()
