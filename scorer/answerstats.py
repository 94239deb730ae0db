"""A period's descriptive statistics, kept as sums a refresh can add to and take from.

`answer_stats` holds, per (period, variant, source) and latency bucket, counts and sums of
the period's scored answers. A refresh adds the contribution of the answers it scores and
takes away what the same answers contributed before, so the leaderboard's descriptive columns cost
a read of this small table instead of a scan of the period. Latency quantiles come from
the buckets: each is 1% wide on a log scale, so p50 and p95 are within 0.5% of the answer
at their rank (and, with a few thousand answers, within about 1% of `quantile_cont`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from itertools import accumulate
from typing import Any

import duckdb

from registry.keyed import upsert

BUCKET_RATIO = 1.01
NO_LATENCY = -1
_BUCKET_SQL = (f"CASE WHEN latency_ms IS NULL THEN {NO_LATENCY} "
               f"ELSE CAST(floor(ln(1 + greatest(latency_ms, 0)) / ln({BUCKET_RATIO})) AS INTEGER) END")
_KEY = ("period_id", "version_id", "source", "latency_bucket")
_SUMS = ("answers", "errors", "metric_errors", "scored", "quality_sum", "priced", "cost_sum", "valued", "net_sum")


def metric_error_sql(needs_label: bool) -> str:
    """Whether an answer is a metric error: a row metric (python, judge) recorded an error on
    it, or it succeeded, is labelled when the metrics need a label, and still has no quality."""
    labelled = "labelled" if needs_label else "true"
    return f"(metric_failed OR (quality IS NULL AND status = 'ok' AND {labelled}))"


def add_answers(db: duckdb.DuckDBPyConnection, period_id: int, relation: str, needs_label: bool, sign: int = 1) -> None:
    """Add (sign 1) or take away (sign −1) the answers of `relation`, which has scored answers' columns
    (version_id, source, status, labelled, metric_failed, quality, cost_usd, latency_ms, net)."""
    assignments = ", ".join(f"{name} = answer_stats.{name} + excluded.{name}" for name in _SUMS)
    upsert(db, "answer_stats", _KEY, (*_KEY, *_SUMS), f"""
        SELECT {period_id}, version_id, source, {_BUCKET_SQL} AS latency_bucket,
               {sign} * count(*),
               {sign} * count(*) FILTER (WHERE status = 'error'),
               {sign} * count(*) FILTER (WHERE {metric_error_sql(needs_label)}),
               {sign} * count(quality), {sign} * coalesce(sum(quality), 0),
               {sign} * count(cost_usd), {sign} * coalesce(sum(cost_usd), 0),
               {sign} * count(net), {sign} * coalesce(sum(net), 0)
        FROM {relation} GROUP BY ALL""", update=assignments)


def period_stats(db: duckdb.DuckDBPyConnection, period_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (version, source): the leaderboard's descriptive columns over the period."""
    totals = db.execute(
        f"SELECT version_id, source, {', '.join(f'sum({name})' for name in _SUMS)} FROM answer_stats "
        f"WHERE period_id = {period_id} GROUP BY ALL HAVING sum(answers) > 0").fetchall()
    histograms: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for version_id, source, bucket, answers in db.execute(
            f"SELECT version_id, source, latency_bucket, answers FROM answer_stats WHERE period_id = {period_id} "
            f"AND latency_bucket <> {NO_LATENCY} AND answers > 0 ORDER BY latency_bucket").fetchall():
        histograms.setdefault((version_id, source), []).append((bucket, answers))
    stats = {}
    for version_id, source, *sums in totals:
        row = dict(zip(_SUMS, sums))
        histogram = histograms.get((version_id, source), [])
        stats[(version_id, source)] = {
            "n": int(row["scored"]),
            "mean_quality": _ratio(row["quality_sum"], row["scored"]),
            "cost_per_1k_usd": _ratio(1000 * row["cost_sum"], row["priced"]),
            "p50_latency_ms": latency_quantile(histogram, 0.5),
            "p95_latency_ms": latency_quantile(histogram, 0.95),
            "error_rate": _ratio(row["errors"], row["answers"]),
            "net_per_1k_usd": _ratio(1000 * row["net_sum"], row["valued"]),
            "metric_errors": int(row["metric_errors"]),
        }
    return stats


def latency_quantile(histogram: list[tuple[int, int]], q: float) -> float | None:
    """The q-quantile of latencies counted in (bucket, count) pairs sorted by bucket: the
    middle of the bucket holding the answer of rank q·(n−1), as `quantile_cont` ranks them."""
    if not histogram:
        return None
    cumulative = list(accumulate(count for _, count in histogram))
    index = bisect_right(cumulative, math.floor(q * (cumulative[-1] - 1)))
    return BUCKET_RATIO ** (histogram[index][0] + 0.5) - 1


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None
