"""Throughput of the shadow runner against the simulator. Prints one JSON object.

``overhead``: the runner (paging DuckDB, applying the variant, limits, retries, batched
writes) beside a bare loop of ``chat.completions.create`` calls on the same kind of
client (AsyncOpenAI on the aiohttp transport, no SDK retries), at the same concurrency,
on the same zero-latency model, alternating rounds in one run. Target: ratio >= 0.8.

``littles_law``: with 500 ms of upstream latency and 200 calls in flight, no system can
do better than 200 / 0.5 s = 400 calls/s; the runner's achieved rate as a fraction of
that bound, end to end (start-up and the last wave included) and in steady state (from
the progress reports between the first second and the last). Beside it: the latency the
runner measured per call (the simulator and the client add to the nominal 500 ms under
this load), the bound that latency implies, and the bare SDK loop at the same setting.
Target: >= 0.9. Peak RSS is of this whole process.

The simulator runs in its own process (loopback only), so it never shares this event loop.
Run from the repository root: ``python -m bench.runner [--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import polars as pl
import yaml

from ops.workspace_init import init_workspace
from registry import NewVariant, Registry, load_workspace, utcnow
from registry.db import registered
from shadow.providers import ProviderPool
from shadow.runner import RunFilters, ShadowRunner

SLOT = "support-triage"
SKILL = "Classify the customer's ticket as billing, technical, account, shipping or other."
TICKETS = [
    json.loads(line)["input"]
    for line in (Path(__file__).resolve().parent.parent / "examples" / "demo" / "tickets.jsonl").read_text().splitlines()
    if line.strip()
]
SIMULATOR = {
    "seed": 1,
    "models": {
        "bench-instant": {"output_tokens": 16},
        "bench-500ms": {"output_tokens": 16, "latency": {"base_ms": 500}},
    },
}
LATENCY_S = 0.5
LITTLE_IN_FLIGHT = 200


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per overhead round (default: %(default)s)")
    parser.add_argument("--little-calls", type=int, default=4000, help="calls of the Little's-law section")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the overhead section")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight in the overhead section")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shadowzoo-bench-") as tmp:
        base_url, simulator = start_simulator(Path(tmp))
        try:
            figures = asyncio.run(measure(Path(tmp), base_url, args))
        finally:
            simulator.terminate()
            simulator.wait(timeout=10)
    print(json.dumps(figures, indent=2))


def start_simulator(tmp: Path) -> tuple[str, subprocess.Popen[str]]:
    """`python -m shadow.simulator` on a free loopback port; returns its base URL once it listens."""
    config = tmp / "simulator.yaml"
    config.write_text(yaml.safe_dump(SIMULATOR))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "shadow.simulator", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE, text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if "listening" not in line:
        process.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return f"http://127.0.0.1:{port}/v1", process


async def measure(tmp: Path, base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    registry = open_workspace(tmp / "ws", base_url)
    try:
        instant = register(registry, "instant", "bench-instant")
        slow = register(registry, "slow", "bench-500ms")
        overhead = await overhead_section(registry, base_url, instant, args)
        little = await littles_law_section(registry, base_url, slow, args.little_calls)
    finally:
        registry.close()
    return {"overhead": overhead, "littles_law": little, "env": {"python": sys.version.split()[0], "cpus": os.cpu_count()}}


async def overhead_section(registry: Registry, base_url: str, version_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """Alternating rounds of the bare SDK loop and the runner; medians of each."""
    await bare_loop(base_url, "bench-instant", 200, args.concurrency)
    await runner_round(registry, version_id, 200, args.concurrency)
    bare, runner = [], []
    for _ in range(args.rounds):
        bare.append(await bare_loop(base_url, "bench-instant", args.calls, args.concurrency))
        runner.append((await runner_round(registry, version_id, args.calls, args.concurrency))["calls_per_s"])
    ratio = statistics.median(runner) / statistics.median(bare)
    return {
        "calls_per_round": args.calls, "rounds": args.rounds, "concurrency": args.concurrency,
        "bare_sdk_calls_per_s": round(statistics.median(bare), 1),
        "runner_calls_per_s": round(statistics.median(runner), 1),
        "ratio": round(ratio, 3), "target": 0.8, "met": ratio >= 0.8,
        "rounds_bare": [round(x, 1) for x in bare], "rounds_runner": [round(x, 1) for x in runner],
    }


async def littles_law_section(registry: Registry, base_url: str, version_id: str, calls: int) -> dict[str, Any]:
    bound = LITTLE_IN_FLIGHT / LATENCY_S
    measured = await runner_round(registry, version_id, calls, LITTLE_IN_FLIGHT)
    bare = await bare_loop(base_url, "bench-500ms", calls, LITTLE_IN_FLIGHT)
    steady = measured["steady_calls_per_s"]
    latency_bound = LITTLE_IN_FLIGHT / (measured["mean_latency_ms"] / 1000)
    return {
        "calls": calls, "in_flight": LITTLE_IN_FLIGHT, "upstream_latency_s": LATENCY_S,
        "bound_calls_per_s": bound,
        "achieved_calls_per_s": round(measured["calls_per_s"], 1),
        "fraction_of_bound": round(measured["calls_per_s"] / bound, 3),
        "steady_calls_per_s": round(steady, 1),
        "steady_fraction_of_bound": round(steady / bound, 3),
        "measured_call_latency_ms": round(measured["mean_latency_ms"], 1),
        "steady_fraction_of_measured_latency_bound": round(steady / latency_bound, 3),
        "bare_sdk_fraction_of_bound": round(bare / bound, 3),
        "target": 0.9, "met": steady / bound >= 0.9,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


async def bare_loop(base_url: str, model: str, calls: int, concurrency: int) -> float:
    """Calls/s of plain `chat.completions.create` calls, `concurrency` at a time."""
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="bench", max_retries=0, timeout=30, http_client=openai.DefaultAioHttpClient()
    )
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await client.chat.completions.create(model=model, messages=messages(i), max_tokens=16)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - started)
    finally:
        await client.close()


async def runner_round(registry: Registry, version_id: str, calls: int, concurrency: int) -> dict[str, float]:
    """One `run_once` over `calls` fresh traffic rows for one challenger: its rates and measured latency."""
    since = add_traffic(registry, calls)
    provider = registry.workspace.config.providers["sim"].model_copy(update={"max_concurrency": concurrency})
    runner = ShadowRunner(registry, ProviderPool({"sim": provider}), max_in_flight=max(512, 2 * concurrency))
    samples: list[tuple[float, int]] = []
    async with runner:
        started = time.perf_counter()
        report = await runner.run_once(  # the bench's traffic has no champion: it measures calls, not evidence
            RunFilters(slot=SLOT, since=since, version=version_id, include_old=True),
            progress=lambda r: samples.append((time.perf_counter(), r.done)),
        )
        elapsed = time.perf_counter() - started
    if report.ok != calls:
        raise SystemExit(f"runner round answered {report.ok} of {calls}: {report.summary()}")
    return {"calls_per_s": calls / elapsed, "steady_calls_per_s": steady_rate(samples, started, started + elapsed),
            "mean_latency_ms": mean_latency_ms(registry, version_id, since)}


def steady_rate(samples: list[tuple[float, int]], started: float, ended: float) -> float:
    """Completions per second between the first progress report after 1 s and the last one 1 s before the end."""
    window = [(at, done) for at, done in samples if started + 1 <= at <= ended - 1]
    if len(window) < 2:
        return float("nan")
    (first_at, first_done), (last_at, last_done) = window[0], window[-1]
    return (last_done - first_done) / (last_at - first_at)


def mean_latency_ms(registry: Registry, version_id: str, since: datetime) -> float:
    with registry.database.reading() as db:
        return db.execute(
            "SELECT avg(s.latency_ms) FROM shadow_results s JOIN traffic t USING (request_id) "
            "WHERE s.version_id = ? AND t.received_at >= ?",
            [version_id, since],
        ).fetchone()[0]


def open_workspace(root: Path, base_url: str) -> Registry:
    init_workspace(root)
    path = root / "shadowzoo.yaml"
    config = yaml.safe_load(path.read_text())
    config["providers"]["sim"] = {"base_url": base_url, "timeout_s": 30}
    config["slots"][SLOT]["shadow"] = {"daily_budget_usd": 1000}
    path.write_text(yaml.safe_dump(config))
    return Registry.open(load_workspace(root))


def register(registry: Registry, label: str, model: str) -> str:
    config = {"kind": "chat", "provider": "sim", "model": model, "params": {"max_tokens": 16}}
    new = NewVariant(slot=SLOT, label=label, kind="chat", config=config, skill_text=SKILL)
    return registry.register(new).variant.version_id


_next_request = 0


def add_traffic(registry: Registry, count: int) -> datetime:
    """`count` new captured requests, each a ticket as a client would send it; returns the first one's time."""
    global _next_request
    first, _next_request = _next_request, _next_request + count
    base = datetime(2026, 1, 1) + timedelta(milliseconds=first)
    frame = pl.DataFrame({
        "request_id": [f"szr_bench_{i:07d}" for i in range(first, first + count)],
        "received_at": [base + timedelta(milliseconds=i) for i in range(count)],
        "request_json": [json.dumps({"model": SLOT, "messages": messages(i)[1:]}) for i in range(first, first + count)],
    })
    with registry.database.transaction() as db, registered(db, "new_traffic", frame):
        db.execute(
            "INSERT INTO traffic (request_id, slot, received_at, request_json, source, ingested_at) "
            "SELECT request_id, ?, received_at, request_json, 'gateway', ? FROM new_traffic",
            [SLOT, utcnow()],
        )
    return base


def messages(i: int) -> list[dict[str, str]]:
    """What the runner sends for request `i`: the skill, then the client's message."""
    return [{"role": "system", "content": SKILL}, {"role": "user", "content": TICKETS[i % len(TICKETS)]}]


if __name__ == "__main__":
    main()
