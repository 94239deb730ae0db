"""The capture buffer behind the gateway: bounded memory, redaction before disk, complete segments."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from registry import RedactionRule
from shadow.gateway.capture import PendingCapture, SpoolBuffer
from shadow.redaction import Redactor
from shadow.spool import read_segment, ready_segments


MiB = 1024 * 1024


def _pending(n: int, text: str = "hello", request_bytes: int = 0) -> PendingCapture:
    return PendingCapture(request_id=f"szr_{n}", client_request_id=None, slot="s", received_at=time.time(),
                          request={"messages": [{"role": "user", "content": text}]}, champion_version="v",
                          stream=False, status=200, latency_ms=1.0, request_bytes=request_bytes,
                          body=b'{"choices":[{"message":{"content":"card 4242"}}],"usage":{"prompt_tokens":3}}')


def test_past_the_memory_cap_captures_are_dropped_and_counted(tmp_path: Path) -> None:
    buffer = SpoolBuffer(tmp_path, Redactor({}), max_records=2, flush_interval_s=0.25, max_bytes=MiB)
    assert [buffer.add(_pending(i)) for i in range(3)] == [True, True, False]
    assert buffer.dropped == 1 and len(buffer) == 2


def test_past_the_byte_cap_captures_are_dropped_and_counted_until_a_flush_frees_memory(tmp_path: Path) -> None:
    big = "x" * 3000
    buffer = SpoolBuffer(tmp_path, Redactor({}), max_records=100, flush_interval_s=0.25, max_bytes=10_000)
    added = [buffer.add(_pending(i, big, request_bytes=len(big) + 60)) for i in range(4)]
    assert added == [True, True, True, False] and buffer.dropped == 1
    asyncio.run(buffer.flush())
    assert buffer.flushed == 3 and buffer.add(_pending(9, big, request_bytes=len(big) + 60))


def test_one_capture_that_cannot_be_written_is_dropped_and_the_others_are_written(tmp_path: Path) -> None:
    buffer = SpoolBuffer(tmp_path, Redactor({}), max_records=10, flush_interval_s=0.25, max_bytes=MiB)
    for n, text in enumerate(["before", "caf\udc80", "after"]):
        buffer.add(_pending(n, text))
    asyncio.run(buffer.flush())
    [segment] = ready_segments(tmp_path)
    assert [r.request_id for r in read_segment(segment)] == ["szr_0", "szr_2"]
    assert (buffer.flushed, buffer.dropped, len(buffer)) == (2, 1, 0)


def test_a_backlog_is_written_in_segments_of_bounded_size(tmp_path: Path) -> None:
    buffer = SpoolBuffer(tmp_path, Redactor({}), max_records=100, flush_interval_s=0.25, max_bytes=MiB,
                           segment_bytes=2_000)
    for n in range(10):
        buffer.add(_pending(n, "y" * 500))
    asyncio.run(buffer.flush())
    segments = ready_segments(tmp_path)
    assert len(segments) > 1 and all(p.stat().st_size <= 2_000 for p in segments)
    assert sorted(r.request_id for p in segments for r in read_segment(p)) == sorted(f"szr_{n}" for n in range(10))


def test_a_flush_writes_one_complete_redacted_segment(tmp_path: Path) -> None:
    redactor = Redactor({"s": [RedactionRule(pattern=r"\d{4}", replacement="####")]})
    buffer = SpoolBuffer(tmp_path, redactor, max_records=10, flush_interval_s=0.25, max_bytes=MiB)
    buffer.add(_pending(1, "my pin is 1234"))
    buffer.add(_pending(2))
    asyncio.run(buffer.flush())
    [segment] = ready_segments(tmp_path)
    records = read_segment(segment)
    assert [r.request_id for r in records] == ["szr_1", "szr_2"]
    assert records[0].request["messages"][0]["content"] == "my pin is ####"
    assert records[0].output == "card ####" and records[0].usage == {"prompt_tokens": 3}
    assert buffer.flushed == 2 and len(buffer) == 0


def test_a_stop_that_arrives_while_a_flush_is_under_way_still_writes_every_capture(tmp_path: Path) -> None:
    buffer = SpoolBuffer(tmp_path, Redactor({}), max_records=500, flush_interval_s=60, max_bytes=8 * MiB,
                         flush_max_records=200)

    async def stop_mid_flush() -> None:
        flusher = asyncio.create_task(buffer.run())
        for n in range(200):  # the 200th makes a flush due at once
            buffer.add(_pending(n, "z" * 2000))
        while len(buffer):  # the flush has taken them: it is serialising or writing them in a thread
            await asyncio.sleep(0)
        flusher.cancel()  # as the gateway's shutdown does
        await asyncio.gather(flusher, return_exceptions=True)

    asyncio.run(stop_mid_flush())
    written = sorted(r.request_id for p in ready_segments(tmp_path) for r in read_segment(p))
    assert written == sorted(f"szr_{n}" for n in range(200))
