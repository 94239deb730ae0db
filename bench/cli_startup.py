"""CLI start-up cost: `shadowzoo --help` and `shadowzoo variants list` against a minimal typer app.

Prints one JSON object. The baseline is a two-command typer app's `--help`, written to a
scratch directory and run with the same interpreter in the same run: what any typer CLI
costs to start and render help. Each figure is the median CPU time (user + system, from
`getrusage(RUSAGE_CHILDREN)` around each run, so the child's own threads count and other
load on the machine does not) of `--runs` runs, the three commands interleaved so drift
hits all of them alike; the ratios are what the issue's target (≤ 2×) is about.

`variants list` runs in a demo workspace made by `shadowzoo init` in a scratch directory,
its five specs registered, so it opens the database and prints a real table.

Run from the repository root: ``.venv/bin/python bench/cli_startup.py [--runs 15] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SCRATCH = Path("/tmp/shadowzoo-bench")
TARGET_RATIO = 2.0
SHADOWZOO = Path(sys.executable).parent / "shadowzoo"
MINIMAL_APP = '''
import typer

app = typer.Typer()


@app.command()
def hello(name: str) -> None:
    """Say hello."""
    print(f"hello {name}")


@app.command()
def goodbye(name: str) -> None:
    """Say goodbye."""
    print(f"goodbye {name}")


app()
'''


def cpu_seconds(argv: list[str], cwd: Path) -> float:
    """User + system CPU time of one run of `argv` (which must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, cwd=cwd, capture_output=True, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
                          timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode()[-500:]}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def demo_workspace(scratch: Path) -> Path:
    """A workspace from `shadowzoo init`, with its specs registered."""
    workspace = scratch / "ws"
    for argv in ([str(SHADOWZOO), "init", str(workspace)], [str(SHADOWZOO), "zoo", "register", "--all-active"]):
        subprocess.run(argv, cwd=scratch if argv[1] == "init" else workspace, check=True, capture_output=True,
                       timeout=120)
    return workspace


def measure(runs: int, scratch: Path) -> dict:
    app = scratch / "minimal_app.py"
    app.write_text(MINIMAL_APP)
    workspace = demo_workspace(scratch)
    cases = {
        "minimal_typer_help": ([sys.executable, str(app), "--help"], scratch),
        "help": ([str(SHADOWZOO), "--help"], scratch),
        "variants_list": ([str(SHADOWZOO), "variants", "list"], workspace),
    }
    for argv, cwd in cases.values():  # warm the file cache and byte-code
        cpu_seconds(argv, cwd)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, (argv, cwd) in cases.items():
            samples[name].append(cpu_seconds(argv, cwd))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["minimal_typer_help"]
    return {
        "runs": runs,
        "baseline": "a two-command typer app's --help, same interpreter",
        "cpu_s": {name: round(value, 4) for name, value in medians.items()},
        "ratio": {name: round(medians[name] / baseline, 2) for name in ("help", "variants_list")},
        "target_ratio": TARGET_RATIO,
        "within_target": {name: medians[name] / baseline <= TARGET_RATIO for name in ("help", "variants_list")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    args = parser.parse_args()
    SCRATCH.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="cli-startup-", dir=SCRATCH))
    try:
        print(json.dumps(measure(args.runs, scratch), indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
