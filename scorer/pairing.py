"""Paired differences and the period's sums, kept up to date in proportion to what is new.

What is new is found by a mark in the data's history (`scorer.changes`: in a DuckDB file the
highest `seq`, a counter every traffic, outcome, shadow-result and metric-value row takes
when it is written; on the lake a snapshot id): a slot's watermark remembers the mark
already considered, and only requests touched since are scored again. Requests are keyed
by their traffic row's `seq` (`request_seq`), an integer that grows with arrival, so the
rows of recently touched requests are read without scanning older ones.

Each touched request is scored twice: as it stands now, and as it stood at the watermark
(its rows written by then, which is exactly what the refresh that last touched it scored). The period's descriptive sums (`answer_stats`) take away the second
and add the first. A pair (a request answered by the champion live and by a challenger
replayed, both scored, label joined) is appended to `paired` when it is complete now and
was not at the watermark: it enters the evidence exactly once, and a corrected label
never moves a pair already counted. So nothing is kept per answer; a new period scores
its requests in chunks of `seq`, to bound memory and report progress. A chunk's scored answers
live only in its own statements (materialised CTEs), never in temp tables: the refresh is one
transaction, and DuckDB keeps a table created and dropped in a transaction (its rows in memory,
or spilled) until it ends, so per-chunk temp tables held every chunk's answers at once (about
2 GB at 10 M results, the daemon's whole memory limit). Each challenger's
most negative pairs are kept apart as well (`worst_pairs`, for `requests --worst`), merged
with the new pairs as they enter.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from datetime import datetime

import duckdb
import polars as pl

from registry.db import registered, sql_literal
from registry.keyed import upsert
from scorer.answer_query import AnswerQuery
from scorer.answerstats import add_answers
from scorer.changes import Mark, touched_requests
from scorer.periods import Period
from scorer.sequential import PairedMoments

MEASURES = ("net", "quality", "cost")
Moments = dict[str, dict[str, PairedMoments]]
"""Paired moments per challenger, then per measure."""
CHUNK_REQUESTS = 500_000
"""Requests scored at once when a period is scored from the start."""
WORST_DEPTH = 1000
"""How many of each challenger's pairs in a period `worst_pairs` keeps: always exactly the first
`WORST_DEPTH` of its pairs in `paired` by `WORST_ORDER` (migration 10 read off as many), so a
`requests --worst` page among them reads them alone (`scorer.browse`)."""
WORST_ORDER = "d_net, request_seq DESC"
"""The order of a challenger's pairs on a --worst page: most negative net difference first, then the newer request."""
_ANSWER_COLUMNS = ("request_seq, version_id, source, status, labelled, metric_failed, quality, cost_usd, latency_ms, "
                   "net, received_at")
_LIVE_COLUMNS = f"{_ANSWER_COLUMNS}, known_variant, label_json"
# Replayed answers are the bulk of a period: their source and status are kept as flags,
# which cost about half as much to write as the strings.
_REPLAYED_COLUMNS = ("request_seq, version_id, source = 'control' AS control, status = 'error' AS failed, labelled, "
                     "metric_failed, quality, cost_usd, latency_ms, net, received_at, champion_net, champion_quality, "
                     "champion_cost")
_REPLAYED_ANSWERS = ("request_seq, version_id, CASE WHEN control THEN 'control' ELSE 'shadow' END AS source, "
                     "CASE WHEN failed THEN 'error' ELSE 'ok' END AS status, labelled, metric_failed, quality, cost_usd, "
                     "latency_ms, net, received_at")
_MOMENTS_KEY = ("period_id", "version_id", "measure")
log = logging.getLogger("shadowzoo.scorer")


def watermark(db: duckdb.DuckDBPyConnection, period: Period, now: Mark) -> Mark | None:
    """The mark already paired for this period (None when the period is new); `now` says which kind."""
    row = db.execute("SELECT period_id, seq FROM scoring_watermarks WHERE slot = ?", [period.slot]).fetchone()
    return Mark(int(row[1]), now.snapshot) if row and row[0] == period.period_id else None


