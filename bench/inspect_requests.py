"""Inspection benchmark: tracing one request and browsing a slot's requests over millions of shadow results.

The data are `bench/scorer.py`'s (one slot, a champion and five challengers, N labelled
requests, so 5·N shadow results, scored once so that `paired` holds every pair). Every
figure is a ratio to one indexed point lookup in the same run (`SELECT * FROM traffic
WHERE request_id = ?`), and is also given in seconds; each is the median of `--runs`
runs (traces of different requests), with the daemon's DuckDB limits:

- trace: `trace_request` of a request picked at random (scored answers, metrics, labels,
  pairs, period);
- newest: the first page of the slot's requests, newest first;
- disagree / disagree_next: the first and the sixth page of a challenger's disagreements;
- errors: the first page of a challenger's errors, when it has none (the page looks for the
  newest error first: with none, the statuses' min and max rule out every row group);
- worst / worst_next: the first and the sixth page of a challenger's biggest losses.

Target (issue 15): trace and browse answer within 50 ms at 10 M shadow results.
Named `inspect_requests.py`, not `inspect.py`: a file `inspect.py` next to a script run
as `python bench/…` would stand in for the standard library's module.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scorer import SLOT, generate, register, workspace  # noqa: E402
from registry import Registry, load_workspace  # noqa: E402
from scorer.browse import RequestFilter, browse_requests  # noqa: E402
from scorer.service import Scorer  # noqa: E402
from scorer.trace import trace_request  # noqa: E402

PAGES = 5
"""The `_next` figures time the page after this many (the sixth)."""


def median_s(action: Callable[[int], object], runs: int) -> float:
    """The median time of `action(run)` over `runs` runs."""
    times = []
    for run in range(runs):
        started = time.perf_counter()
        action(run)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def page(registry: Registry, request: RequestFilter, pages: int = 0) -> RequestFilter:
    """The filter of the page after `pages` pages of `request`."""
    with registry.database.reading() as db:
        for _ in range(pages):
            request = request.model_copy(update={"cursor": browse_requests(db, request, True).next_cursor})
    return request


def browse(registry: Registry, request: RequestFilter) -> Callable[[int], object]:
    def action(run: int) -> object:
        with registry.database.reading() as db:
            return browse_requests(db, request, True)
    return action


def run(requests: int, runs: int, shape: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry.open(load_workspace(workspace(Path(tmp))))
        daemon = registry.workspace.config.daemon
        registry.database.limit(daemon.duckdb_threads, daemon.duckdb_memory_limit)
        champion, challengers = register(registry)
        started = time.perf_counter()
        generate(registry, champion, challengers, 0, requests, shape)
        Scorer(registry.workspace, registry).refresh(SLOT)
        setup_s = time.perf_counter() - started
        with registry.database.reading() as db:
            ids = [row[0] for row in db.execute(f"SELECT request_id FROM traffic USING SAMPLE {runs * 2} ROWS").fetchall()]
        rng = random.Random(7)
        picks = [rng.choice(ids) for _ in range(runs)]

        def lookup(run: int) -> object:
            with registry.database.reading() as db:
                return db.execute("SELECT * FROM traffic WHERE request_id = ?", [picks[run]]).fetchall()

        lookup(0)
        baseline = median_s(lookup, runs)
        loser = challengers[0]
        cases = {
            "trace": lambda run: trace_request(registry, picks[run]),
            "newest": browse(registry, RequestFilter(slot=SLOT)),
            "disagree": browse(registry, RequestFilter(slot=SLOT, disagree=loser)),
            "disagree_next": browse(registry, page(registry, RequestFilter(slot=SLOT, disagree=loser), PAGES)),
            "errors": browse(registry, RequestFilter(slot=SLOT, version=loser, errors=True)),
            "worst": browse(registry, RequestFilter(slot=SLOT, worst=loser)),
            "worst_next": browse(registry, page(registry, RequestFilter(slot=SLOT, worst=loser), PAGES)),
        }
        figures = {name: median_s(action, runs) for name, action in cases.items()}
        registry.close()
    return {
        "shadow_results": requests * 5,
        "setup_s": round(setup_s, 1),
        "point_lookup_s": round(baseline, 5),
        "seconds": {name: round(value, 4) for name, value in figures.items()},
        "vs_point_lookup": {name: round(value / baseline, 1) for name, value in figures.items()},
        "within_50_ms": {name: value <= 0.05 for name, value in figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2_000_000, help="labelled requests (5 shadow results each)")
    parser.add_argument("--runs", type=int, default=15, help="runs per figure (the median is reported)")
    parser.add_argument("--shape", choices=("realistic", "labels"), default="realistic")
    args = parser.parse_args()
    print(json.dumps({"shape": args.shape, "target": "trace and browse within 50 ms at 10 M shadow results",
                      "figures": run(args.requests, args.runs, args.shape)}, indent=2))


if __name__ == "__main__":
    main()
