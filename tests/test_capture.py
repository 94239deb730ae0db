"""The capture buffer behind the gateway: bounded memory, redaction before disk, complete segments."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from registry import RedactionRule
from shadow.gateway.capture import CaptureBuffer, PendingCapture
from shadow.redaction import Redactor
from shadow.spool import read_segment, ready_segments


def _pending(n: int, text: str = "hello") -> PendingCapture:
    return PendingCapture(request_id=f"szr_{n}", client_request_id=None, slot="s", received_at=time.time(),
                          request={"messages": [{"role": "user", "content": text}]}, champion_version="v",
                          stream=False, status=200, latency_ms=1.0,
                          body=b'{"choices":[{"message":{"content":"card 4242"}}],"usage":{"prompt_tokens":3}}')


def test_past_the_memory_cap_captures_are_dropped_and_counted(tmp_path: Path) -> None:
    buffer = CaptureBuffer(tmp_path, Redactor({}), max_records=2, flush_interval_s=0.25)
    assert [buffer.add(_pending(i)) for i in range(3)] == [True, True, False]
    assert buffer.dropped == 1 and len(buffer) == 2


def test_a_flush_writes_one_complete_redacted_segment(tmp_path: Path) -> None:
    redactor = Redactor({"s": [RedactionRule(pattern=r"\d{4}", replacement="####")]})
    buffer = CaptureBuffer(tmp_path, redactor, max_records=10, flush_interval_s=0.25)
    buffer.add(_pending(1, "my pin is 1234"))
    buffer.add(_pending(2))
    asyncio.run(buffer.flush())
    [segment] = ready_segments(tmp_path)
    records = read_segment(segment)
    assert [r.request_id for r in records] == ["szr_1", "szr_2"]
    assert records[0].request["messages"][0]["content"] == "my pin is ####"
    assert records[0].output == "card ####" and records[0].usage == {"prompt_tokens": 3}
    assert buffer.flushed == 2 and len(buffer) == 0
