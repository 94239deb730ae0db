"""Scores and paired differences, kept up to date in proportion to what is new.

Each answer of the current period is scored once into `scores` (the string work: metrics,
label parsing, pricing) and rescored only when one of its rows changes; the period's
descriptive sums (`answer_stats`) follow every change. A pair is a request answered by
both the champion (live) and a challenger (replayed) in the period, once both answers are
scored (label joined, prices known). Its differences d = challenger − champion (net,
quality, cost) are appended to `paired` exactly once, and the new batch's moments are
merged into `pair_moments`.

What is new is found through `seq`, a counter every traffic, outcome, shadow-result and
metric-value row takes when it is written: a slot's watermark remembers the highest seq
already considered, and only requests touched since are looked at again. Requests are
keyed by their traffic row's `seq` (`request_seq`), an integer that grows with arrival,
so the rows of recently touched requests are read without scanning older ones.
"""

from __future__ import annotations

from datetime import datetime

import duckdb
import polars as pl

from registry.db import registered
from scorer.answers import AnswerQuery
from scorer.answerstats import add_answers
from scorer.periods import Period
from scorer.sequential import PairedMoments

MEASURES = ("net", "quality", "cost")
_SCORE_COLUMNS = ("request_seq, version_id, source, status, labelled, metric_failed, quality, cost_usd, latency_ms, "
                  "net, received_at")


def touched_requests(since_seq: int) -> str:
    """SQL for the `request_seq` of requests whose rows changed after `since_seq`."""
    return (
        f"SELECT seq AS request_seq FROM traffic WHERE seq > {since_seq} "
        f"UNION SELECT request_seq FROM shadow_results WHERE seq > {since_seq} AND request_seq IS NOT NULL "
        f"UNION SELECT request_seq FROM outcomes WHERE seq > {since_seq} AND request_seq IS NOT NULL "
        f"UNION SELECT seq FROM traffic WHERE request_id IN (SELECT request_id FROM metric_values WHERE seq > {since_seq})"
    )


def latest_seq(db: duckdb.DuckDBPyConnection) -> int:
    row = db.execute(
        "SELECT greatest((SELECT max(seq) FROM traffic), (SELECT max(seq) FROM shadow_results), "
        "(SELECT max(seq) FROM outcomes), (SELECT max(seq) FROM metric_values), 0)"
    ).fetchone()
    return int(row[0] or 0)


def watermark(db: duckdb.DuckDBPyConnection, period: Period) -> int:
    """The highest seq already paired for this period (0 when the period is new)."""
    row = db.execute("SELECT period_id, seq FROM scoring_watermarks WHERE slot = ?", [period.slot]).fetchone()
    return int(row[1]) if row and row[0] == period.period_id else 0


def forget_earlier_periods(db: duckdb.DuckDBPyConnection, period: Period) -> None:
    """Delete the per-answer scores of the slot's earlier periods: they serve only to rescore
    a period, and a slot never returns to one. Their pairs, moments and sums stay."""
    db.execute("DELETE FROM scores WHERE period_id IN "
               "(SELECT period_id FROM evaluation_periods WHERE slot = ? AND period_id < ?)",
               [period.slot, period.period_id])


def rescore(db: duckdb.DuckDBPyConnection, query: AnswerQuery, period: Period) -> str:
    """Score the query's answers into `scores`, replacing earlier scores of the same requests,
    and keep the period's descriptive sums in step; return the relation of the rows just scored.

    A new period's answers go straight into `scores`; a refresh's few go through the temp
    table `rescored` first, so pairing reads them without touching the rest of the period.
    """
    needs_label = query.plan.needs_label
    scored = (f"SELECT {period.period_id} AS period_id, {_SCORE_COLUMNS} "
              f"FROM (SELECT *, label_json IS NOT NULL AS labelled FROM ({query.sql()}))")
    if query.candidates is None:
        db.execute(f"INSERT INTO scores (period_id, {_SCORE_COLUMNS}) {scored}")
        rescored = f"(SELECT * FROM scores WHERE period_id = {period.period_id})"
    else:
        db.execute(f"CREATE OR REPLACE TEMP TABLE rescored AS {scored}")
        replaced = f"scores WHERE period_id = {period.period_id} AND request_seq IN ({query.candidates})"
        add_answers(db, period.period_id, f"(SELECT * FROM {replaced})", needs_label, sign=-1)
        db.execute(f"DELETE FROM {replaced}")
        db.execute(f"INSERT INTO scores (period_id, {_SCORE_COLUMNS}) SELECT period_id, {_SCORE_COLUMNS} FROM rescored")
        rescored = "rescored"
    add_answers(db, period.period_id, rescored, needs_label)
    return rescored