def score_changes(db: duckdb.DuckDBPyConnection, period: Period, query: AnswerQuery, seen: Mark | None, now: Mark,
                  windows: dict[str, datetime]) -> Moments:
    """Score the requests touched after `seen` up to `now` (for a new period, `seen` None: all its
    requests, in chunks of seq), move the period's sums, append the new pairs and return their moments."""
    if seen is not None:
        try:
            db.execute(f"CREATE OR REPLACE TEMP TABLE touched AS {touched_requests(seen, now)}")
            return _score_batch(db, period, replace(query, requests="seq IN (SELECT request_seq FROM touched)"), seen,
                                windows)
        finally:
            db.execute("DROP TABLE IF EXISTS touched")
    chunks = _chunks(db, query)
    for done, chunk in enumerate(chunks, start=1):
        _score_new(db, period, chunk, windows)
        if len(chunks) > 1:
            log.info("slots.%s: scored %d of %d chunks of the period's requests", period.slot, done, len(chunks))
    # a new period's pairs are all the period has: one pass over them once every chunk is in
    reread_worst(db, period.period_id, list(windows))
    return period_moments(db, period.period_id) if windows else {}


def _chunks(db: duckdb.DuckDBPyConnection, query: AnswerQuery) -> list[AnswerQuery]:
    """The query split by seq into chunks of about `CHUNK_REQUESTS` requests."""
    low, high, count = db.execute(f"SELECT min(seq), max(seq), count(*) FROM traffic WHERE {query.traffic_filter()}").fetchone()
    if not count:
        return []
    step = math.ceil((high - low + 1) / math.ceil(count / CHUNK_REQUESTS))
    return [replace(query, requests=f"seq BETWEEN {start} AND {start + step - 1}") for start in range(low, high + 1, step)]


def _score_new(db: duckdb.DuckDBPyConnection, period: Period, query: AnswerQuery, windows: dict[str, datetime]) -> None:
    """Score a chunk of a new period's requests: add its answers to the period's sums and append
    its pairs, each in one statement over the chunk's answers scored within it (the scoring
    runs twice, and nothing of the chunk outlives its statements)."""
    scored = _scored_with(query, "now")
    add_answers(db, period.period_id, f"({scored} SELECT * FROM {_answers('now')})", query.plan.needs_label)
    if windows:
        db.execute(f"INSERT INTO paired SELECT {period.period_id}, * FROM "
                   f"({scored} {_new_pairs(period, windows, query.plan.needs_label, dedupe=False)})")


def _score_batch(db: duckdb.DuckDBPyConnection, period: Period, query: AnswerQuery, seen: Mark,
                 windows: dict[str, datetime]) -> Moments:
    """Score the requests touched since `seen` now and, those that existed then, as they stood at
    `seen`; move the period's sums by the difference, append the pairs completed since and return
    their moments. One batch a refresh, as big as what is new: its temp tables are bounded by it."""
    try:
        _score_into(db, "now", query)
        add_answers(db, period.period_id, _answers("now"), query.plan.needs_label)
        existed = _requests_before(db, seen)
        if existed:
            _score_into(db, "before", replace(query, as_of=seen))
            add_answers(db, period.period_id, _answers("before"), query.plan.needs_label, sign=-1)
        if not windows:
            return {}
        new_pairs = _new_pairs(period, windows, query.plan.needs_label, dedupe=existed)
        # a few new pairs: kept once, then appended, merged into the worst pairs and summed
        db.execute(f"CREATE OR REPLACE TEMP TABLE new_pairs AS {new_pairs}")
        db.execute(f"INSERT INTO paired SELECT {period.period_id}, * FROM new_pairs")
        _merge_worst(db, period.period_id, list(windows), "new_pairs")
        return _moments(db, "SELECT * FROM new_pairs")
    finally:
        for table in ("live_now", "replayed_now", "live_before", "replayed_before", "new_pairs"):
            db.execute(f"DROP TABLE IF EXISTS {table}")


def _score_into(db: duckdb.DuckDBPyConnection, state: str, query: AnswerQuery) -> None:
    """Score the query's answers into the temp tables `live_<state>` and `replayed_<state>`."""
    for name, select in _scored(query, state).items():
        db.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {select}")


