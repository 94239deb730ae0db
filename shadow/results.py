"""The runner's results: one `shadow_results` row per (request, variant), written in batches.

Rows are keyed (request_id, version_id) and inserted with INSERT OR IGNORE, so a crash
loses at most the unwritten batch, which the next run simply does again, and nothing is
ever written twice.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from registry import Database, utcnow
from registry.db import registered
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
            frame = pl.from_dicts(rows, schema=RESULT_SCHEMA)
            await asyncio.to_thread(self._insert, frame)
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

    def _insert(self, frame: pl.DataFrame) -> None:
        with self._database.transaction() as connection, registered(connection, "shadow_batch", frame):
            connection.execute(
                f"INSERT OR IGNORE INTO shadow_results ({_RESULT_COLUMNS}) SELECT {_RESULT_COLUMNS} FROM shadow_batch"
            )
