"""The runner's results: one `shadow_results` row per (request, variant), written in batches.

Rows are keyed (request_id, version_id) and inserted only when their key is new
(`registry.keyed`), so a crash
loses at most the unwritten batch, which the next run simply does again, and nothing is
ever written twice. A retried pair (`replay --retry-errors`) replaces its earlier row,
unless that row is an answer by then or the retry was not made (paused, budget: the old
row stays), with a new `seq` so the scorer sees it changed. An error it replaces had been
scored, so the slot's scored evidence is forgotten in the same transaction and the
scorer's next refresh rebuilds it from the rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import polars as pl

from registry import Database, utcnow
from registry.db import registered
from registry.evidence import forget_scored_evidence
from registry.keyed import insert_absent, upsert
from shadow.pricing import detail_tokens
from shadow.toolcalls import ToolCall, tool_calls_json

RESULT_SCHEMA = {
    "request_id": pl.Utf8,
    "request_seq": pl.Int64,
    "version_id": pl.Utf8,
    "role": pl.Utf8,
    "status": pl.Utf8,
    "output": pl.Utf8,
    "tool_calls_json": pl.Utf8,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "cached_tokens": pl.Int64,
    "reasoning_tokens": pl.Int64,
    "usage_json": pl.Utf8,
    "cost_usd": pl.Float64,
    "latency_ms": pl.Float64,
    "error": pl.Utf8,
    "attempts": pl.Int32,
    "finished_at": pl.Datetime("us"),
}
_RESULT_COLUMNS = ", ".join(RESULT_SCHEMA)
_RESULT_KEY = ("request_id", "version_id")
_WRITTEN_COLUMNS = (*RESULT_SCHEMA, "seq")
_WRITTEN_ROWS = f"SELECT {_RESULT_COLUMNS}, nextval('change_seq') FROM {{batch}}"

Row = dict[str, Any]


@dataclass(frozen=True)
class Work:
    """One pending pair: a captured request to answer with one variant."""

    received_at: datetime
    request_id: str
    request_seq: int
    version_id: str
    role: str
    request: dict[str, Any]
    replaces: str | None = None
    """The status of the earlier result a retry replaces (None for a pair without one)."""


def result_row(
    work: Work,
    status: str,
    *,
    output: str | None = None,
    tool_calls: list[ToolCall] | None = None,
    usage: dict[str, Any] | None = None,
    cost: float | None = None,
    latency_ms: float | None = None,
    error: str | None = None,
    attempts: int = 0,
) -> Row:
    """The `shadow_results` row of a pair's outcome (`ok`, `error` or `not_run`)."""
    cached, reasoning = detail_tokens(usage)
    return {
        "request_id": work.request_id,
        "request_seq": work.request_seq,
        "version_id": work.version_id,
        "role": work.role,
        "status": status,
        "output": output,
        "tool_calls_json": tool_calls_json(tool_calls),
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "completion_tokens": (usage or {}).get("completion_tokens"),
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
        "usage_json": json.dumps(usage) if usage is not None else None,
        "cost_usd": cost,
        "latency_ms": latency_ms,
        "error": error,
        "attempts": attempts,
        "finished_at": utcnow(),
        "replaces": work.replaces,
    }


class ResultWriter:
    """Buffers results and writes them in batches, by size or every `interval_s`;
    `on_written` hears of each batch once it is in the database."""

    def __init__(
        self, database: Database, on_written: Callable[[list[Row]], None], batch_rows: int, interval_s: float
    ) -> None:
        self._database = database
        self._on_written = on_written
        self._batch_rows = batch_rows
        self._interval_s = interval_s
        self._rows: list[Row] = []
        self._lock = asyncio.Lock()
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def add(self, row: Row) -> None:
        """Buffer one result; a full buffer is written before this returns (back-pressure)."""
        self._rows.append(row)
        if len(self._rows) >= self._batch_rows:
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return
            await asyncio.to_thread(self._write, rows)
            self._on_written(rows)

    async def close(self) -> None:
        """Stop the timer (never in the middle of a write) and write what is left."""
        if self._ticker is not None:
            async with self._lock:
                self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        await self.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()

    def _write(self, rows: list[Row]) -> None:
        write_results(self._database, rows)


def write_results(database: Database, rows: list[Row]) -> None:
    """Write results in one transaction (done again when another writer's commit conflicts with it):
    new pairs inserted when their key is absent, retries over their earlier rows."""
    fresh = pl.from_dicts([row for row in rows if row["replaces"] is None], schema=RESULT_SCHEMA)
    retried = pl.from_dicts([row for row in rows if row["replaces"] is not None], schema=RESULT_SCHEMA)
    database.committed(lambda connection: _insert(database, connection, fresh, retried))


def _insert(database: Database, connection: duckdb.DuckDBPyConnection, fresh: pl.DataFrame,
            retried: pl.DataFrame) -> None:
    """`write_results`'s transaction."""
    database.reserve("change_seq", len(fresh) + len(retried))
    if len(fresh):
        with registered(connection, "shadow_batch", fresh):
            insert_absent(connection, "shadow_results", _RESULT_KEY, _WRITTEN_COLUMNS,
                          _WRITTEN_ROWS.format(batch="shadow_batch"))
    if len(retried):
        with registered(connection, "shadow_retried", retried):
            _replace(connection)


def _replace(connection: duckdb.DuckDBPyConnection) -> None:
    """Write the retried results of `shadow_retried` over their earlier rows (never over an answer)."""
    scored = [slot for (slot,) in connection.execute(
        "SELECT DISTINCT v.slot FROM shadow_retried r JOIN shadow_results s USING (request_id, version_id) "
        f"JOIN variants v USING (version_id) WHERE s.status = 'error' AND {_replaces('s', 'r')}").fetchall()]
    forget_scored_evidence(connection, scored)
    upsert(connection, "shadow_results", _RESULT_KEY, _WRITTEN_COLUMNS, _WRITTEN_ROWS.format(batch="shadow_retried"),
           when=_replaces("shadow_results", "excluded"))


def replaces_earlier(row: Row) -> bool:
    """Whether a written row replaced an earlier error or config not-run (the test `_replaces` makes in SQL,
    the earlier row never being an answer: only those are retried)."""
    return row["replaces"] is not None and (row["status"] != "not_run" or row["error"].startswith("config:"))


def _replaces(old: str, new: str) -> str:
    """SQL: whether retried result `new` replaces the earlier row `old` of its pair: never an answer,
    and never with a retry that was not made (paused, budget); a config not-run does replace."""
    return f"{old}.status <> 'ok' AND ({new}.status <> 'not_run' OR {new}.error LIKE 'config:%')"
