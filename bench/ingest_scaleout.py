"""Ingest scale-out (backend: distributed): rows stored per second by 1 and 2 ingest workers.

Prints one JSON object. One PostgreSQL and one S3 server (`weed mini`). For each N in
`--workers` a fresh lake (its own PostgreSQL database and bucket prefix, so every round
starts from an empty lake) receives `--records` captures (`bench/ingest.py`'s ~1 KB chat
captures, 2 % of them labels), written as spool segments of `--per-segment` lines on one
gateway host and shipped to the bucket by the gateway's own shipper (`shadow.shipper`).
Then N ingest worker processes, each with its own state dir and its own DuckDB connection
to the lake, take the shipped segments by leases in PostgreSQL as the daemon's ingest job
does (`shadow.spool_source.leased_spool`, `shadow.ingest.ingest_from`, the daemon's DuckDB
limits), all started together once all are ready. T(N) is the rows stored (traffic and
outcomes) per second by N workers, from the first worker's start to the last one's end;
scaling efficiency T(N) / (N·T(1)), all in this one run. Each worker also reports its CPU
seconds (all its threads): rows per CPU-second hardly depends on other load on the machine, so
`cpu_per_row_vs_one_worker` shows what sharing costs (lease round trips, commits the lake
refused for a conflict with the other worker and that were done again, `commit_retries`). Every round checks that
the lake holds each capture once.

On two shared cores the workers compete for CPU (and with PostgreSQL and weed) as separate
hosts would not, so the figures are a lower bound.

Run from the repository root: ``.venv/bin/python -m bench.ingest_scaleout [--records 60000] [--workers 1 2] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import sys
import time
from pathlib import Path

from bench.harness import BenchError
from bench.harness.engines import Engines, start_engines
from bench.harness.figures import ratio, round3
from bench.harness.servers import run_in_scratch
from bench.harness.workers import run_together, span, wait_for_go, write_figures
from bench.ingest import write_spool
from bench.scorer import workspace
from registry import Registry, load_workspace
from shadow.ingest import ingest_from
from shadow.shipper import workspace_shipper
from shadow.spool import spool_dir
from shadow.spool_source import leased_spool

GATEWAY_HOST = "bench-gw"


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=60_000, help="Captures per round (~1 KB each).")
    parser.add_argument("--per-segment", type=int, default=1000, help="Lines per spool segment.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=7)
    run_in_scratch(parser, "ingest-scaleout-", run)


def run(scratch: Path, args: argparse.Namespace) -> dict:
    """Start the engines; one round per worker count, each on a fresh lake."""
    with contextlib.ExitStack() as stack:
        engines = start_engines(stack, scratch)
        rounds = {workers: _round(engines, scratch / f"n{workers}", workers, args) for workers in args.workers}
    return _figures(rounds, args)


def _round(engines: Engines, root: Path, workers: int, args: argparse.Namespace) -> dict:
    """Ship a fresh spool to a fresh lake, then let N ingest workers take it at once."""
    section = engines.section(host=GATEWAY_HOST, lake=f"ingest{workers}")
    gateway_dir = workspace(root / "gateway", {"backend": "distributed", "distributed": section})
    lines = _ship(gateway_dir, args.records, args.per_segment, random.Random(args.seed + workers))
    with Registry.open(load_workspace(gateway_dir)):
        pass  # the lake's tables made once, before the workers race to make them
    worker_dirs = [workspace(root / f"worker-{n}", {"backend": "distributed", "distributed": section})
                   for n in range(workers)]
    runs = run_together("bench.ingest_scaleout", [[str(path), f"ingest/{workers}/{n}"]
                                                  for n, path in enumerate(worker_dirs)], root, str(workers))
    stored = _stored(gateway_dir)
    rows = sum(run["rows"] for run in runs)
    if stored["traffic"] + stored["outcomes"] != rows or rows > lines or rows < 0.98 * lines:
        raise BenchError(f"{lines} captures shipped, {rows} stored by the workers, the lake holds {stored}")
    elapsed, cpu = span(runs), sum(run["cpu_s"] for run in runs)
    return {"rows": rows, "seconds": round3(elapsed), "rows_per_s": rows / elapsed,
            "rows_per_s_per_worker": rows / elapsed / workers, "rows_per_cpu_s": rows / cpu,
            "segments": [run["segments"] for run in runs], "shares": [run["rows"] for run in runs],
            "commit_retries": {kind: sum(run["commit_retries"][kind] for run in runs) for kind in ("append", "delete")},
            "lake": stored}


def _ship(gateway_dir: Path, records: int, per_segment: int, rng: random.Random) -> int:
    """Write the captures as the gateway host's spool segments and ship them all; the lines written."""
    settings = load_workspace(gateway_dir)
    lines = write_spool(spool_dir(settings.state_dir), records, per_segment, rng)
    shipper = workspace_shipper(settings.config.distributed, settings.state_dir)
    for _ in range(records // per_segment + 2):  # bounded: each pass ships up to 64 segments
        if shipper.ship_ready() == 0:
            return lines
    raise BenchError("the shipper did not ship the whole spool")


def _stored(workspace_dir: Path) -> dict[str, int]:
    """Rows and distinct keys in the lake, to check each capture is stored once."""
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        traffic, distinct = db.execute("SELECT count(*), count(DISTINCT request_id) FROM traffic").fetchone()
        outcomes = db.execute("SELECT count(*) FROM outcomes").fetchone()[0]
    if traffic != distinct:
        raise BenchError(f"{traffic - distinct} captures stored twice")
    return {"traffic": traffic, "outcomes": outcomes}


def _worker(workspace_dir: str, holder: str, go: str, output: str) -> None:
    """One ingest worker process, as the daemon's ingest job: open the registry with the daemon's
    DuckDB limits, wait for `go`, ingest what the bucket holds, write its figures (with its CPU
    seconds, and the commits the lake refused for a conflict with the other worker and were done again)."""
    workspace_ = load_workspace(Path(workspace_dir))
    daemon = workspace_.config.daemon
    retries = CommitRetries()
    logging.getLogger("shadowzoo.db").addHandler(retries)
    logging.getLogger("shadowzoo.db").setLevel(logging.INFO)
    with Registry.open(workspace_) as registry:
        registry.database.limit(daemon.duckdb_threads, daemon.duckdb_memory_limit)
        source = leased_spool(workspace_.config.distributed, workspace_.state_dir / "inbox", holder)
        try:
            wait_for_go(go, output)
            started, cpu_started = time.time(), time.process_time()
            report = ingest_from(registry.database, source)
            ended, cpu = time.time(), time.process_time() - cpu_started
        finally:
            source.close()
    write_figures(output, {"rows": report.traffic_rows + report.outcome_rows, "segments": report.segments,
                           "started": started, "ended": ended, "cpu_s": cpu, "commit_retries": retries.count})


class CommitRetries(logging.Handler):
    """Counts the commits the lake refused for a conflict (`Database.committed` logs each one), by
    what was refused: an append (a batch's rows, done again whole) or a delete (an update: joining
    outcomes to their traffic)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = {"append": 0, "delete": 0}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "refused a commit" in message:
            self.count["append" if "attempting to insert" in message else "delete"] += 1


def _figures(rounds: dict[int, dict], args: argparse.Namespace) -> dict:
    base = min(rounds)
    one = rounds[base]["rows_per_s"] / base
    return {
        "bench": "ingest_scaleout",
        "records_per_round": args.records,
        "lines_per_segment": args.per_segment,
        "rounds": {str(n): {**r, **{key: round3(r[key]) for key in ("rows_per_s", "rows_per_s_per_worker", "rows_per_cpu_s")}}
                   for n, r in rounds.items()},
        "rows_per_s": {f"T({n})": round3(r["rows_per_s"]) for n, r in rounds.items()},
        "efficiency": {f"T({n})/({n}*T({base}))": ratio(r["rows_per_s"], n * one) for n, r in rounds.items()},
        "cpu_per_row_vs_one_worker": {str(n): ratio(rounds[base]["rows_per_cpu_s"], r["rows_per_cpu_s"])
                                   for n, r in rounds.items()},
        "placement": "one process per worker, all on this machine's cores, beside PostgreSQL and weed",
    }


if __name__ == "__main__":
    main()
