"""Runner scale-out (backend: distributed): pairs replayed per second by 1, 2 and 4 runner workers.

Prints one JSON object. One PostgreSQL, one S3 server (`weed mini`); the simulator answers
every call after a fixed `--latency-ms` (no jitter, no injected errors, no rate limits).

Weak scaling: every worker gets the same amount of work. For each N in `--workers`, a fresh
lake (its own PostgreSQL database and bucket prefix, so no round reads what an earlier one
wrote) holds the demo workspace and N × `--requests` fresh requests answered by the champion
(four challengers: four pairs each). Then N `RunnerWorker` processes (one a host, each with
`--in-flight` calls at most), started together once all are ready, each run one pass
(`ShadowRunner.run_once`) as the daemon does: plan, offer and claim replay batches under
leases (the product's `BLOCK_SEQS` requests a batch), call, and write each batch under its
fence. X(N) is the pairs written (committed to the lake) per second from the first worker's
start to the last one's end: planning, first lake reads, claims, the calls and every fenced
write are inside the window; opening the registry and the connections is not. S(N) = X(N) /
(N·X(1)), all measured in this one run; the bound `in_flight / latency` per worker (Little's
law) is printed beside it. Every round checks that the lake holds each pair once.

CPU. Each worker reports its CPU seconds (all its threads), and the benchmark its own over
the round (the simulator's thread, all it does meanwhile): `worker_cpu_ms_per_pair` and
`simulator_cpu_ms_per_pair`. On two shared cores the workers, the simulator, PostgreSQL and
weed compete for CPU as separate hosts would not: once N workers need more CPU than the
machine has free, X(N) measures the machine, not the leases; the CPU per pair (flat in N when
sharing adds no work) and `load_average` (at the round's start and end) say which it is.

Round length. A batch is 64 requests (256 pairs), about 6 s of one worker's calls; the last
batches of a round leave the other workers idle, so a round of a few batches per worker measures
that tail. With 300 requests per worker (1200 pairs, about 30 s) the tail is a small part.

Run from the repository root: ``.venv/bin/python -m bench.scaleout [--requests 300] [--workers 1 2 4] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

from bench.harness import BenchError
from bench.harness.engines import Engines, start_engines
from bench.harness.figures import round3
from bench.harness.servers import run_in_scratch
from bench.harness.workers import run_together, span, wait_for_go, write_figures
from registry import Registry, load_workspace
from shadow.runner_worker import RunnerWorker
from tests.servers import champion_workspace, ingest_answered, start_steady_simulator


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker(*sys.argv[2:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="Requests per worker in each round (4 pairs each).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--in-flight", type=int, default=8, help="Calls in flight per worker.")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    run_in_scratch(parser, "scaleout-", run)


def run(scratch: Path, args: argparse.Namespace) -> dict:
    """Start the engines and the simulator; measure one round per worker count, each on a fresh lake."""
    with contextlib.ExitStack() as stack:
        engines = start_engines(stack, scratch)
        simulator = start_steady_simulator(args.latency_ms)
        stack.callback(simulator.stop)
        rounds = {workers: _round(engines, simulator.base_url, scratch / f"n{workers}", workers, args)
                  for workers in args.workers}
    return _figures(rounds, args)


def _round(engines: Engines, simulator_url: str, root: Path, workers: int, args: argparse.Namespace) -> dict:
    """N worker processes replaying N × `requests` pending requests at once, started together once all
    are ready: pairs written, seconds from the first start to the last end, each worker's share, CPU."""
    section = engines.section(lake=f"runners{workers}")
    workspace_dir = champion_workspace(root / "ws", simulator_url,
                                       settings={"backend": "distributed", "distributed": section})
    pairs = ingest_answered(workspace_dir, f"n{workers}", workers * args.requests)
    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    runs = run_together("bench.scaleout", [[str(workspace_dir), f"bench/{workers}/{n}", str(args.in_flight)]
                                           for n in range(workers)], root, str(workers))
    simulator_cpu, load_after = time.process_time() - cpu_before, os.getloadavg()[0]
    done = sum(run["done"] for run in runs)
    _check_once(workspace_dir, pairs, done)
    elapsed = span(runs)
    return {"pairs": len(pairs), "written": done, "seconds": round3(elapsed), "pairs_per_s": done / elapsed,
            "shares": [run["done"] for run in runs],
            "worker_cpu_ms_per_pair": round3(1000 * sum(run["cpu_s"] for run in runs) / done),
            "simulator_cpu_ms_per_pair": round3(1000 * simulator_cpu / done),
            "load_average": [round(load_before, 1), round(load_after, 1)]}


def _check_once(workspace_dir: Path, pairs: set[tuple[str, str]], done: int) -> None:
    """Every pending pair written, once (a BenchError otherwise)."""
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        rows, distinct = db.execute("SELECT count(*), count(DISTINCT (request_id, version_id)) "
                                    "FROM shadow_results WHERE status = 'ok'").fetchone()
    if not rows == distinct == done == len(pairs):
        raise BenchError(f"{len(pairs)} pairs pending, {done} written by the workers, the lake holds {rows} "
                         f"ok results of {distinct} pairs")


def _worker(workspace_dir: str, holder: str, in_flight: str, go: str, output: str) -> None:
    """One runner worker process: open the registry, say it is ready, wait for `go`, run one pass,
    write its figures (with its CPU seconds, all threads)."""

    async def run() -> dict:
        with Registry.open(load_workspace(Path(workspace_dir))) as registry:
            async with RunnerWorker(registry, holder, max_in_flight=int(in_flight)) as worker:
                await asyncio.to_thread(wait_for_go, go, output)
                started, cpu_started = time.time(), time.process_time()
                report = await worker.runner.run_once()
                return {"done": report.done, "started": started, "ended": time.time(),
                        "cpu_s": time.process_time() - cpu_started}

    write_figures(output, asyncio.run(run()))


def _figures(rounds: dict[int, dict], args: argparse.Namespace) -> dict:
    base = rounds[min(rounds)]["pairs_per_s"] / min(rounds)
    return {
        "bench": "scaleout",
        "latency_ms": args.latency_ms,
        "requests_per_worker": args.requests,
        "in_flight_per_worker": args.in_flight,
        "littles_law_bound_per_worker": round3(args.in_flight / (args.latency_ms / 1000)),
        "rounds": {str(n): {**r, "pairs_per_s": round3(r["pairs_per_s"])} for n, r in rounds.items()},
        "efficiency": {str(n): round3(r["pairs_per_s"] / (n * base)) for n, r in rounds.items()},
        "placement": "one process per worker, all on this machine's cores, beside the simulator, PostgreSQL and weed",
    }


if __name__ == "__main__":
    main()