def _scored_with(query: AnswerQuery, state: str) -> str:
    """A WITH clause naming the query's answers scored `live_<state>` and `replayed_<state>`,
    as `_score_into` stores them, for one statement."""
    return "WITH " + ", ".join(f"{name} AS MATERIALIZED ({select})" for name, select in _scored(query, state).items())


def _scored(query: AnswerQuery, state: str) -> dict[str, str]:
    """The SELECTs of the query's scored answers, `live_<state>` and then `replayed_<state>` (which reads it)."""
    return {f"live_{state}": f"SELECT {_LIVE_COLUMNS}{query.plan.label_column_refs()} FROM ({query.live_sql()})",
            f"replayed_{state}": f"SELECT {_REPLAYED_COLUMNS} FROM ({query.replayed_sql(f'live_{state}')})"}


def _requests_before(db: duckdb.DuckDBPyConnection, seen: Mark) -> bool:
    """Whether any request just scored may have existed at `seen` (a request that did not had nothing
    to take away). On the lake a request's `seq` does not tell (it is drawn before its commit): it may have."""
    return seen.snapshot or db.execute(
        f"SELECT count(*) FROM live_now WHERE request_seq <= {seen.value}").fetchone()[0] > 0


def _answers(state: str) -> str:
    return (f"(SELECT {_ANSWER_COLUMNS} FROM live_{state} WHERE known_variant "
            f"UNION ALL SELECT {_REPLAYED_ANSWERS} FROM replayed_{state})")


def _complete(answer: str, needs_label: bool) -> str:
    """Whether a replayed answer makes a pair: it and the champion's answer are scored (and labelled)."""
    labelled = f"AND {answer}.labelled" if needs_label else ""
    return f"NOT {answer}.control AND {answer}.net IS NOT NULL AND {answer}.champion_net IS NOT NULL {labelled}"


def _new_pairs(period: Period, windows: dict[str, datetime], needs_label: bool, dedupe: bool) -> str:
    """SQL selecting the pairs complete now (within their challenger's window); with `dedupe`,
    leaving out those already complete before."""
    counted = ""
    if dedupe:
        counted = ("AND NOT EXISTS (SELECT 1 FROM replayed_before b WHERE b.request_seq = c.request_seq "
                   f"AND b.version_id = c.version_id AND {_complete('b', needs_label)})")
    return f"""
        SELECT c.request_seq, c.version_id, c.net - c.champion_net AS d_net, c.quality - c.champion_quality AS d_quality,
               c.cost_usd - c.champion_cost AS d_cost
        FROM replayed_now c
        WHERE ({_in_window('c', period, windows)}) AND {_complete('c', needs_label)} {counted}"""


def _merge_worst(db: duckdb.DuckDBPyConnection, period_id: int, version_ids: list[str], pairs: str) -> None:
    """Make the period's worst pairs each challenger's first `WORST_DEPTH` of them and of the
    relation `pairs` together (the first of the old pairs and the new are among the old first
    and the new: pairs only ever enter). One top-k per challenger: a window over all of them
    sorts every pair."""
    both = (f"(SELECT version_id, request_seq, d_net FROM worst_pairs WHERE period_id = {period_id} "
            f"UNION ALL SELECT version_id, request_seq, d_net FROM {pairs})")
    first = " UNION ALL ".join(
        f"(SELECT version_id, request_seq, d_net FROM {both} WHERE version_id = {sql_literal(version_id)} "
        f"ORDER BY {WORST_ORDER} LIMIT {WORST_DEPTH})" for version_id in version_ids)
    if not first:
        return
    try:
        db.execute(f"CREATE OR REPLACE TEMP TABLE first_pairs AS {first}")
        db.execute(f"DELETE FROM worst_pairs WHERE period_id = {period_id}")
        db.execute(f"INSERT INTO worst_pairs SELECT {period_id}, version_id, request_seq, d_net FROM first_pairs")
    finally:
        db.execute("DROP TABLE IF EXISTS first_pairs")


