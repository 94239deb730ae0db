"""The daemon's periodic tasks on a real database: auto-promotion, the post-promotion watch,
retention, and the gauges they publish; and the daemon's stop when DuckDB invalidates its database."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ops.daemon import Daemon, DatabaseInvalidated, ExpectedSchedulingFilter
from ops.prometheus_metrics import DaemonMetrics
from ops.operations import LocalOperations
from ops.roles import INGEST
from ops.state import DaemonLock
from ops.tasks import AUTO_ACTOR, TaskContext, ingest, retention, score, status, watch
from registry import load_workspace, utcnow
from shadow.spool import spool_dir, write_segment
from tests.scoring_data import Answers, add_rules_variant, demo_registry, simulate
from tests.servers import edit_config, wait_until

SLOT = "support-triage"


def _context(workspace_dir: Path, **scoring) -> tuple[TaskContext, dict[str, str]]:
    registry, ids = demo_registry(workspace_dir, **scoring)
    return TaskContext(registry.workspace, LocalOperations(registry), DaemonMetrics()), ids


def _sample(context: TaskContext, name: str, **labels: str) -> float | None:
    return context.metrics.registry.get_sample_value(name, labels)


def test_score_publishes_gauges_and_auto_promotes_a_ready_challenger_after_the_cooldown(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir, auto_promote=True, auto_promote_cooldown_s=0)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.97}, n=300, champion_accuracy=0.6)
    answers.write(context.operations.registry)
    counts = score(context)
    assert counts["auto_promoted"] == [ids["careful-large"]]
    move = context.operations.history(SLOT)[-1]
    assert (move.action, move.actor, move.to_version) == ("promote", AUTO_ACTOR, ids["careful-large"])
    assert move.evidence["leaderboard"] is not None
    assert _sample(context, "shadowzoo_promotion_ready", slot=SLOT, version=ids["careful-large"]) == 1.0
    assert _sample(context, "shadowzoo_champion_info", slot=SLOT, version=ids["baseline"]) == 1.0
    context.operations.registry.close()


def test_a_ready_python_variant_is_never_auto_promoted_nor_announced_as_ready_to_promote(workspace_dir: Path) -> None:
    add_rules_variant(workspace_dir)
    context, ids = _context(workspace_dir, auto_promote=True, auto_promote_cooldown_s=0)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["rules"]: 0.99}, n=300, champion_accuracy=0.6)
    answers.write(context.operations.registry)
    assert score(context)["auto_promoted"] == []
    rules = next(r for r in context.boards[SLOT].rows if r.version_id == ids["rules"])
    assert rules.display_status == "ready (shadow only)"
    assert _sample(context, "shadowzoo_promotion_ready", slot=SLOT, version=ids["rules"]) == 0.0
    context.operations.registry.close()


def test_auto_promotion_waits_for_the_cooldown(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir, auto_promote=True, auto_promote_cooldown_s=3600)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.97}, n=300, champion_accuracy=0.6)
    answers.write(context.operations.registry)
    assert score(context)["auto_promoted"] == []
    context.operations.registry.close()


def test_the_watch_rolls_back_a_new_champion_that_breaks_the_error_guardrail(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir)
    registry = context.operations.registry
    answers = Answers()
    simulate(answers, ids["baseline"], {}, n=100)
    answers.write(registry)
    score(context)  # the baseline's period, with its live error rate (0)
    registry.promote(SLOT, ids["flash"], "tester", "trial", None)
    failing = Answers()
    for i in range(100):
        failing.request(f"after{i}", ids["flash"], "billing", label="billing", status=500 if i % 5 == 0 else 200)
    failing.write(registry)
    score(context)  # opens the new champion's period and scores its live answers
    rolled = watch(context)["rolled_back"]
    assert rolled == [ids["flash"]]
    last = registry.history(SLOT)[-1]
    assert last.action == "rollback" and last.actor == AUTO_ACTOR and "error rate" in last.reason
    assert registry.champion(SLOT).version_id == ids["baseline"]
    registry.close()


def test_retention_deletes_old_raw_rows_and_keeps_recent_ones(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir)
    registry = context.operations.registry
    answers = Answers()
    answers.request("old", ids["baseline"], "billing", label="billing", received_at=utcnow() - timedelta(days=45))
    answers.result("old", ids["cheap-mini"], "billing")
    answers.request("new", ids["baseline"], "billing", label="billing")
    answers.result("new", ids["cheap-mini"], "billing")
    answers.write(registry)
    assert retention(context)["traffic_deleted"] == 1
    with registry.database.reading() as db:
        assert db.execute("SELECT request_id FROM traffic").fetchall() == [("new",)]
        assert db.execute("SELECT request_id FROM shadow_results").fetchall() == [("new",)]
        assert db.execute("SELECT request_id FROM outcomes").fetchall() == [("new",)]
    registry.close()


def test_retention_removes_old_traffic_of_unconfigured_slots_and_old_feedback_that_never_joined(
        workspace_dir: Path) -> None:
    context, _ = _context(workspace_dir)
    spool = spool_dir(context.workspace.state_dir)
    spool.mkdir(parents=True, exist_ok=True)
    old, new = (utcnow() - timedelta(days=45)).isoformat() + "Z", utcnow().isoformat() + "Z"
    traffic = {"type": "traffic", "slot": "removed-slot", "request": {"messages": [{"role": "user", "content": "hi"}]},
               "status": 200}
    feedback = {"type": "outcome", "kind": "label", "value": "billing"}
    write_segment(spool, [json.dumps(line).encode() for line in (
        {**traffic, "request_id": "gone-old", "received_at": old},
        {**traffic, "request_id": "gone-new", "received_at": new},
        {**feedback, "request_key": "never-seen-old", "received_at": old},
        {**feedback, "request_key": "never-seen-new", "received_at": new},
        {**feedback, "request_key": "gone-old", "received_at": new},
    )])
    assert ingest(context)["traffic"] == 2
    assert retention(context) == {"traffic_deleted": 1, "unjoined_outcomes_deleted": 1}
    with context.database.reading() as db:
        assert db.execute("SELECT request_id FROM traffic").fetchall() == [("gone-new",)]
        assert sorted(db.execute("SELECT request_key FROM outcomes").fetchall()) == [("never-seen-new",)]
    context.operations.registry.close()


def test_a_retired_versions_gauges_are_removed(workspace_dir: Path) -> None:
    context, ids = _context(workspace_dir)
    registry = context.operations.registry
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["cheap-mini"]: 0.7}, n=20)
    answers.write(registry)
    score(context)
    assert _sample(context, "shadowzoo_net_value_per_1k_usd", slot=SLOT, version=ids["cheap-mini"]) is not None
    registry.retire(ids["cheap-mini"], "tester", "done")
    score(context)
    assert _sample(context, "shadowzoo_net_value_per_1k_usd", slot=SLOT, version=ids["cheap-mini"]) is None
    registry.close()


def test_records_ingest_quarantines_are_counted_on_metrics_and_shown_in_status(workspace_dir: Path) -> None:
    context, _ = _context(workspace_dir)
    spool = spool_dir(context.workspace.state_dir)
    spool.mkdir(parents=True, exist_ok=True)
    good = {"type": "traffic", "request_id": "ok", "slot": SLOT, "received_at": "2025-03-01T12:00:00Z",
            "request": {"messages": [{"role": "user", "content": "hi"}]}, "status": 200}
    write_segment(spool, [json.dumps(good).encode(), json.dumps({**good, "request_id": "bad", "status": 2147483648}).encode()])
    first, second = ingest(context), ingest(context)
    assert (first["traffic"], first["quarantined"]) == (1, 1) and (second["traffic"], second["quarantined"]) == (0, 0)
    assert _sample(context, "shadowzoo_spool_quarantined_records_total") == 1.0
    assert status(context)["spool_quarantined_records"] == 1
    [rejected] = (spool / "quarantine").glob("*-rejected.jsonl")
    rejected.rename(spool / rejected.name)  # an operator puts it back (unfixed, it is quarantined again)
    assert status(context)["spool_quarantined_records"] == 0
    context.operations.registry.close()


def test_a_run_skipped_because_the_last_still_runs_is_not_logged() -> None:
    """The daemon's jobs never overlap by design; a busy daemon must not log that every interval."""
    scheduler_log = logging.getLogger("apscheduler")
    everything, daemon_log = io.StringIO(), io.StringIO()
    unfiltered, filtered = logging.StreamHandler(everything), logging.StreamHandler(daemon_log)
    filtered.addFilter(ExpectedSchedulingFilter())
    level = scheduler_log.level
    for handler in (unfiltered, filtered):
        scheduler_log.addHandler(handler)
    scheduler_log.setLevel(logging.WARNING)

    async def overlapping() -> None:
        runs, idle = asyncio.Event(), asyncio.Event()

        async def slow_job() -> None:
            runs.set()
            idle.clear()
            await asyncio.sleep(0.3)  # three intervals: the next two ticks find it still running
            idle.set()

        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(slow_job, "interval", seconds=0.1, coalesce=True, max_instances=1, misfire_grace_time=1)
        scheduler.start()
        await runs.wait()
        while "skipped" not in everything.getvalue():
            await asyncio.sleep(0.05)
        scheduler.pause()  # no new run; the one running ends before the scheduler does (else it is cancelled)
        await idle.wait()
        scheduler.shutdown(wait=False)

    try:
        asyncio.run(asyncio.wait_for(overlapping(), 30))
    finally:
        for handler in (unfiltered, filtered):
            scheduler_log.removeHandler(handler)
        scheduler_log.setLevel(level)
    assert "maximum number of running instances" in everything.getvalue()
    assert daemon_log.getvalue() == ""


