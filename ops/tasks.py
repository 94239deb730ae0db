"""The daemon's periodic work, as plain functions of a `TaskContext`, each run in a worker thread.

Each returns a few counts for its log line; a run whose counts are all zero or empty did
nothing, and is not logged (`did_work`). They touch the database only through the
registry's `Database`, whose lock makes the daemon's writes one at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ops.leaders import ElectedJobs, EveryJob
from ops.prometheus_metrics import DaemonMetrics
from ops.operations import LocalOperations
from registry import Workspace, read_routes, utcnow
from registry.leadership import NotLeader
from scorer.answerstats import period_stats
from scorer.changes import Mark, latest, still_readable, written_after
from scorer.guardrails import ERROR_RATE, P95_LATENCY, broken_guardrail, error_rate_delta, latency_ratio
from scorer.pairing import reread_slot_worst
from registry.workspace_config import Price, RetentionConfig, WorkspaceConfig, missing_api_keys
from shadow.budget import budget_left
from shadow.pricing import price_of, workspace_prices
from shadow.spool import quarantined_records, ready_segments, segment_age_s, spool_dir

log = logging.getLogger("shadowzoo.daemon")
AUTO_ACTOR = "shadowzoo-auto"
CONTEXT_COUNTS = frozenset({"slots"})
"""Counts that describe the setting, not work done: a run with only these is idle."""
WATCH_MIN_REQUESTS = 50


@dataclass
class TaskContext:
    """What the tasks share: the workspace, its operations, the metrics and their watermark."""

    workspace: Workspace
    operations: LocalOperations
    metrics: DaemonMetrics
    metrics_mark: Mark | None = None
    """Where the metrics have counted the data up to (None: nothing counted yet); rows written after it are new."""
    boards: dict[str, Any] = field(default_factory=dict)
    leaders: EveryJob | ElectedJobs = field(default_factory=EveryJob)
    """Which singleton jobs (per slot) this daemon runs: all of them, unless elected on `backend: distributed`."""

    @property
    def database(self):
        return self.operations.registry.database

    def runner_pass(self, previous: Mark | None) -> tuple[Mark, int | None]:
        """The data's mark now, and the `seq` a shadow runner's pass starts after so that it sees
        every traffic row written since `previous` (the mark of the previous pass; None: all
        traffic). In a DuckDB file that is `previous` itself; on the lake, where rows commit out
        of `seq` order, it is below the lowest `seq` committed since (or past all traffic when none was)."""
        with self.database.reading() as db:
            now = latest(db)
            previous = still_readable(db, previous)  # expired while paused: a full pass, which skips what was answered
            if previous is None or not previous.snapshot:
                return now, previous.value if previous else None
            low = db.execute(f"SELECT min(seq) - 1 FROM {written_after('traffic', previous, now)}").fetchone()[0]
            if low is None:
                low = db.execute(f"SELECT coalesce(max(seq), 0) FROM {written_after('traffic', None, now)}").fetchone()[0]
            return now, int(low)

    def start_metrics(self) -> None:
        """Count only what happens from now on: Prometheus counters start at the process start."""
        with self.database.reading() as db:
            self.metrics_mark = latest(db)


def ingest(context: TaskContext) -> dict[str, Any]:
    """Ingest the spool (on `backend: distributed`, the object store's segments), then feed the
    counters from the rows written since they last counted, by any process."""
    report = context.operations.ingest()
    context.metrics.spool_lag.set(report.lag_s)
    context.metrics.quarantined.inc(report.quarantined_records)
    with context.database.reading() as db:
        context.metrics_mark = context.metrics.count_new_rows(db, context.metrics_mark, _champion_prices(context))
    return {"segments": report.segments, "traffic": report.traffic_rows, "outcomes": report.outcome_rows,
            "quarantined": report.quarantined_records}


def _champion_prices(context: TaskContext) -> dict[str, Price | None]:
    """Each current champion's price, for pricing live traffic in the metrics."""
    prices = workspace_prices(context.workspace)
    champions = [context.operations.champion(slot) for slot in context.workspace.config.slots]
    return {c.version_id: price_of(prices, c.config.get("model")) for c in champions if c is not None}


def score(context: TaskContext) -> dict[str, Any]:
    """Re-score every slot with a champion that this daemon leads the scorer of; publish gauges;
    auto-promote where a slot allows it."""
    scored, newly_scored, promoted = 0, 0, []
    for slot in _served_slots(context, "scorer"):
        try:
            with context.leaders.fenced(context.database, "scorer", slot):  # a stale leader neither scores nor promotes
                board, promotion = _score_slot(context, slot)
        except NotLeader as exc:
            log.warning("%s", exc)
            continue
        before = context.boards.get(slot)
        newly_scored += _scored(board) - (_scored(before) if before and before.period_id == board.period_id else 0)
        context.boards[slot] = board
        context.metrics.show_board(board)
        scored += 1
        promoted += promotion
    context.metrics.show_budgets(_budgets_left(context))
    return {"slots": scored, "newly_scored": newly_scored, "auto_promoted": promoted}


def _score_slot(context: TaskContext, slot: str) -> tuple[Any, list[str]]:
    """Refresh one slot's board; promote its recommendation where the slot allows it (the version promoted)."""
    board = context.operations.score(slot)
    if not _may_auto_promote(context, slot, board):
        return board, []
    row = next(r for r in board.rows if board.recommendation and board.recommendation.endswith(r.version_id))
    context.operations.promote(slot, row.version_id, AUTO_ACTOR, "auto_promote: ready on the leaderboard", False)
    return board, [row.version_id]


def did_work(counts: dict[str, Any]) -> bool:
    """Whether a job run changed anything (its log line is then worth writing)."""
    return any(value for key, value in counts.items() if key not in CONTEXT_COUNTS)


def _scored(board) -> int:
    """Answers scored on a board, every variant together."""
    return sum(row.n for row in board.rows)


def _served_slots(context: TaskContext, job: str) -> list[str]:
    """The slots with a champion whose `job` this daemon leads."""
    configured = context.workspace.config.slots
    return [slot for slot in configured
            if context.operations.champion(slot) is not None and context.leaders.leads(job, slot)]


def _may_auto_promote(context: TaskContext, slot: str, board) -> bool:
    scoring = context.workspace.slot(slot).scoring
    if not scoring.auto_promote or board.recommendation is None:
        return False
    since = context.operations.registry.champion_since(slot)
    return since is None or (utcnow() - since).total_seconds() >= scoring.auto_promote_cooldown_s


def _budgets_left(context: TaskContext) -> list[tuple[str, float]]:
    limits = {slot: config.shadow.daily_budget_usd for slot, config in context.workspace.config.slots.items()}
    with context.database.reading() as db:
        return list(budget_left(db, limits).items())


def watch(context: TaskContext) -> dict[str, Any]:
    """Roll back a recent promotion whose champion breaks a guardrail against its predecessor."""
    rolled_back = []
    for slot in _served_slots(context, "watch"):
        broken = _broken_after_promotion(context, slot)
        if broken:
            move = context.operations.rollback(slot, AUTO_ACTOR, f"post-promotion watch: {broken}")
            rolled_back.append(move.from_version)
    return {"rolled_back": rolled_back}


def _broken_after_promotion(context: TaskContext, slot: str) -> str | None:
    """Which guardrail the champion promoted within `watch_s` breaks, on live traffic, if any."""
    scoring = context.workspace.slot(slot).scoring
    history = context.operations.history(slot)
    moves = [m for m in history if m.action in ("promote", "rollback")]
    if not moves or moves[-1].action != "promote" or moves[-1].from_version is None:
        return None
    if (utcnow() - moves[-1].at).total_seconds() > scoring.watch_s:
        return None
    now_stats, before_stats = _live_stats(context, slot, moves[-1].to_version), _live_stats(context, slot, moves[-1].from_version)
    if not now_stats or not before_stats or min(now_stats["n"], before_stats["n"]) < WATCH_MIN_REQUESTS:
        return None
    broken = broken_guardrail(scoring, error_rate_delta(now_stats["error_rate"], before_stats["error_rate"]),
                              latency_ratio(now_stats["p95_latency_ms"], before_stats["p95_latency_ms"]))
    if broken == ERROR_RATE:
        return f"error rate {now_stats['error_rate']:.1%} vs {before_stats['error_rate']:.1%} before"
    if broken == P95_LATENCY:
        return f"p95 latency {now_stats['p95_latency_ms']:.0f} ms vs {before_stats['p95_latency_ms']:.0f} ms before"
    return None


def _live_stats(context: TaskContext, slot: str, version_id: str) -> dict[str, Any] | None:
    """Live statistics of a champion in its latest evaluation period."""
    with context.database.reading() as db:
        rows = db.execute("SELECT max(period_id) FROM evaluation_periods WHERE slot = ? AND champion_version = ?",
                          [slot, version_id]).fetchall()
        period_id = rows[0][0] if rows else None
        if period_id is None:
            return None
        return period_stats(db, period_id).get((version_id, "live"))


def retention(context: TaskContext) -> dict[str, Any]:
    """Delete raw rows past their retention; aggregates (moments, snapshots, audit) stay.

    A slot's rows go after its `retention.traffic_days`. Rows of a slot no longer configured,
    and outcomes never joined to a request (feedback names no slot), go after the default
    window: nothing stays forever because its slot or request is unknown. Each slot's deletion runs
    where this daemon leads that slot's retention; the unjoined outcomes', where it leads retention,
    as does, on `backend: distributed`, the upkeep of lease rows and of the lake. A leader that
    lost its leadership meanwhile is refused before it deletes (`registry.fences`) and stops.
    """
    try:
        return _retention(context)
    except NotLeader as exc:
        log.warning("%s", exc)
        return {}


def _retention(context: TaskContext) -> dict[str, Any]:
    default = RetentionConfig().traffic_days
    windows = {slot: config.retention.traffic_days for slot, config in context.workspace.config.slots.items()}
    with context.database.reading() as db:
        stored = [row[0] for row in db.execute("SELECT DISTINCT slot FROM traffic").fetchall()]
    deleted = sum(_delete_traffic(context, slot, windows.get(slot, default)) for slot in sorted(set(stored) | set(windows))
                  if context.leaders.leads("retention", slot))
    if not context.leaders.leads("retention"):
        return {"traffic_deleted": deleted}
    cutoff = utcnow() - timedelta(days=default)
    with context.leaders.fenced(context.database, "retention"):
        orphans = context.database.committed(lambda db: db.execute(
            "DELETE FROM outcomes WHERE request_id IS NULL AND received_at < ?", [cutoff]).fetchall()[0][0])
    return {"traffic_deleted": deleted, "unjoined_outcomes_deleted": orphans, **_distributed_upkeep(context)}


def _distributed_upkeep(context: TaskContext) -> dict[str, Any]:
    """On `backend: distributed`: the control rows that only grow (lease rows done or long expired,
    heartbeats of workers gone, budget rows of past days), and the lake's snapshots older than
    every scorer watermark and its small files (`registry.lake_maintenance`)."""
    config = context.workspace.config
    if config.backend != "distributed" or config.distributed is None:
        return {}
    from registry.distributed import connect_control
    from registry.lake_maintenance import maintain_lake
    from registry.leases import prune
    from scorer.changes import oldest_needed
    from shadow.budget_slices import BudgetLedger
    from shadow.rate_shares import forget_departed

    with connect_control(config.distributed, autocommit=True) as control:
        counts = {"lease_rows_deleted": prune(control), "heartbeat_rows_deleted": forget_departed(control),
                  "budget_rows_deleted": BudgetLedger(control).forget_past_days()}
    with context.leaders.fenced(context.database, "retention"):
        return counts | maintain_lake(context.database, oldest_needed)


def _delete_traffic(context: TaskContext, slot: str, days: float) -> int:
    """Delete a slot's traffic older than `days`, with the rows that hang off it; returns how many requests."""
    cutoff = utcnow() - timedelta(days=days)

    def delete_in(db) -> int:
        old = "FROM traffic WHERE slot = ? AND received_at < ?"
        for table in ("shadow_results", "metric_values", "outcomes"):
            db.execute(f"DELETE FROM {table} WHERE request_id IN (SELECT request_id {old})", [slot, cutoff])
        db.execute(f"DELETE FROM paired WHERE request_seq IN (SELECT seq {old})", [slot, cutoff])
        reread_slot_worst(db, slot)
        return db.execute(f"DELETE {old}", [slot, cutoff]).fetchall()[0][0]

    with context.leaders.fenced(context.database, "retention", slot):
        return context.database.committed(delete_in)


def rotate(context: TaskContext) -> dict[str, Any]:
    """Train the `zoo.rotation_limit` stalest active specs that have a train: block (where this daemon leads rotation)."""
    if not context.leaders.leads("rotation"):
        return {}
    result = context.operations.train(all_active=True, limit=context.workspace.config.zoo.rotation_limit,
                                      progress=log.info)
    return result.model_dump()


def status(context: TaskContext) -> dict[str, Any]:
    """Spool lag and quarantine, queue depth, budgets, pauses, champions, and drift between routes.json and the registry."""
    spool = spool_dir(context.workspace.state_dir)
    segments = ready_segments(spool)
    champions = {slot: (c.version_id if (c := context.operations.champion(slot)) else None)
                 for slot in context.workspace.config.slots}
    return {
        "spool_segments": len(segments),
        "spool_lag_s": round(segment_age_s(segments[0]), 1) if segments else 0.0,
        "spool_quarantined_records": quarantined_records(spool),
        "queue_depth": context.metrics.registry.get_sample_value("shadowzoo_shadow_queue_depth"),
        "budgets_left_usd": dict(_budgets_left(context)),
        "pauses": [p.model_dump(mode="json") for p in context.operations.pauses()],
        "champions": champions,
        "routes_drift": _routes_drift(context, champions),
        "judges": {slot: [{**judge.model_dump(mode="json"), "budget_reached": judge.budget_reached}
                          for judge in board.judges]
                   for slot, board in context.boards.items() if board.judges},
        "missing_api_keys": missing_api_keys(context.workspace.config.providers),
        **_gateway_hosts(context.workspace.config),
        "checked_at": datetime.now(UTC).isoformat(),
    }


def _gateway_hosts(config: WorkspaceConfig) -> dict[str, Any]:
    """On `backend: distributed`, which route version each gateway host serves (`gateway_routes`),
    how far behind its spool shipping is and what of it waits in the bucket for ingest (`gateway_shipping`)."""
    if config.backend != "distributed" or config.distributed is None:
        return {}
    from registry.published_routes import gateway_routes
    from shadow.shipping_report import shipping_report

    return {"gateway_routes": gateway_routes(config.distributed), "gateway_shipping": shipping_report(config.distributed)}


def _routes_drift(context: TaskContext, champions: dict[str, str | None]) -> list[str]:
    try:
        served = {slot: route.version_id for slot, route in read_routes(context.workspace.routes_path).slots.items()}
    except (OSError, ValueError) as exc:
        return [f"routes.json unreadable: {exc}"]
    return [f"{slot}: routes.json serves {served.get(slot)}, the registry says {champion}"
            for slot, champion in champions.items() if served.get(slot) != champion]
