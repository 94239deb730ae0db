"""Load generators: requests one at a time, a closed loop of workers, or an open loop on a fixed schedule."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.harness import BenchError
from bench.harness.scenario import CHAT_PATH, GATEWAY_KEY, LOOPBACK


@dataclass(frozen=True)
class Target:
    """One endpoint and the exact bytes to POST to it."""

    name: str
    port: int
    body: bytes
    key: str = GATEWAY_KEY
    path: str = CHAT_PATH

    @staticmethod
    def of(name: str, port: int, payload: dict[str, Any], key: str = GATEWAY_KEY) -> Target:
        return Target(name, port, json.dumps(payload).encode(), key)

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}


def sequential_latencies(targets: list[Target], rounds: int, warmup: int, max_seconds: float) -> dict[str, list[float]]:
    """Latency (ms) of requests sent one at a time over one keep-alive http.client connection per target.

    Each round sends one request to every target, alternating the order, so that drift
    (frequency scaling, a noisy neighbour) hits all targets alike. Stops after `rounds`
    measured rounds or `max_seconds`, whichever comes first; any non-200 is an error.
    """
    connections = {t.name: http.client.HTTPConnection(LOOPBACK, t.port, timeout=30) for t in targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    deadline = time.monotonic() + max_seconds
    try:
        for number in range(warmup + rounds):
            if time.monotonic() > deadline:
                break
            for target in targets if number % 2 == 0 else reversed(targets):
                elapsed = _timed_post(connections[target.name], target)
                if number >= warmup:
                    latencies[target.name].append(elapsed)
    finally:
        for connection in connections.values():
            connection.close()
    return latencies


def _timed_post(connection: http.client.HTTPConnection, target: Target) -> float:
    started_at = time.perf_counter()
    connection.request("POST", target.path, body=target.body, headers=target.headers)
    answer = connection.getresponse()
    body = answer.read()
    elapsed = (time.perf_counter() - started_at) * 1000
    if answer.status != 200:
        raise BenchError(f"{target.name} answered {answer.status}: {body[:300]!r}")
    return elapsed


@dataclass
class LoadResult:
    """What a load run did: completed requests, errors, wall time, latencies and this process's CPU."""

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_seconds: float
    late_ms: list[float] = field(default_factory=list)
    control_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def closed_loop(target: Target, concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    """`concurrency` workers, each sending its next request when the last one is answered.

    Runs for `seconds` or until `max_requests` have been sent, whichever comes first.
    """
    latencies: list[float] = []
    errors = 0
    sent = 0
    url = f"http://{LOOPBACK}:{target.port}{target.path}"
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started_at = time.perf_counter()
        deadline = started_at + seconds

        async def worker() -> None:
            nonlocal errors, sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                took = await _timed_async_post(session, url, target)
                if took is None:
                    errors += 1
                else:
                    latencies.append(took)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started_at
    return LoadResult(len(latencies), errors, elapsed, latencies, time.process_time() - cpu_before)


async def _timed_async_post(session: aiohttp.ClientSession, url: str, target: Target) -> float | None:
    """One request's latency in ms, or None when it failed (connection error or a non-200)."""
    began = time.perf_counter()
    try:
        async with session.post(url, data=target.body, headers=target.headers) as answer:
            await answer.read()
            if answer.status != 200:
                return None
    except aiohttp.ClientError:
        return None
    return (time.perf_counter() - began) * 1000


async def open_loop(target: Target, rate: float, seconds: float, control: Target | None = None,
                    max_in_flight: int = 256) -> LoadResult:
    """Requests started on a fixed schedule (`rate` per second for `seconds`), whatever the answers do.

    An open loop keeps the offered load identical across scenarios, so latency changes are
    the server's. `late_ms` records how late each request left against its schedule: a
    large value means the load generator itself fell behind. With `control`, a second
    request to it leaves at each tick too (its latencies in `control_ms`): what the same
    client sees from a server that is not the one measured, under the same conditions.
    """
    latencies: list[float] = []
    controls: list[float] = []
    late: list[float] = []
    errors = 0
    total = int(rate * seconds)
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight)) as session:

        async def one(to: Target, scheduled: float, into: list[float]) -> None:
            nonlocal errors
            late.append((time.perf_counter() - scheduled) * 1000)
            took = await _timed_async_post(session, f"http://{LOOPBACK}:{to.port}{to.path}", to)
            if took is None:
                errors += 1
            else:
                into.append(took)

        started_at = time.perf_counter()
        tasks = []
        for number in range(total):
            scheduled = started_at + number / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(target, scheduled, latencies)))
            if control is not None:
                tasks.append(asyncio.create_task(one(control, scheduled, controls)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        elapsed = time.perf_counter() - started_at
    return LoadResult(len(latencies), errors, elapsed, latencies, time.process_time() - cpu_before, late, controls)
