"""Capture on the champion path: an in-memory append now, a spool segment a moment later.

The request handler only appends a `PendingCapture` holding references to what it already
has (the parsed request, the raw upstream bytes). Everything costly — parsing the answer,
redaction, serialisation, the disk write and its fsync — happens in the flusher, off the
request's path, at least every `flush_interval_s`. Past the memory cap new captures are
dropped and counted; the champion's response is never affected. A capture that cannot be
serialised is dropped and counted on its own, so it never holds back the others.
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
from pydantic_core import PydanticSerializationError

from shadow.gateway.metrics import gateway_metrics
from shadow.records import OutcomeRecord, TrafficRecord
from shadow.redaction import Redactor
from shadow.spool import write_segment

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
        output, usage = _answer_from_events(self.events) if self.stream else _answer_from_body(self.body)
        return TrafficRecord(
            request_id=self.request_id, client_request_id=self.client_request_id, slot=self.slot,
            received_at=datetime.fromtimestamp(self.received_at, UTC), request=self.request,
            champion_version=self.champion_version, status=self.status, output=output, usage=usage,
            latency_ms=self.latency_ms, stream=self.stream, partial=self.partial, error=self.error,
        )


def _answer_from_body(body: bytes | None) -> tuple[str | None, dict[str, Any] | None]:
    """Output text and usage of a non-streamed chat completion (None when it is not one)."""
    if not body:
        return None, None
    try:
        payload = json.loads(body)
        return payload["choices"][0]["message"].get("content"), payload.get("usage")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None


def _answer_from_events(events: list[bytes]) -> tuple[str | None, dict[str, Any] | None]:
    """Output text and usage assembled from the SSE events that reached the client."""
    parts: list[str] = []
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
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
    return ("".join(parts) if parts else None), usage


def storable(record: BaseModel) -> bool:
    """Whether a record can be written as JSON (text holding a lone surrogate escape cannot)."""
    try:
        record.model_dump_json()
    except PydanticSerializationError:
        return False
    return True


class CaptureBuffer:
    """Captures in memory, flushed to spool segments by a background task.

    Each capture is serialised on its own: one that cannot be (text that is not Unicode,
    an answer that does not fit the record) is dropped and counted, never its batch.
    """

    def __init__(self, spool: Path, redactor: Redactor, max_records: int, flush_interval_s: float) -> None:
        self.spool = spool
        self.redactor = redactor
        self.max_records = max_records
        self.flush_interval_s = flush_interval_s
        self.dropped = 0
        self.flushed = 0
        self._items: list[PendingCapture | BaseModel | bytes] = []

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
        """Write everything held so far (in a thread: fsync must not block the loop).

        Lines the disk refused (it is full) stay in memory, already serialised, for the next try.
        """
        if not self._items:
            return
        items, self._items = self._items, []
        lines = await asyncio.to_thread(self._lines, items)
        try:
            await asyncio.to_thread(write_segment, self.spool, lines)
        except OSError:  # a full disk must not stop serving: keep the captures for the next try
            log.exception("capture flush to %s failed; will retry", self.spool)
            self._items = lines + self._items
            return
        self.flushed += len(lines)

    def _lines(self, items: list[PendingCapture | BaseModel | bytes]) -> list[bytes]:
        """Each item as its spool line; one that cannot be serialised is dropped and counted."""
        lines = []
        for item in items:
            try:
                lines.append(item if isinstance(item, bytes) else self._line(item))
            except (ValueError, PydanticSerializationError) as exc:
                self._drop(item, exc)
        return lines

    def _line(self, item: PendingCapture | BaseModel) -> bytes:
        record = item.to_record() if isinstance(item, PendingCapture) else item
        if isinstance(record, TrafficRecord):
            record = self.redactor.apply(record)
        return record.model_dump_json().encode()

    def _drop(self, item: PendingCapture | BaseModel, exc: Exception) -> None:
        slot = getattr(item, "slot", "unknown")
        log.warning("capture of slot %s dropped: it cannot be written: %s", slot, str(exc).splitlines()[0])
        self.dropped += 1
        gateway_metrics().dropped.labels(slot, "unwritable").inc()