def reread_worst(db: duckdb.DuckDBPyConnection, period_id: int, version_ids: list[str]) -> None:
    """Read the period's worst pairs of the challengers `version_ids` off its pairs in `paired` again."""
    db.execute(f"DELETE FROM worst_pairs WHERE period_id = {period_id}")
    _merge_worst(db, period_id, version_ids, f"(SELECT * FROM paired WHERE period_id = {period_id})")


def reread_slot_worst(db: duckdb.DuckDBPyConnection, slot: str) -> None:
    """Read the worst pairs of each of the slot's periods off `paired` again, after some of its pairs were deleted."""
    for period_id, version_ids in db.execute(
            "SELECT w.period_id, list(DISTINCT w.version_id) FROM worst_pairs w JOIN evaluation_periods e "
            "USING (period_id) WHERE e.slot = ? GROUP BY 1", [slot]).fetchall():
        reread_worst(db, period_id, version_ids)


def period_moments(db: duckdb.DuckDBPyConnection, period_id: int, condition: str = "true") -> Moments:
    """The moments of the period's stored pairs that meet `condition` (SQL on `paired`'s columns)."""
    return _moments(db, f"SELECT * FROM paired WHERE period_id = {period_id} AND ({condition})")


def _moments(db: duckdb.DuckDBPyConnection, pairs: str) -> Moments:
    """Count, mean and M2 of each measure of the `pairs` query's differences, per challenger, in SQL."""
    columns = ", ".join(f"avg(d_{m}), var_pop(d_{m}) * count(*)" for m in MEASURES)
    return {version_id: {m: PairedMoments(n=n, mean=values[2 * i], m2=values[2 * i + 1]) for i, m in enumerate(MEASURES)}
            for version_id, n, *values in db.execute(f"SELECT version_id, count(*), {columns} FROM ({pairs}) GROUP BY 1").fetchall()}


def _in_window(answer: str, period: Period, windows: dict[str, datetime]) -> str:
    """Whether a replayed answer is a challenger's, on a request received within its window.

    Written as comparisons with literals: a challenger registered before the period needs no
    time check, and a join with the windows cost a tenth of appending the pairs."""
    terms = []
    for version_id, start in windows.items():
        term = f"{answer}.version_id = {sql_literal(version_id)}"
        if start > period.started_at:
            term += f" AND {answer}.received_at >= TIMESTAMP {sql_literal(start.isoformat(sep=' '))}"
        terms.append(f"({term})")
    return " OR ".join(terms)


def merge_moments(db: duckdb.DuckDBPyConnection, period: Period, batch: Moments) -> None:
    """Fold a batch into the stored moments of its (period, challenger, measure), in one write."""
    stored = load_moments(db, period.period_id)
    rows = [{"period_id": period.period_id, "version_id": version_id, "measure": measure,
             **stored.get(version_id, {}).get(measure, PairedMoments()).merge(moments).to_dict()}
            for version_id, measures in batch.items() for measure, moments in measures.items()]
    if rows:
        with registered(db, "merged_moments", pl.DataFrame(rows).to_arrow()):
            upsert(db, "pair_moments", _MOMENTS_KEY, (*_MOMENTS_KEY, "n", "mean", "m2"),
                   "SELECT period_id, version_id, measure, n, mean, m2 FROM merged_moments")


def load_moments(db: duckdb.DuckDBPyConnection, period_id: int) -> Moments:
    """The stored moments of the period, per challenger and measure."""
    moments: Moments = {}
    for version_id, measure, n, mean, m2 in db.execute(
            "SELECT version_id, measure, n, mean, m2 FROM pair_moments WHERE period_id = ?", [period_id]).fetchall():
        moments.setdefault(version_id, {})[measure] = PairedMoments.from_dict({"n": n, "mean": mean, "m2": m2})
    return moments


def save_watermark(db: duckdb.DuckDBPyConnection, period: Period, mark: Mark) -> None:
    """Remember `mark` as the slot's watermark (in its `seq` column, whichever kind it is)."""
    upsert(db, "scoring_watermarks", ("slot",), ("slot", "period_id", "seq"), "SELECT ?::VARCHAR, ?::BIGINT, ?::BIGINT",
           [period.slot, period.period_id, mark.value])
