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

Each worker is a process of its own (a host), with its own DuckDB connection to the lake and its
own lease, ledger and heartbeat connections; all open the registry first, then start together.
The simulator runs in a thread of the benchmark's process. On two shared cores the workers
compete for CPU as separate hosts would not, so the figures are a lower bound.

Run from the repository root: ``.venv/bin/python -m bench.scaleout [--requests 100] [--workers 1 2 4] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

from bench.harness.engines import start_engines
from bench.harness.figures import round3
from bench.harness.servers import run_in_scratch
from bench.harness.workers import run_together, span, wait_for_go, write_figures
from registry import Registry, load_workspace
from shadow.runner_worker import RunnerWorker
from tests.servers import champion_workspace, ingest_answered, start_steady_simulator

BLOCK_SEQS = 25
"""Requests per replay batch: 100 requests make 16 batches of 25 pairs, enough for 4 workers holding 2 each."""


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="Requests per measured round (4 pairs each).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--in-flight", type=int, default=8, help="Calls in flight per worker.")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    run_in_scratch(parser, "scaleout-", run)


def run(scratch: Path, args: argparse.Namespace) -> dict:
    """Start the engines and the simulator; measure one round per worker count."""
    with contextlib.ExitStack() as stack:
        engines = start_engines(stack, scratch)
        simulator = start_steady_simulator(args.latency_ms)
        stack.callback(simulator.stop)
        workspace_dir = champion_workspace(scratch / "ws", simulator.base_url,
                                           settings={"backend": "distributed", "distributed": engines.section()})
        rounds = {}
        for workers in args.workers:
            pairs = ingest_answered(workspace_dir, f"n{workers}", args.requests)
            rounds[workers] = _round(workspace_dir, workers, args.in_flight, scratch) | {"pairs": len(pairs)}
    return _figures(rounds, args)


def _round(workspace_dir: Path, workers: int, in_flight: int, scratch: Path) -> dict:
    """N worker processes replaying the pending pairs at once, started together once all are ready:
    pairs written, seconds from the first start to the last end, and each worker's share."""
    runs = run_together("bench.scaleout", [[str(workspace_dir), f"bench/{workers}/{n}", str(in_flight)]
                                           for n in range(workers)], scratch, str(workers))
    done = sum(run["done"] for run in runs)
    elapsed = span(runs)
    return {"written": done, "seconds": round3(elapsed), "pairs_per_s": done / elapsed,
            "shares": [run["done"] for run in runs]}


def _worker(workspace_dir: str, holder: str, in_flight: str, go: str, output: str) -> None:
    """One runner worker process: open the registry, say it is ready, wait for `go`, run once, write its figures."""

    async def run() -> dict:
        with Registry.open(load_workspace(Path(workspace_dir))) as registry:
            async with RunnerWorker(registry, holder, max_in_flight=int(in_flight)) as worker:
                worker.runner.work.block_seqs = BLOCK_SEQS
                await asyncio.to_thread(wait_for_go, go, output)
                started = time.time()
                report = await worker.runner.run_once()
                return {"done": report.done, "started": started, "ended": time.time()}

    write_figures(output, asyncio.run(run()))


def _figures(rounds: dict[int, dict], args: argparse.Namespace) -> dict:
    base = rounds[min(rounds)]["pairs_per_s"] / min(rounds)
    return {
        "bench": "scaleout",
        "latency_ms": args.latency_ms,
        "in_flight_per_worker": args.in_flight,
        "littles_law_bound_per_worker": round3(args.in_flight / (args.latency_ms / 1000)),
        "rounds": {str(n): {**r, "pairs_per_s": round3(r["pairs_per_s"])} for n, r in rounds.items()},
        "efficiency": {str(n): round3(r["pairs_per_s"] / (n * base)) for n, r in rounds.items()},
        "placement": "one process per worker, all on this machine's cores",
    }


if __name__ == "__main__":
    main()
