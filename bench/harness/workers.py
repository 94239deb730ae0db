"""Worker processes of a scale-out benchmark, each a host of its own, started together.

The benchmark runs its own module again as `python -m <module> --worker ARGS… GO OUTPUT`
once per worker (`run_together`); each worker opens what it needs, says it is ready
(`OUTPUT.ready`), waits for the `GO` file (`wait_for_go`), does its work and writes its
figures as JSON to OUTPUT. So the measured interval starts when all are ready, not while
the slowest is still importing and connecting.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import BenchError

WAIT_LIMIT_S = 300.0


def run_together(module: str, arguments: list[list[str]], scratch: Path, tag: str) -> list[dict]:
    """Start one `module --worker` process per argument list, let them all go at once when all are
    ready, and return each one's figures (in order); every process is killed if any fails."""
    go = scratch / f"go-{tag}"
    outputs = [scratch / f"worker-{tag}-{number}.json" for number in range(len(arguments))]
    processes = [subprocess.Popen([sys.executable, "-m", module, "--worker", *args, str(go), str(output)])
                 for args, output in zip(arguments, outputs)]
    try:
        wait_for(lambda: all(output.with_suffix(".ready").exists() for output in outputs)
                 or any(process.poll() for process in processes), f"{tag} workers ready")
        go.touch()
        for process in processes:
            if process.wait(timeout=WAIT_LIMIT_S) != 0:
                raise BenchError(f"a {module} worker failed (exit {process.returncode})")
    finally:
        for process in processes:
            process.kill()
            process.wait()
    return [json.loads(output.read_text()) for output in outputs]


def wait_for_go(go: str, output: str) -> None:
    """In a worker: say it is ready, then wait (bounded) until the benchmark says go."""
    Path(output).with_suffix(".ready").touch()
    wait_for(Path(go).exists, "the start")


def write_figures(output: str, figures: dict) -> None:
    """In a worker: hand its figures back."""
    Path(output).write_text(json.dumps(figures))


def wait_for(predicate: Callable[[], bool], what: str, limit_s: float = WAIT_LIMIT_S) -> None:
    """Poll `predicate` every 50 ms until it holds; a BenchError naming `what` after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"waited {limit_s:.0f} s for {what}")
        time.sleep(0.05)


def span(runs: list[dict]) -> float:
    """Seconds from the first worker's start to the last one's end (`started`, `ended` in each)."""
    return max(run["ended"] for run in runs) - min(run["started"] for run in runs)
