"""Spool ingest throughput: ~1 KB chat captures, keys enforced, into a fresh DuckDB file.

Prints one JSON object. The spool holds `--records` captures (realistic chat requests of a
few messages, with output, usage and latency; 2 % of lines are labels for earlier
requests), written as the gateway writes them, `--per-segment` lines per segment. Each
figure is the best of `--repeat` runs, each into a fresh database, beside baselines
measured in the same run on the same files:

- `read_json_baseline`: DuckDB's own `read_json` of the segments into an unkeyed table,
  with no validation: what the storage engine alone costs;
- `pydantic_parse_baseline`: only parsing the segments line by line with the record models
  (`shadow.spool.read_segment`), which is what ingest avoids on its hot path;
- `reingest`: the same segments ingested a second time into the same database, where
  every record is a duplicate and must be ignored.

Seconds are wall-clock; `*_cpu_s` is this process's CPU time (all DuckDB threads), which
varies less than wall time on a machine shared with other work.

Run from the repository root: ``python bench/ingest.py [--records N] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry import Database  # noqa: E402
from shadow.ingest import ingest_spool  # noqa: E402
from shadow.spool_records import OutcomeRecord, TrafficRecord  # noqa: E402
from shadow.spool import read_segment, ready_segments, write_segment  # noqa: E402

TARGET_RECORDS_PER_S = 100_000
LABEL_SHARE = 0.02
CATEGORIES = ("billing", "shipping", "account", "technical", "other")
WORDS = (
    "order invoice refund password login shipping delayed broken screen charge account email reset billing "
    "plan cancel upgrade payment card declined package tracking dashboard sync mobile app error page blank "
    "the my is not and after since yesterday please help urgent again still cannot when with for to"
).split()
SYSTEM = (
    "You are the support triage assistant of an online shop. Read the customer's message and answer with "
    "exactly one category: billing, shipping, account, technical or other. No explanation."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--per-segment", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        print(json.dumps(run(Path(tmp), args.records, args.per_segment, args.repeat, args.seed), indent=2))


def run(work: Path, records: int, per_segment: int, repeat: int, seed: int) -> dict[str, Any]:
    source = work / "segments"
    source.mkdir()
    lines = write_spool(source, records, per_segment, random.Random(seed))
    segments = ready_segments(source)
    size = sum(path.stat().st_size for path in segments)
    ingest_runs = [timed_ingest(work, source) for _ in range(repeat)]
    ingest = min(timing for timing, _ in ingest_runs)
    reingest = timed_reingest(work, source)
    baseline = min(timed_read_json(work, segments) for _ in range(repeat))
    parse = timed(lambda: [read_segment(path) for path in segments])
    return {
        "records": lines,
        "segments": len(segments),
        "bytes_per_record": round(size / lines),
        "repeat": repeat,
        "ingest_s": round(ingest.wall, 3),
        "ingest_s_all_runs": [round(timing.wall, 3) for timing, _ in ingest_runs],
        "ingest_cpu_s": round(ingest.cpu, 3),
        "ingest_records_per_s": round(lines / ingest.wall),
        "ingest_mb_per_s": round(size / ingest.wall / 1e6, 1),
        "rows": ingest_runs[0][1],
        "read_json_baseline_s": round(baseline.wall, 3),
        "read_json_baseline_cpu_s": round(baseline.cpu, 3),
        "read_json_baseline_records_per_s": round(lines / baseline.wall),
        "ingest_speed_vs_read_json_baseline": round(baseline.wall / ingest.wall, 2),
        "pydantic_parse_baseline_records_per_s": round(lines / parse.wall),
        "ingest_speed_vs_pydantic_parse": round(parse.wall / ingest.wall, 1),
        "reingest_all_duplicates_records_per_s": round(lines / reingest.wall),
        "target_records_per_s": TARGET_RECORDS_PER_S,
        "meets_target": lines / ingest.wall >= TARGET_RECORDS_PER_S,
        "duckdb": duckdb.__version__,
        "cpus": os.cpu_count(),
    }


def write_spool(directory: Path, records: int, per_segment: int, rng: random.Random) -> int:
    """Write `records` lines as the gateway does (model JSON, segment files); returns the count."""
    start = datetime(2025, 3, 1, tzinfo=UTC)
    written = 0
    while written < records:
        count = min(per_segment, records - written)
        lines = [capture_line(written + i, start, rng).encode() for i in range(count)]
        write_segment(directory, lines)
        written += count
    return written


def capture_line(index: int, start: datetime, rng: random.Random) -> str:
    """One spool line: mostly traffic, sometimes a label for a request seen a little earlier."""
    if index > 100 and rng.random() < LABEL_SHARE:
        return OutcomeRecord(
            request_key=f"client-{rng.randrange(index - 100, index)}", kind="label",
            value={"category": rng.choice(CATEGORIES)}, received_at=start + timedelta(seconds=index),
        ).model_dump_json()
    return traffic(index, start, rng).model_dump_json()


def traffic(index: int, start: datetime, rng: random.Random) -> TrafficRecord:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": text(rng, 34)},
        {"role": "assistant", "content": rng.choice(CATEGORIES)},
        {"role": "user", "content": text(rng, 15)},
    ]
    prompt_tokens = rng.randint(120, 260)
    completion_tokens = rng.randint(1, 12)
    return TrafficRecord(
        request_id=f"szr_{index:012x}{rng.getrandbits(48):012x}", client_request_id=f"client-{index}",
        slot="support-triage", received_at=start + timedelta(milliseconds=37 * index),
        request={"model": "support-triage", "messages": messages, "temperature": 0, "max_tokens": 16},
        champion_version="baseline-20250301-3f2a9c1d", status=200, output=rng.choice(CATEGORIES),
        usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
               "total_tokens": prompt_tokens + completion_tokens},
        latency_ms=round(rng.uniform(80, 1200), 2),
    )


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def timed_ingest(work: Path, source: Path) -> tuple[Timing, dict[str, int]]:
    """Time to ingest a fresh copy of the spool into a fresh database, and the rows it wrote."""
    spool, database = fresh(work, source)
    try:
        timing = timed(lambda: ingest_spool(database, spool))
        with database.reading() as db:
            rows = {
                table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("traffic", "outcomes", "spool_segments")
            }
            rows["joined_outcomes"] = db.execute("SELECT count(request_id) FROM outcomes").fetchone()[0]
    finally:
        database.close()
    return timing, rows


def timed_reingest(work: Path, source: Path) -> Timing:
    """Time to ingest the spool into a database that already holds every record."""
    spool, database = fresh(work, source)
    try:
        ingest_spool(database, spool)
        shutil.copytree(source, spool, dirs_exist_ok=True)
        with database.transaction() as db:
            db.execute("DELETE FROM spool_segments")
        return timed(lambda: ingest_spool(database, spool))
    finally:
        database.close()


def timed_read_json(work: Path, segments: list[Path]) -> Timing:
    path = work / "baseline.duckdb"
    path.unlink(missing_ok=True)
    db = duckdb.connect(str(path))
    try:
        return timed(lambda: db.execute(
            "CREATE TABLE spool AS SELECT * FROM read_json(?, format = 'newline_delimited')",
            [[str(p) for p in segments]],
        ))
    finally:
        db.close()


def fresh(work: Path, source: Path) -> tuple[Path, Database]:
    spool = work / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    shutil.copytree(source, spool)
    path = work / "ingest.duckdb"
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    return spool, Database.open(path)


@dataclass(frozen=True, order=True)
class Timing:
    """Wall-clock and CPU seconds of one action (ordered by wall time)."""

    wall: float
    cpu: float


def timed(action: Callable[[], object]) -> Timing:
    started, cpu_started = time.perf_counter(), cpu_seconds()
    action()
    return Timing(time.perf_counter() - started, cpu_seconds() - cpu_started)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


if __name__ == "__main__":
    main()