def test_a_daemon_whose_database_duckdb_invalidated_stops_by_itself_to_be_started_again(workspace_dir: Path) -> None:
    """A fatal DuckDB error (here a checkpoint that cannot be written, as on a full disk) invalidates
    the database: every later job would fail until the process restarts. The daemon stops, says
    why, and leaves its lock to the one `serve` or systemd starts next."""
    edit_config(workspace_dir, lambda config: config["daemon"].update(ingest_interval_s=0.2))
    workspace = load_workspace(workspace_dir)
    daemon = Daemon(workspace, roles=frozenset({INGEST}))

    def invalidate() -> None:
        registry = wait_until(lambda: getattr(daemon, "context", None)).operations.registry
        with registry.database.reading() as db:
            db.execute("CREATE TABLE unsaved AS SELECT 1; SET debug_checkpoint_abort = 'before_header'")
            with pytest.raises(duckdb.FatalException):
                db.execute("CHECKPOINT")

    invalidating = threading.Thread(target=invalidate)
    invalidating.start()
    with pytest.raises(DatabaseInvalidated, match=r"(?s)DuckDB invalidated the database \(.*Failed to create checkpoint.*\).*started again"):
        asyncio.run(daemon.run())
    invalidating.join()
    assert daemon.last_runs["ingest"]["error"].startswith("FatalException: ")
    next_one = DaemonLock(workspace)
    next_one.acquire()
    next_one.release()
