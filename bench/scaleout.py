"""Runner scale-out (backend: distributed): pairs replayed per second by 1, 2 and 4 runner workers.

Prints one JSON object. One PostgreSQL, one S3 server (`weed mini`) and the demo workspace on
DuckLake; the simulator answers every call after a fixed `--latency-ms` (no jitter, no
injected errors, no rate limits). For each N in `--workers`, `--requests` fresh requests are
ingested (four challengers: four pairs each) and N `RunnerWorker`s, each with
`--in-flight` calls at most, replay them at once, sharing the work by replay batches under
leases; X(N) is the pairs written per second from the first worker's start to the last one's
end (planning, claims and fenced writes included). Scaling efficiency S(N) = X(N) / (N·X(1)),
all measured in this one run; the bound `in_flight / latency` per worker (Little's law) is
printed beside X(1).

The N workers run in this one process over one open registry, each with its own lease, ledger
and heartbeat connections: their DuckDB reads and writes share one connection and its lock, and
the simulator runs in a thread of this process, so the figures are a lower bound on separate hosts.

Run from the repository root: ``.venv/bin/python -m bench.scaleout [--requests 100] [--workers 1 2 4] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path

from bench.harness.figures import emit, round3
from bench.harness.servers import scratch_dir
from registry import Registry, load_workspace
from shadow.runner_worker import RunnerWorker
from tests.engines import PostgresServer, S3Server, distributed_section, wheel_extension_directory
from tests.servers import champion_workspace, ingest_answered, start_steady_simulator

BLOCK_SEQS = 25
"""Requests per replay batch: 100 requests make 16 batches of 25 pairs, enough for 4 workers holding 2 each."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="Requests per measured round (4 pairs each).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--in-flight", type=int, default=8, help="Calls in flight per worker.")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    args = parser.parse_args()
    scratch = scratch_dir("scaleout-")
    try:
        emit(run(scratch, args))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run(scratch: Path, args: argparse.Namespace) -> dict:
    """Start the engines and the simulator; measure one round per worker count."""
    with contextlib.ExitStack() as stack:
        postgres = PostgresServer()
        stack.callback(postgres.close)
        store = S3Server(scratch / "s3")
        stack.callback(store.stop)
        simulator = start_steady_simulator(args.latency_ms)
        stack.callback(simulator.stop)
        os.environ.update({**store.credentials_env, "SIM_API_KEY": "sim"})
        section = distributed_section(postgres, store, wheel_extension_directory(scratch / "extensions"))
        workspace_dir = champion_workspace(scratch / "ws", simulator.base_url,
                                           settings={"backend": "distributed", "distributed": section})
        rounds = {}
        for workers in args.workers:
            pairs = ingest_answered(workspace_dir, f"n{workers}", args.requests)
            rounds[workers] = asyncio.run(_round(workspace_dir, workers, args.in_flight)) | {"pairs": len(pairs)}
    return _figures(rounds, args)


async def _round(workspace_dir: Path, workers: int, in_flight: int) -> dict:
    """N workers replaying the pending pairs at once: pairs written, seconds, and each worker's share."""
    with Registry.open(load_workspace(workspace_dir)) as registry:
        async with contextlib.AsyncExitStack() as stack:
            running = [await stack.enter_async_context(RunnerWorker(registry, f"bench/{n}", max_in_flight=in_flight))
                       for n in range(workers)]
            for worker in running:
                worker.runner.work.block_seqs = BLOCK_SEQS
            started = time.perf_counter()
            reports = await asyncio.gather(*(worker.runner.run_once() for worker in running))
            elapsed = time.perf_counter() - started
    done = sum(report.done for report in reports)
    return {"written": done, "seconds": round3(elapsed), "pairs_per_s": done / elapsed,
            "shares": [report.done for report in reports]}


def _figures(rounds: dict[int, dict], args: argparse.Namespace) -> dict:
    base = rounds[min(rounds)]["pairs_per_s"] / min(rounds)
    return {
        "bench": "scaleout",
        "latency_ms": args.latency_ms,
        "in_flight_per_worker": args.in_flight,
        "littles_law_bound_per_worker": round3(args.in_flight / (args.latency_ms / 1000)),
        "rounds": {str(n): {**r, "pairs_per_s": round3(r["pairs_per_s"])} for n, r in rounds.items()},
        "efficiency": {str(n): round3(r["pairs_per_s"] / (n * base)) for n, r in rounds.items()},
        "placement": "one process: the workers share one DuckDB connection",
    }


if __name__ == "__main__":
    main()
