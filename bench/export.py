"""Export benchmark: `shadowzoo export` throughput against DuckDB's own `COPY … TO` of the same rows.

The data is `bench/scorer.py`'s (one slot, a champion and five challengers, N labelled
requests with realistic answers), each request given a chat request of its own. Per
format, in the same run on the same rows:

- ours: `scorer.export.export_answers`, as the CLI runs it locally (request ranges of
  `CHUNK_REQUESTS`, each scored and written on its own, the file renamed into place);
- the baseline: one `COPY (the same query over every request) TO file (FORMAT …)`,
  DuckDB's fastest path, which streams too;
- rows/s of each, their ratio (ours ÷ COPY's rows/s; 1 = as fast), and the peak RSS of
  each run alone (the high-water mark is reset before it through /proc/self/clear_refs).

Formats: jsonl, parquet and csv export all 6·N answers; openai-chat the N answers of one
challenger. Runs with the daemon's DuckDB limits (2 threads, 2 GB), best of `--runs`.
`--growth` also runs a fifth of `--requests`, to show memory does not grow with the rows.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scorer import SLOT, generate, register, workspace  # noqa: E402
from registry import Registry, load_workspace  # noqa: E402
from registry.db import registered  # noqa: E402
from scorer.answer_query import variant_prices  # noqa: E402
from scorer.export import CHUNK_REQUESTS, ExportFormat, ExportOptions, ExportRows, export_answers  # noqa: E402
from shadow.pricing import workspace_prices  # noqa: E402

COPY_OPTIONS = {ExportFormat.jsonl: "FORMAT json", ExportFormat.parquet: "FORMAT parquet",
                ExportFormat.csv: "FORMAT csv, HEADER true",
                ExportFormat.openai_chat: "FORMAT csv, HEADER false, QUOTE '', ESCAPE ''"}


def chat_requests(registry: Registry) -> None:
    """Give every request the chat messages a client would have sent."""
    with registry.database.transaction() as db:
        db.execute("""UPDATE traffic SET request_json = json_object('model', 'bench', 'messages', [
                          json_object('role', 'system', 'content', 'You route support tickets.'),
                          json_object('role', 'user', 'content', 'Ticket ' || seq || ': my invoice for March shows '
                                      || (seq % 7 + 2) || ' charges and the app crashed when I opened it.')])""")


def peak_rss_reset() -> None:
    """Start a new high-water mark of this process's resident memory (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024 / 1024, 3)
    return float("nan")


def measured(action) -> tuple[float, float, int]:
    """(seconds, peak RSS in GB, rows) of one run of `action`, which returns the rows it wrote."""
    peak_rss_reset()
    began = time.perf_counter()
    rows = action()
    return time.perf_counter() - began, peak_rss_gb(), rows


def copy_to(registry: Registry, options: ExportOptions, path: Path) -> int:
    """DuckDB's own `COPY … TO` of the rows `export_answers` writes, in one statement."""
    prices = variant_prices(registry.variants(slot=options.slot), workspace_prices(registry.workspace)).to_arrow()
    sql = ExportRows(registry.workspace, options).sql("true")
    with registry.database.reading() as db, registered(db, "variant_prices", prices):
        return int(db.execute(f"COPY ({sql}) TO '{path}' ({COPY_OPTIONS[options.format]})").fetchone()[0])


def run(requests: int, runs: int, formats: list[ExportFormat]) -> dict:
    figures: dict = {"requests": requests}
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry.open(load_workspace(workspace(Path(tmp) / "ws")))
        daemon = registry.workspace.config.daemon  # exports run in the daemon while it runs, with its limits
        registry.database.limit(daemon.duckdb_threads, daemon.duckdb_memory_limit)
        champion, challengers = register(registry)
        generate(registry, champion, challengers, 0, requests, "realistic")
        chat_requests(registry)
        for fmt in formats:
            options = ExportOptions(slot=SLOT, format=fmt,
                                    version=challengers[0] if fmt == ExportFormat.openai_chat else None)
            ours_path, copy_path = Path(tmp) / f"ours.{fmt}", Path(tmp) / f"copy.{fmt}"
            ours = min((measured(lambda: export_answers(registry, options, ours_path).rows) for _ in range(runs)),
                       key=lambda m: m[0])
            copy = min((measured(lambda: copy_to(registry, options, copy_path)) for _ in range(runs)), key=lambda m: m[0])
            if ours[2] != copy[2]:
                raise RuntimeError(f"{fmt}: export wrote {ours[2]} rows, COPY {copy[2]}")
            figures[str(fmt)] = {
                "rows": ours[2],
                "export_s": round(ours[0], 3), "export_rows_per_s": round(ours[2] / ours[0]),
                "copy_s": round(copy[0], 3), "copy_rows_per_s": round(copy[2] / copy[0]),
                "export_vs_copy": round(copy[0] / ours[0], 3),
                "export_peak_rss_gb": ours[1], "copy_peak_rss_gb": copy[1],
                "export_bytes": ours_path.stat().st_size, "copy_bytes": copy_path.stat().st_size,
            }
        registry.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000, help="labelled requests (6 answers each)")
    parser.add_argument("--runs", type=int, default=2, help="best of this many runs per figure")
    parser.add_argument("--growth", action="store_true", help="also run at a fifth of --requests")
    parser.add_argument("--formats", default="jsonl,parquet,csv,openai-chat", help="comma-separated")
    args = parser.parse_args()
    formats = [ExportFormat(name) for name in args.formats.split(",")]
    figures: dict = {"chunk_requests": CHUNK_REQUESTS}
    if args.growth:
        figures["small"] = run(args.requests // 5, args.runs, formats)
    figures["large"] = run(args.requests, args.runs, formats)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
