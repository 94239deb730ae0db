"""The shadow runner's pending work, in SQL: which (request, challenger) pairs are still to run.

A pair is pending while it has no result (or, retrying, a result to retry) and sampling
selects it: a deterministic hash of (request_id, version_id) against the challenger's
rate. Pairs that cannot count in the current period (the request was answered by another
champion, or received before the period or the registration) are counted by reason,
and run only when a replay says `include_old`. A challenger never replays what it
answered live; the champion replayed as a control does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import duckdb

if TYPE_CHECKING:
    from datetime import datetime

    from shadow.runner import RunPlan

CHALLENGER = "challenger"
CONTROL = "control"
BEFORE_PERIOD = "before_period"
OTHER_CHAMPION = "other_champion"
NO_CHAMPION = "no_champion"
SAMPLE_SPACE = 16**13
_SAMPLE_POINT = "('0x' || left(sha256(t.request_id || ':' || c.version_id), 13))::BIGINT"
_COUNTS = "coalesce(t.champion_version = c.champion AND t.received_at >= c.counts_from, false)"
"""Whether a pair can count in its slot's current period."""
_SKIP_REASON = (f"CASE WHEN t.champion_version IS NULL THEN '{NO_CHAMPION}' "
                f"WHEN t.champion_version = c.champion THEN '{BEFORE_PERIOD}' ELSE '{OTHER_CHAMPION}' END")
_RETRIABLE = "s.status = 'error' OR (s.status = 'not_run' AND s.error LIKE 'config:%')"


def _pending_sql(plan: RunPlan, select: str, tail: str, counting: str = "can") -> tuple[str, list[Any]]:
    """The pending pairs of a plan: without a result (or, retrying, with one to retry), sampled; a
    challenger never replays what it answered live. `counting` says which pairs: those that `can`
    count in the current period, those that `cannot`, or `any`."""
    values = ", ".join("(?, ?, ?, ?, ?, ?)" for _ in plan.challengers)
    params: list[Any] = [x for c in plan.challengers.values()
                         for x in (c.slot, c.version_id, c.role, float(c.rate), c.champion, c.counts_from)]
    unanswered = "s.request_id IS NULL" + (f" OR {_RETRIABLE}" if plan.retry_errors else "")
    window = {"can": f"AND {_COUNTS} ", "cannot": f"AND NOT {_COUNTS} ", "any": ""}[counting]
    sql = (
        "WITH c(slot, version_id, role, rate, champion, counts_from) AS "
        f"(SELECT col0, col1, col2, col3, col4::VARCHAR, col5::TIMESTAMP FROM (VALUES {values})) "
        f"SELECT {select} FROM traffic t JOIN c ON c.slot = t.slot "
        "LEFT JOIN shadow_results s ON s.request_id = t.request_id AND s.version_id = c.version_id "
        f"WHERE t.ingested_at <= ? AND t.received_at >= ? AND t.seq > ? AND ({unanswered}) {window}"
        f"AND (c.role = '{CONTROL}' OR t.champion_version IS DISTINCT FROM c.version_id) "
        f"AND {_SAMPLE_POINT} < c.rate * {SAMPLE_SPACE} "
        + tail
    )
    return sql, [*params, plan.snapshot, plan.since, plan.after_seq]


def newest_ingested(connection: duckdb.DuckDBPyConnection, after_seq: int) -> datetime | None:
    """When the newest traffic row after `after_seq` was ingested, by its ingest host's clock.

    A run takes the traffic ingested up to its snapshot. With ingest workers on other hosts a
    row may carry a time ahead of this host's clock; a snapshot never earlier than the rows it
    can read keeps such a row in this pass (the next pass starts past it, and would never see it)."""
    return connection.execute("SELECT max(ingested_at) FROM traffic WHERE seq > ?", [after_seq]).fetchone()[0]


def count_pending(connection: duckdb.DuckDBPyConnection, plan: RunPlan) -> int:
    """How many pairs the run will make (with `include_old`, those that cannot count too)."""
    sql, params = _pending_sql(plan, "count(*)", "", "any" if plan.include_old else "can")
    return connection.execute(sql, params).fetchone()[0]


def count_skipped(connection: duckdb.DuckDBPyConnection, plan: RunPlan) -> dict[str, int]:
    """Requests with pending pairs that cannot count, by reason (a request counts once per reason)."""
    sql, params = _pending_sql(plan, f"{_SKIP_REASON} AS reason, count(DISTINCT t.request_id)", "GROUP BY 1", "cannot")
    return dict(connection.execute(sql, params).fetchall())


def pending_page(
    connection: duckdb.DuckDBPyConnection, plan: RunPlan, cursor: tuple[datetime, str, str], size: int
) -> list[tuple]:
    """The next `size` pending pairs after `cursor`, in (received_at, request_id, version_id) order."""
    sql, params = _pending_sql(
        plan,
        "t.received_at, t.request_id, t.seq, c.version_id, c.role, t.request_json, s.status",
        "AND t.received_at >= ? AND (t.received_at, t.request_id, c.version_id) > (?, ?, ?) "
        "ORDER BY t.received_at, t.request_id, c.version_id LIMIT ?",
        "any" if plan.include_old else "can",
    )
    return connection.execute(sql, [*params, cursor[0], *cursor, size]).fetchall()


def replay_batches(connection: duckdb.DuckDBPyConnection, plan: RunPlan, span: int) -> list[tuple[str, int, int, int]]:
    """The pending pairs cut into batches: per challenger, requests whose `seq` falls in one block of
    `span`, as (version_id, lowest seq of the block, highest pending seq, pending pairs)."""
    sql, params = _pending_sql(
        plan, f"c.version_id, t.seq // {int(span)} AS block, max(t.seq), count(*)", "GROUP BY 1, 2 ORDER BY 2, 1",
        "any" if plan.include_old else "can")
    return [(version, block * span, top, count) for version, block, top, count in connection.execute(sql, params).fetchall()]


def pending_batch(connection: duckdb.DuckDBPyConnection, plan: RunPlan, version_id: str, seq_lo: int,
                  seq_hi: int) -> list[tuple]:
    """The pending pairs of one challenger whose request `seq` is in [seq_lo, seq_hi], as `pending_page` rows."""
    sql, params = _pending_sql(
        plan, "t.received_at, t.request_id, t.seq, c.version_id, c.role, t.request_json, s.status",
        "AND c.version_id = ? AND t.seq BETWEEN ? AND ? ORDER BY t.seq", "any" if plan.include_old else "can")
    return connection.execute(sql, [*params, version_id, seq_lo, seq_hi]).fetchall()
