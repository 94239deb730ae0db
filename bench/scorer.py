"""Scorer benchmark: full rebuild and incremental refresh over millions of shadow results.

One slot, a champion and five challengers, N requests with labels, so 5·N shadow results.
Answers are `realistic` by default (a category line, then an explanation that differs per
request and variant, and OpenAI's usage JSON) or, with `--shape labels`, bare categories.
Every figure is a ratio to one aggregate scan of the same shadow results in the same run
(`SELECT version_id, count(*), avg(latency_ms), avg(length(output)) … GROUP BY 1`):

- full rebuild: the first refresh of a period (every pair computed, moments, board);
- incremental refresh: a refresh after 100k new shadow results (20k requests × 5);
- the refresh's floor: the least any refresh of those results must do (one statement that
  compares each new answer's first line with its label and stores it as a pair, and its
  commit), to show how much of the refresh is the design's and how much the machine's;
- each time (the scan's too) is the best of three runs: a rebuild runs again after its
  derived rows are cleared, a refresh after another 100k new results;
- peak RSS of the process, with the DuckDB limits the daemon sets (`daemon.duckdb_threads`,
  `daemon.duckdb_memory_limit`: 2 threads, 2 GB by default).

Prints one JSON object. `--requests 2000000` gives the 10 M results of the issue;
`--growth` also runs a tenth of that, to show how the figures scale.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry import NewVariant, Registry, load_workspace  # noqa: E402
from scorer.changes import latest  # noqa: E402
from scorer.service import Scorer  # noqa: E402

SLOT = "bench"
CHALLENGERS = 5
RUNS = 3
"""Each time is the best of this many runs: the machines are shared and noisy."""
LABELS = ["billing", "technical", "account", "shipping", "other"]
LABELS_SQL = "['" + "', '".join(LABELS) + "']"


def workspace(root: Path, settings: dict | None = None) -> Path:
    """A workspace with one slot scored by exact match, and a priced model; `settings` adds
    top-level keys (e.g. `backend` and `distributed`)."""
    config = {
        "providers": {"up": {"base_url": "http://127.0.0.1:9/v1"}},
        "slots": {SLOT: {"defaults": {"provider": "up", "model": "m"},
                         "metrics": [{"type": "exact_match", "first_line": True}],
                         "scoring": {"value_per_point": 0.01, "min_samples": 200}}},
        "prices": {"m": {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6}},
    } | (settings or {})
    (root / "zoo").mkdir(parents=True)
    (root / "shadowzoo.yaml").write_text(yaml.safe_dump(config))
    return root


def register(registry: Registry) -> tuple[str, list[str]]:
    ids = []
    for index in range(CHALLENGERS + 1):
        ids.append(registry.register(NewVariant(
            slot=SLOT, label=f"v{index}", kind="chat", skill_text=f"skill {index}",
            config={"kind": "chat", "provider": "up", "model": "m", "params": {}})).variant.version_id)
    registry.promote(SLOT, ids[0], "bench", None, None)
    return ids[0], ids[1:]


# What an answer looks like: its first line is the category (what the metric checks); a
# realistic answer goes on with an explanation of a few sentences that differs per request
# and per variant, and carries the usage object OpenAI returns.
SHAPES = ("realistic", "labels")
EXPLANATION = ("'\n\nTicket ' || i || ' reads as a ' || {category} || ' question: ' "
               "|| repeat('the customer names the product, the symptom and when it started. ', (1 + hash(i * {k}) % 4)::BIGINT)")
USAGE = ("'{{\"prompt_tokens\": ' || {prompt} || ', \"completion_tokens\": ' || {completion} || ', \"total_tokens\": ' "
         "|| ({prompt} + {completion}) || ', \"prompt_tokens_details\": {{\"cached_tokens\": 0}}, "
         "\"completion_tokens_details\": {{\"reasoning_tokens\": 0}}}}'")


def answer_sql(shape: str, k: str, accuracy: str) -> tuple[str, str, str]:
    """SQL for the output, the usage JSON and the token details read from it (cached and
    reasoning tokens, as ingest and the runner store them) of one variant's answer to request `i`;
    `k` (the variant's own salt for the hash) and `accuracy` (its percentage of right categories)
    are SQL expressions."""
    category = f"(CASE WHEN hash(i * {k}) % 100 < {accuracy} THEN {LABELS_SQL}[1 + i % 5] ELSE 'other' END)"
    if shape == "labels":
        return category, "NULL", "NULL, NULL"
    completion = f"(12 + 15 * (hash(i * {k}) % 4))"
    return (category + " || " + EXPLANATION.format(category=category, k=k), USAGE.format(prompt=150, completion=completion),
            "0, 0")


RUNNER_BATCH = 20_000
"""Requests whose challengers' results `generate` writes at once, in request order: the runner
replays the pending pairs in (received_at, request_id, version_id) order, so a request's results
are written side by side, in one row group (or two), not one per challenger."""


def generate(registry: Registry, champion: str, challengers: list[str], start: int, count: int, shape: str) -> None:
    """`count` labelled requests answered by the champion and every challenger, in SQL, keyed
    as ingest and the runner key them (outcomes and results carry their traffic row's seq), and
    written in the order they write them. On either backend: each statement's change counter
    values are reserved first and drawn explicitly, as ingest and the runner draw theirs
    (`Database.reserve`; the lake's tables have no default for them)."""
    request_id = "'szr_' || lpad(to_hex(i), 12, '0') || left(md5(i::VARCHAR), 12)"
    output, usage, details = answer_sql(shape, "7", "70")
    database = registry.database
    with database.transaction() as db:
        seen = db.execute("SELECT coalesce(max(seq), 0) FROM traffic").fetchone()[0]
        database.reserve("change_seq", count)
        db.execute(f"""
            INSERT INTO traffic (request_id, slot, received_at, request_json, champion_version, status, output,
                                 prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_json, latency_ms,
                                 source, ingested_at, seq)
            SELECT {request_id}, '{SLOT}', now()::TIMESTAMP + to_microseconds(i), '{{}}', '{champion}', 200,
                   {output}, 120, 12, {details}, {usage}, 200 + hash(i) % 300, 'gateway', now()::TIMESTAMP,
                   nextval('change_seq')
            FROM range({start}, {start + count}) t(i)""")
        low, high = db.execute(f"SELECT min(seq), max(seq) FROM traffic WHERE seq > {seen}").fetchone()
        requests = f"(SELECT ('0x' || substr(request_id, 5, 12))::BIGINT AS i, request_id, seq FROM traffic WHERE seq > {seen})"
        database.reserve("change_seq", count)
        db.execute(f"""
            INSERT INTO outcomes (outcome_id, request_key, request_id, request_seq, kind, value_json, received_at, seq)
            SELECT 'o' || i, request_id, request_id, seq, 'label', to_json({LABELS_SQL}[1 + i % 5]), now()::TIMESTAMP,
                   nextval('change_seq')
            FROM {requests}""")
        for batch in range(low, high + 1, RUNNER_BATCH):
            database.reserve("change_seq", RUNNER_BATCH * len(challengers))
            _replay(db, requests, challengers, shape, f"seq BETWEEN {batch} AND {batch + RUNNER_BATCH - 1}")


def _replay(db: duckdb.DuckDBPyConnection, requests: str, challengers: list[str], shape: str, condition: str) -> None:
    """Every challenger's answer to the requests meeting `condition`, written request by request."""
    variants = ", ".join(f"('{version}', {11 + index}, {60 + 5 * index})" for index, version in enumerate(challengers))
    output, usage, details = answer_sql(shape, "c.k", "c.accuracy")
    db.execute(f"""
        INSERT INTO shadow_results (request_id, request_seq, version_id, role, status, output, prompt_tokens,
                                    completion_tokens, cached_tokens, reasoning_tokens, usage_json, latency_ms,
                                    attempts, finished_at, seq)
        SELECT request_id, seq, c.version_id, 'challenger', 'ok', {output}, 150, 12, {details}, {usage},
               180 + hash(i * 3) % 300, 1, now()::TIMESTAMP, nextval('change_seq')
        FROM (SELECT * FROM {requests} WHERE {condition}) r, (VALUES {variants}) c(version_id, k, accuracy)
        ORDER BY seq, c.version_id""")


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def rebuild(registry: Registry, scorer: Scorer) -> float:
    """Time the first refresh of the period, after clearing what earlier ones derived."""
    with registry.database.transaction() as db:
        for table in ("paired", "answer_stats", "pair_moments", "scoring_watermarks"):
            db.execute(f"DELETE FROM {table}")
    return timed(lambda: scorer.refresh(SLOT))


def scan(registry: Registry) -> float:
    with registry.database.reading() as db:
        return timed(lambda: db.execute(
            "SELECT version_id, count(*), avg(latency_ms), avg(length(output)) FROM shadow_results GROUP BY 1").fetchall())


# The least any refresh of the new results must do, whatever its design: compare each new
# answer's first line with its request's label and store the result as a pair, durably. It
# leaves out the champion's answers, costs, the period's sums and moments, and the board.
FLOOR_SQL = """
    INSERT INTO floor_pairs
    SELECT 0, s.request_seq, s.version_id,
           CAST(substring(s.output, 1, coalesce(nullif(strpos(s.output, chr(10)), 0) - 1, length(s.output)))
                = json_extract_string(o.value_json, '$') AS DOUBLE), 0, 0
    FROM shadow_results s JOIN outcomes o ON o.request_seq = s.request_seq
    WHERE s.seq > {seen} AND o.seq > {seen}"""


def refresh_floor(registry: Registry, seen: int) -> float:
    """Time `FLOOR_SQL` and its commit over the rows written after `seen`, into a scratch
    table shaped like `paired` (dropped afterwards: its rows are not the scorer's)."""
    def store_pairs() -> None:
        with registry.database.transaction() as db:
            db.execute(FLOOR_SQL.format(seen=seen))

    with registry.database.reading() as db:
        db.execute("CREATE TABLE floor_pairs AS SELECT * FROM paired LIMIT 0")
    try:
        return timed(store_pairs)
    finally:
        with registry.database.reading() as db:
            db.execute("DROP TABLE floor_pairs")


def run(requests: int, incremental: int, shape: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry.open(load_workspace(workspace(Path(tmp))))
        daemon = registry.workspace.config.daemon  # the scorer runs inside the daemon, with its DuckDB limits
        registry.database.limit(daemon.duckdb_threads, daemon.duckdb_memory_limit)
        champion, challengers = register(registry)
        generate(registry, champion, challengers, 0, requests, shape)
        scan(registry)  # warm the cache so both sides read from memory
        scan_s = min(scan(registry) for _ in range(RUNS))
        scorer = Scorer(registry.workspace, registry)
        rebuild_s = min(rebuild(registry, scorer) for _ in range(RUNS))
        added = incremental // CHALLENGERS
        refresh_times, floor_times = [], []
        for start in range(requests, requests + RUNS * added, added):
            with registry.database.reading() as db:
                seen = latest(db).value
            generate(registry, champion, challengers, start, added, shape)
            refresh_times.append(timed(lambda: scorer.refresh(SLOT)))
            floor_times.append(refresh_floor(registry, seen))
        refresh_s, floor_s = min(refresh_times), min(floor_times)
        board = scorer.refresh(SLOT)
        pairs = sum(r.comparison.pairs for r in board.rows if r.comparison)
        registry.close()
    return {
        "shadow_results": requests * CHALLENGERS,
        "scan_s": round(scan_s, 4),
        "full_rebuild_s": round(rebuild_s, 3),
        "full_rebuild_vs_scan": round(rebuild_s / scan_s, 2),
        "incremental_results": incremental,
        "incremental_refresh_s": round(refresh_s, 3),
        "incremental_refresh_vs_scan": round(refresh_s / scan_s, 3),
        "refresh_floor_s": round(floor_s, 4),
        "refresh_floor_vs_scan": round(floor_s / scan_s, 3),
        "pairs_after": pairs,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2_000_000, help="labelled requests (5 results each)")
    parser.add_argument("--incremental", type=int, default=100_000, help="new shadow results before the refresh")
    parser.add_argument("--growth", action="store_true", help="also run at a tenth of --requests")
    parser.add_argument("--shape", choices=SHAPES, default="realistic",
                        help="realistic: answers explain themselves and carry usage JSON; labels: bare categories")
    args = parser.parse_args()
    figures = {"shape": args.shape,
               "targets": {"full_rebuild_vs_scan": "<= 15", "incremental_refresh_vs_scan": "<= 0.1", "peak_rss_gb": "< 4"}}
    if args.growth:
        figures["small"] = run(args.requests // 10, args.incremental, args.shape)
    figures["large"] = run(args.requests, args.incremental, args.shape)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
