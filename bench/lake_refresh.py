"""Refresh lake vs embedded: the scorer's incremental refresh after 100k new shadow results, on
DuckLake (catalog in PostgreSQL, data in `weed mini`) against one embedded DuckDB file.

Prints one JSON object. The history is `bench/scorer.py`'s (one slot, a champion and five
challengers, `--requests` labelled requests, so 5·N shadow results, built in SQL by its bulk
loader), built the same way on each backend, then scored once (the first refresh, also
timed: every pair is computed). Then, `--runs` times, `--incremental` new shadow results are
added and one refresh is timed: on the embedded backend the refresh reads the rows past its
change counter, on the lake it reads DuckLake's change feed since its snapshot. Each time is
the best of the runs (the machine is shared), with the daemon's DuckDB limits on both. The
figure is the ratio lake / embedded of the incremental refresh; the first refresh's ratio is
given beside it.

`--requests 2000000` is the issue's 10 M shadow results; the default is smaller so that the
bench runs in a few minutes on two cores (building the lake writes every row to the object
store through httpfs): see bench/README.md for the sizes measured.

Run from the repository root: ``.venv/bin/python -m bench.lake_refresh [--requests 200000] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path

from bench.harness.engines import start_engines
from bench.harness.figures import ratio, round3
from bench.harness.servers import run_in_scratch
from bench.scorer import CHALLENGERS, SHAPES, SLOT, generate, register, timed, workspace
from registry import Registry, load_workspace
from scorer.service import Scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000, help="Labelled requests (5 shadow results each).")
    parser.add_argument("--incremental", type=int, default=100_000, help="New shadow results before each timed refresh.")
    parser.add_argument("--runs", type=int, default=3, help="Timed refreshes per backend (the best is reported).")
    parser.add_argument("--shape", choices=SHAPES, default="realistic")
    run_in_scratch(parser, "lake-refresh-", run)


def run(scratch: Path, args: argparse.Namespace) -> dict:
    """The same history and the same refreshes on the embedded file, then on the lake."""
    embedded = _measure(workspace(scratch / "embedded"), args)
    with contextlib.ExitStack() as stack:
        engines = start_engines(stack, scratch)
        lake = _measure(workspace(scratch / "lake", {"backend": "distributed", "distributed": engines.section()}), args)
    return {
        "bench": "lake_refresh",
        "shape": args.shape,
        "shadow_results": args.requests * CHALLENGERS,
        "incremental_results": args.incremental,
        "embedded": embedded,
        "lake": lake,
        "incremental_refresh_lake_vs_embedded": ratio(lake["incremental_refresh_s"], embedded["incremental_refresh_s"]),
        "first_refresh_lake_vs_embedded": ratio(lake["first_refresh_s"], embedded["first_refresh_s"]),
    }


def _measure(workspace_dir: Path, args: argparse.Namespace) -> dict:
    """Build the history, score it once, then time `--runs` refreshes each after `--incremental` new results."""
    with Registry.open(load_workspace(workspace_dir)) as registry:
        daemon = registry.workspace.config.daemon  # the scorer runs inside the daemon, with its DuckDB limits
        registry.database.limit(daemon.duckdb_threads, daemon.duckdb_memory_limit)
        champion, challengers = register(registry)
        started = time.perf_counter()
        generate(registry, champion, challengers, 0, args.requests, args.shape)
        build_s = time.perf_counter() - started
        scorer = Scorer(registry.workspace, registry)
        first_s = timed(lambda: scorer.refresh(SLOT))
        added = args.incremental // CHALLENGERS
        refreshes = []
        for start in range(args.requests, args.requests + args.runs * added, added):
            generate(registry, champion, challengers, start, added, args.shape)
            refreshes.append(timed(lambda: scorer.refresh(SLOT)))
        board = scorer.refresh(SLOT)
    pairs = sum(row.comparison.pairs for row in board.rows if row.comparison)
    return {"build_s": round3(build_s), "first_refresh_s": round3(first_s), "incremental_refresh_s": round3(min(refreshes)),
            "incremental_refresh_each_s": [round3(seconds) for seconds in refreshes], "pairs_after": pairs}


if __name__ == "__main__":
    main()
