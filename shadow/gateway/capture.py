"""Capture on the champion path: an in-memory append now, a spool segment a moment later.

The request handler only appends a `PendingCapture` holding references to what it already
has (the parsed request, the raw upstream bytes). Everything costly — parsing the answer,
redaction, serialisation, the disk write and its fsync — happens in the flusher, off the
request's path, at least every `flush_interval_s` and as soon as `flush_max_records` new
captures are held, so a `kill -9` loses a window bounded in time and in count. Past the
memory cap (records and bytes)
new captures are dropped and counted; the champion's response is never affected. A
capture that cannot be serialised is dropped and counted on its own, so it never holds
back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

from pydantic_core import PydanticSerializationError

from shadow.gateway.prometheus_metrics import gateway_metrics
from shadow.spool_records import OutcomeRecord, TrafficRecord
from shadow.redaction import Redactor
from shadow.spool import write_segment
from shadow.toolcalls import StreamedToolCalls, ToolCall, tool_calls_of

log = logging.getLogger("shadowzoo.gateway")
SEGMENT_BYTES = 4 * 1024 * 1024


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
    request_bytes: int = 0
    tags: dict[str, str] | None = None

    def to_record(self) -> TrafficRecord:
        answer = _answer_from_events(self.events) if self.stream else _answer_from_body(self.body)
        return TrafficRecord(
            request_id=self.request_id, client_request_id=self.client_request_id, slot=self.slot,
            received_at=datetime.fromtimestamp(self.received_at, UTC), request=self.request,
            champion_version=self.champion_version, status=self.status, output=answer.output,
            tool_calls=answer.tool_calls, usage=answer.usage, latency_ms=self.latency_ms, stream=self.stream,
            partial=self.partial, error=self.error, tags=self.tags,
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


class SpoolBuffer:
    """Records bound for the spool (captured exchanges and feedback), in memory, flushed to
    spool segments by a background task.

    Memory is capped by count and by bytes (estimated until a capture is serialised, in
    flight included); past either cap new captures are dropped and counted. Each capture
    is serialised on its own: one that cannot be (text that is not Unicode, an answer that
    does not fit the record) is dropped and counted, never its batch. Lines are written in
    segments of at most `segment_bytes`, so after a full disk a backlog is written in
    pieces that fit, and the lines not yet written wait, serialised, for the next flush.
    """

    def __init__(self, spool: Path, redactor: Redactor, max_records: int, flush_interval_s: float, *,
                 max_bytes: int, flush_max_records: int = 256, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.spool = spool
        self.redactor = redactor
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.flush_interval_s = flush_interval_s
        self.flush_max_records = flush_max_records
        self.dropped = 0
        self.flushed = 0
        self._items: list[PendingCapture | bytes] = []
        self._bytes = 0
        self._added = 0
        self._due = asyncio.Event()

    def add(self, item: PendingCapture | bytes) -> bool:
        """Keep a capture (or a record's spool `line`) for the next flush; False (and counted) when full."""
        size = _size(item)
        if len(self._items) >= self.max_records or self._bytes + size > self.max_bytes:
            self.dropped += 1
            return False
        self._items.append(item)
        self._bytes += size
        self._added += 1
        if self._added >= self.flush_max_records:
            self._due.set()
        return True

    def line(self, record: TrafficRecord | OutcomeRecord) -> bytes:
        """A record's spool line, redacted; raises `PydanticSerializationError` when it cannot be written."""
        return self.redactor.apply(record).model_dump_json().encode()

    def __len__(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        """Flush every interval, or sooner once `flush_max_records` captures arrived, until
        cancelled; then flush what is left. A flush under way when the cancel comes is finished
        first: it has taken its captures out of the buffer, so cancelling it would lose them."""
        flushing: asyncio.Future[None] | None = None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), self.flush_interval_s)
                flushing = asyncio.ensure_future(self.flush())
                await asyncio.shield(flushing)
        finally:
            if flushing is not None:
                await flushing
            await self.flush()

    async def flush(self) -> None:
        """Write everything held so far (in a thread: fsync must not block the loop).

        Lines the disk refused (it is full) stay in memory, already serialised, for the next try.
        """
        self._due.clear()
        self._added = 0
        if not self._items:
            return
        items, self._items = self._items, []
        lines = await asyncio.to_thread(self._lines, items)
        written = await asyncio.to_thread(self._write, lines)
        unwritten = lines[written:]
        self._items = unwritten + self._items
        self._bytes += sum(map(len, unwritten)) - sum(map(_size, items))
        self.flushed += written

    def _lines(self, items: list[PendingCapture | bytes]) -> list[bytes]:
        """Each item as its spool line; one that cannot be serialised is dropped and counted."""
        lines = []
        for item in items:
            try:
                lines.append(item if isinstance(item, bytes) else self.line(item.to_record()))
            except (ValueError, PydanticSerializationError) as exc:
                self._drop(item, exc)
        return lines

    def _write(self, lines: list[bytes]) -> int:
        """Write `lines` as segments of at most `segment_bytes`; returns how many were written
        before the disk refused one (a full disk must not stop serving: the rest is retried)."""
        written = 0
        for chunk in _segments(lines, self.segment_bytes):
            try:
                write_segment(self.spool, chunk)
            except OSError:
                log.exception("capture flush to %s failed; %d capture(s) kept for the next try",
                              self.spool, len(lines) - written)
                break
            written += len(chunk)
        return written

    def _drop(self, item: PendingCapture, exc: Exception) -> None:
        log.warning("capture of slot %s dropped: it cannot be written: %s", item.slot, str(exc).splitlines()[0])
        self.dropped += 1
        gateway_metrics().dropped.labels(item.slot, "unwritable").inc()


def _size(item: PendingCapture | bytes) -> int:
    """The bytes an item holds: a line's length, or a capture's request and answer as received."""
    if isinstance(item, bytes):
        return len(item)
    return item.request_bytes + len(item.body or b"") + sum(map(len, item.events))


def _segments(lines: list[bytes], segment_bytes: int) -> Iterator[list[bytes]]:
    """Consecutive runs of lines of at most `segment_bytes` together (a longer line alone)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) + 1 > segment_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line) + 1
    if chunk:
        yield chunk
