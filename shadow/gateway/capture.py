"""Capture on the champion path: an in-memory append now, a spool segment a moment later.

The request handler only appends a `PendingCapture` holding references to what it already
has (the parsed request, the raw upstream bytes). Everything costly — parsing the answer,
redaction, serialisation, the disk write and its fsync — happens in the flusher, off the
request's path, at least every `flush_interval_s`. Past the memory cap new captures are
dropped and counted; the champion's response is never affected.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shadow.records import OutcomeRecord, TrafficRecord
from shadow.redaction import Redactor
from shadow.spool import write_segment
from shadow.toolcalls import StreamedToolCalls, ToolCall, tool_calls_of

log = logging.getLogger("shadowzoo.gateway")


@dataclass(slots=True)
class PendingCapture:
    """What the gateway saw of one request, kept raw until the flusher turns it into a record."""

    request_id: str
    client_request_id: str | None
    slot: str
    received_at: float
    request: dict[str, Any]
    champion_version: str | None
    stream: bool
    status: int | None = None
    latency_ms: float | None = None
    body: bytes | None = None
    events: list[bytes] = field(default_factory=list)
    partial: bool = False
    error: str | None = None

    def to_record(self) -> TrafficRecord:
        answer = _answer_from_events(self.events) if self.stream else _answer_from_body(self.body)
        return TrafficRecord(
            request_id=self.request_id, client_request_id=self.client_request_id, slot=self.slot,
            received_at=datetime.fromtimestamp(self.received_at, UTC), request=self.request,
            champion_version=self.champion_version, status=self.status, output=answer.output,
            tool_calls=answer.tool_calls, usage=answer.usage, latency_ms=self.latency_ms, stream=self.stream,
            partial=self.partial, error=self.error,
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    """What a capture stores of the champion's answer."""

    output: str | None = None
    tool_calls: list[ToolCall] | None = None
    usage: dict[str, Any] | None = None


def _answer_from_body(body: bytes | None) -> _Answer:
    """Output text, tool calls and usage of a non-streamed chat completion (nothing when it is not one)."""
    if not body:
        return _Answer()
    try:
        payload = json.loads(body)
        message = payload["choices"][0]["message"]
        return _Answer(message.get("content"), tool_calls_of(message), payload.get("usage"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return _Answer()


def _answer_from_events(events: list[bytes]) -> _Answer:
    """Output text, tool calls and usage assembled from the SSE events that reached the client."""
    parts: list[str] = []
    calls = StreamedToolCalls()
    usage = None
    for event in events:
        for line in event.splitlines():
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            try:
                chunk = json.loads(line[5:])
            except ValueError:
                continue
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    parts.append(delta["content"])
                calls.add(delta.get("tool_calls"))
    return _Answer(("".join(parts) if parts else None), calls.calls(), usage)


class CaptureBuffer:
    """Captures in memory, flushed to spool segments by a background task."""

    def __init__(self, spool: Path, redactor: Redactor, max_records: int, flush_interval_s: float) -> None:
        self.spool = spool
        self.redactor = redactor
        self.max_records = max_records
        self.flush_interval_s = flush_interval_s
        self.dropped = 0
        self.flushed = 0
        self._items: list[PendingCapture | BaseModel] = []

    def add(self, item: PendingCapture | TrafficRecord | OutcomeRecord) -> bool:
        """Keep `item` for the next flush; False (and counted) when the buffer is full."""
        if len(self._items) >= self.max_records:
            self.dropped += 1
            return False
        self._items.append(item)
        return True

    def __len__(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        """Flush every interval until cancelled; then flush what is left."""
        try:
            while True:
                await asyncio.sleep(self.flush_interval_s)
                await self.flush()
        finally:
            await self.flush()

    async def flush(self) -> None:
        """Write everything held so far as one segment (in a thread: fsync must not block the loop)."""
        if not self._items:
            return
        items, self._items = self._items, []
        try:
            await asyncio.to_thread(self._write, items)
        except Exception:  # a full disk must not stop serving: keep the captures for the next try
            log.exception("capture flush to %s failed; will retry", self.spool)
            self._items = items + self._items
            return
        self.flushed += len(items)

    def _write(self, items: list[PendingCapture | BaseModel]) -> None:
        write_segment(self.spool, (self._line(item) for item in items))

    def _line(self, item: PendingCapture | BaseModel) -> bytes:
        record = item.to_record() if isinstance(item, PendingCapture) else item
        if isinstance(record, TrafficRecord):
            record = self.redactor.apply(record)
        return record.model_dump_json().encode()