def append_pairs(db: duckdb.DuckDBPyConnection, period: Period, rescored: str, windows: dict[str, datetime],
                 needs_label: bool, batch_seq: int, rebuild: bool) -> dict[str, dict[str, PairedMoments]]:
    """Append the newly complete pairs among the `rescored` answers, tagged with the
    refresh's watermark `batch_seq`; return their moments per challenger.

    A request already paired (its label was sent again, say) is left out, so a pair is
    counted once; on a `rebuild` the period is new and has no pairs to leave out.
    """
    starts = pl.DataFrame({"version_id": list(windows), "window_start": list(windows.values())},
                          schema={"version_id": pl.Utf8, "window_start": pl.Datetime("us")})
    label_rule = "AND c.labelled" if needs_label else ""
    already, unpaired = "", ""
    if not rebuild:
        already = (f"LEFT JOIN (SELECT request_seq, version_id FROM paired WHERE period_id = {period.period_id} "
                   f"AND request_seq IN (SELECT request_seq FROM {rescored})) q "
                   "ON q.request_seq = c.request_seq AND q.version_id = c.version_id")
        unpaired = "AND q.request_seq IS NULL"
    with registered(db, "pair_windows", starts.to_arrow()):
        db.execute(f"""
            INSERT INTO paired
            SELECT {period.period_id}, c.request_seq, c.version_id, c.net - p.net, c.quality - p.quality,
                   c.cost_usd - p.cost_usd, now()::TIMESTAMP, {batch_seq}
            FROM {rescored} c JOIN {rescored} p ON p.request_seq = c.request_seq AND p.source = 'live'
            JOIN pair_windows w ON w.version_id = c.version_id {already}
            WHERE c.source = 'shadow' AND c.received_at >= w.window_start
              AND c.net IS NOT NULL AND p.net IS NOT NULL {unpaired} {label_rule}
        """)
    return _batch_moments(db, period, batch_seq)


def _batch_moments(db: duckdb.DuckDBPyConnection, period: Period, batch_seq: int) -> dict[str, dict[str, PairedMoments]]:
    """Count, mean and M2 of each measure of one batch of pairs, per challenger, computed in SQL."""
    columns = ", ".join(f"avg(d_{m}), var_pop(d_{m}) * count(*)" for m in MEASURES)
    batches: dict[str, dict[str, PairedMoments]] = {}
    for version_id, n, *values in db.execute(
            f"SELECT version_id, count(*), {columns} FROM paired "
            f"WHERE period_id = {period.period_id} AND watermark_seq = {batch_seq} GROUP BY 1").fetchall():
        batches[version_id] = {m: PairedMoments(n=n, mean=values[2 * i], m2=values[2 * i + 1])
                               for i, m in enumerate(MEASURES)}
    return batches


def merge_moments(db: duckdb.DuckDBPyConnection, period: Period, batches: dict[str, dict[str, PairedMoments]]) -> None:
    """Fold each batch into the stored moments of its (period, challenger, measure), in one write."""
    rows = []
    for version_id, measures in batches.items():
        stored = load_moments(db, period.period_id, version_id)
        for measure, batch in measures.items():
            merged = stored.get(measure, PairedMoments()).merge(batch).to_dict()
            rows.append({"period_id": period.period_id, "version_id": version_id, "measure": measure, **merged})
    if rows:
        with registered(db, "merged_moments", pl.DataFrame(rows).to_arrow()):
            db.execute("INSERT OR REPLACE INTO pair_moments SELECT period_id, version_id, measure, n, mean, m2 "
                       "FROM merged_moments")


def load_moments(db: duckdb.DuckDBPyConnection, period_id: int, version_id: str) -> dict[str, PairedMoments]:
    rows = db.execute("SELECT measure, n, mean, m2 FROM pair_moments WHERE period_id = ? AND version_id = ?",
                      [period_id, version_id]).fetchall()
    return {measure: PairedMoments.from_dict({"n": n, "mean": mean, "m2": m2}) for measure, n, mean, m2 in rows}


def save_watermark(db: duckdb.DuckDBPyConnection, period: Period, seq: int) -> None:
    db.execute("INSERT OR REPLACE INTO scoring_watermarks VALUES (?, ?, ?)", [period.slot, period.period_id, seq])
