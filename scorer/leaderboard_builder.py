"""Building the leaderboard: descriptive columns from the answers, verdicts from the pairs.

Descriptive columns (quality, cost, latency, errors, net) may cover any window (`since`);
the comparison and the status always come from the current evaluation period's pairs.
Each interval is the running intersection of the period's intervals from `min_samples`
pairs on: this look's, and what the period's latest snapshot said (which holds the
intersection of the looks before), so a verdict on the interval stays once reached.
A challenger is `ready` when that lower bound on the mean net difference exceeds
`min_effect_usd` after `min_samples` pairs and its guardrails hold; `worse` when the
upper bound is below zero. A python variant can be ready but never promoted (it answers
captured traffic only): it shows as `ready (shadow only)` and is never recommended.

Guardrails: the error rate against the champion's; p95 latency only against the
champion's control replays (`shadow.champion_control_rate`), measured under the same
replay load as the challengers. Live latencies are not comparable with replayed ones
(≈60 ms live against ≈450 ms replayed held a better challenger back for good), so with no
control replays the latency guardrail is not applied, and the board says so and why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from registry import Variant, utcnow
from registry.workspace_config import ScoringConfig
from scorer.answer_query import AnswerQuery, read_once
from scorer.answerstats import metric_error_sql
from scorer.guardrails import broken_guardrail, error_rate_delta, latency_ratio
from scorer.leaderboard_model import Comparison, Interval, Leaderboard, Slice, Status, VariantRow
from scorer.periods import Period
from scorer.sequential import PairedMoments, Verdict, bounds_verdict, confidence_interval, running_intersection

STATS = ("n", "mean_quality", "cost_per_1k_usd", "p50_latency_ms", "p95_latency_ms", "error_rate", "net_per_1k_usd",
         "metric_errors")


def _aggregates(needs_label: bool) -> str:
    """The descriptive columns, over scored answers (`AnswerQuery`'s columns)."""
    return f"""version_id, source,
               count(quality) AS n,
               avg(quality) AS mean_quality,
               1000 * avg(cost_usd) AS cost_per_1k_usd,
               quantile_cont(latency_ms, 0.5) AS p50_latency_ms,
               quantile_cont(latency_ms, 0.95) AS p95_latency_ms,
               avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0.0 END) AS error_rate,
               1000 * avg(net) AS net_per_1k_usd,
               count(*) FILTER (WHERE {metric_error_sql(needs_label)}) AS metric_errors"""


def describe(db: duckdb.DuckDBPyConnection, query: AnswerQuery) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (version, source) statistics over any window of answers, scored on the fly."""
    return _stats(db.execute(f"SELECT {_aggregates(query.plan.needs_label)} FROM ({query.sql()}) GROUP BY version_id, source"))


def _stats(cursor: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row[0], row[1]): dict(zip(STATS, row[2:])) for row in cursor.fetchall()}


def not_run_counts(db: duckdb.DuckDBPyConnection, slot: str, since: datetime, tags: str = "true") -> dict[str, int]:
    """Calls shadowzoo never made, per challenger, for the slot's requests since `since` (of a slice: `tags`,
    a condition on `t.tags`).

    Not-run rows are few and recent (a budget or a pause), so their request range is read
    first: the join then reads only that range of traffic, and nothing when there are none.
    Both reads run in the caller's transaction, one snapshot, so the range covers every row
    counted, in whatever order writers committed them. On the lake two runners that both held
    a lost lease may both have stored a pair's result: it is read once (`read_once`), so a
    not-run call counts once, and not at all beside the other runner's answer, which is scored.
    """
    low, high = db.execute(
        "SELECT min(request_seq), max(request_seq) FROM shadow_results WHERE status = 'not_run'").fetchone()
    if low is None:
        return {}
    return dict(db.execute(
        "SELECT version_id, count(*) FROM (SELECT s.version_id, s.status FROM shadow_results s "
        f"JOIN traffic t ON t.seq = s.request_seq WHERE t.slot = ? AND t.received_at >= ? AND t.seq BETWEEN ? AND ? "
        f"AND s.request_seq BETWEEN ? AND ? AND {tags}{read_once('s.request_seq, s.version_id', 's')}) "
        "WHERE status = 'not_run' GROUP BY version_id", [slot, since, low, high, low, high]).fetchall())


@dataclass(frozen=True)
class BoardInputs:
    """What the board is built from, gathered by the scorer in one transaction."""

    slot: str
    scoring: ScoringConfig
    period: Period | None
    champion: Variant | None
    challengers: list[Variant]
    alphas: dict[str, float]
    moments: dict[str, dict[str, PairedMoments]]
    stats: dict[tuple[str, str], dict[str, Any]]
    not_run: dict[str, int]
    paused: set[str]
    unpriced: set[str]
    control_rate: float = 0.0
    previous: dict[str, Comparison] | None = None
    """Each challenger's comparison on the period's latest snapshot: the intervals to intersect with."""
    since: datetime | None = None
    eval_spend_usd: float = 0.0
    reactions: dict[str, float] | None = None
    slice: Slice | None = None


def build_board(inputs: BoardInputs) -> Leaderboard:
    """The leaderboard: champion first, then challengers by their lower bound (best first)."""
    rows = []
    if inputs.champion is not None:
        rows.append(_champion_row(inputs))
    challenger_rows = [_challenger_row(inputs, variant) for variant in inputs.challengers]
    challenger_rows.sort(key=_rank)
    scoring = inputs.scoring
    return Leaderboard(
        slot=inputs.slot, generated_at=utcnow(), period_id=inputs.period.period_id if inputs.period else None,
        period_started_at=inputs.period.started_at if inputs.period else None,
        champion=inputs.champion.version_id if inputs.champion else None, value_per_point=scoring.value_per_point,
        min_samples=scoring.min_samples, min_effect_usd=scoring.min_effect_usd, alpha=scoring.alpha,
        rows=rows + challenger_rows, eval_spend_usd=inputs.eval_spend_usd, reactions=inputs.reactions or {},
        since=inputs.since, latency_guardrail=_latency_guardrail(inputs),
        latency_guardrail_applied=scoring.max_p95_latency_ratio is not None and _control_p95(inputs) is not None,
        slice=inputs.slice,
    )


def _rank(row: VariantRow) -> tuple[int, float]:
    order = [Status.READY, Status.COLLECTING, Status.GUARDRAIL, Status.WORSE, Status.PRICE_UNKNOWN, Status.PAUSED,
             Status.NO_DATA]
    lower = row.comparison.net.lower if row.comparison and row.comparison.net.lower is not None else -math.inf
    return order.index(row.status), -lower


def _stats_row(inputs: BoardInputs, variant: Variant, source: str) -> dict[str, Any]:
    stats = dict(inputs.stats.get((variant.version_id, source), {}))
    stats["n"] = stats.get("n") or 0
    stats["metric_errors"] = stats.get("metric_errors") or 0
    return stats


def _champion_row(inputs: BoardInputs) -> VariantRow:
    champion = inputs.champion
    assert champion is not None
    status_detail = "champion (price unknown)" if champion.version_id in inputs.unpriced else ""
    return VariantRow(version_id=champion.version_id, label=champion.label, role="champion", status=Status.CHAMPION,
                      status_detail=status_detail, **_stats_row(inputs, champion, "live"))


def _challenger_row(inputs: BoardInputs, variant: Variant) -> VariantRow:
    row = VariantRow(version_id=variant.version_id, label=variant.label, role="challenger", kind=variant.kind,
                     status=Status.COLLECTING, not_run=inputs.not_run.get(variant.version_id, 0),
                     **_stats_row(inputs, variant, "shadow"))
    if inputs.champion is not None and variant.version_id in inputs.alphas:
        row.comparison = _comparison(inputs, variant, row)
    row.status, row.status_detail = _status(inputs, variant, row)
    return row


def _comparison(inputs: BoardInputs, variant: Variant, row: VariantRow) -> Comparison:
    scoring = inputs.scoring
    alpha = inputs.alphas[variant.version_id]
    moments = inputs.moments.get(variant.version_id, {})
    floor = scoring.variance_floor_fraction * scoring.value_per_point ** 2
    before = (inputs.previous or {}).get(variant.version_id)
    intervals = {m: _interval(moments.get(m), alpha, scoring.min_samples, floor if m == "net" else 0.0,
                              (before.pairs, getattr(before, m)) if before else None)
                 for m in ("net", "quality", "cost")}
    champion = _stats_row(inputs, inputs.champion, "live")  # type: ignore[arg-type]
    control_p95 = _control_p95(inputs)
    return Comparison(
        pairs=int(moments["net"].n) if "net" in moments else 0, alpha=alpha, net=intervals["net"],
        quality=intervals["quality"], cost=intervals["cost"],
        error_rate_delta=error_rate_delta(row.error_rate, champion.get("error_rate")),
        p95_latency_ratio=latency_ratio(row.p95_latency_ms, control_p95),
        latency_baseline="control" if control_p95 else "none",
    )


def _interval(moments: PairedMoments | None, alpha: float, min_samples: int, floor: float,
              before: tuple[int, Interval] | None) -> Interval:
    """This look's interval, intersected with the one `before` (pairs, interval) from min_samples on."""
    if moments is None or moments.n == 0:
        return Interval()
    lower, upper = confidence_interval(moments, alpha, min_samples, floor)
    if before is not None:
        pairs, earlier = before
        lows, highs = running_intersection([pairs, moments.n], [_bound(earlier.lower, -math.inf), lower],
                                           [_bound(earlier.upper, math.inf), upper], min_samples)
        lower, upper = lows[-1], highs[-1]
    finite = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
    return Interval(mean=float(moments.mean), lower=finite(lower), upper=finite(upper))


def _bound(value: float | None, missing: float) -> float:
    """A stored bound, or the infinity it stands for when there is none."""
    return missing if value is None else value


def _control_p95(inputs: BoardInputs) -> float | None:
    """The p95 latency of the champion's control replays, the only like-for-like latency baseline."""
    if inputs.champion is None:
        return None
    return inputs.stats.get((inputs.champion.version_id, "control"), {}).get("p95_latency_ms") or None


def _latency_guardrail(inputs: BoardInputs) -> str:
    """One sentence: whether the p95 latency guardrail was applied, against what, or why not."""
    limit = inputs.scoring.max_p95_latency_ratio
    if limit is None:
        return "p95 latency guardrail off: scoring.max_p95_latency_ratio is not set."
    control_p95 = _control_p95(inputs)
    if control_p95:
        return (f"p95 latency guardrail applied: each challenger's p95 may be at most {limit:g}× the p95 of the "
                f"champion's control replays ({control_p95:,.0f} ms), both measured under replay load.")
    if inputs.control_rate:
        why = (f"no control replay of the champion (shadow.champion_control_rate {inputs.control_rate:g}) has been "
               "answered in this period yet, and live latencies are not comparable with replayed ones.")
    else:
        why = ("the champion is not replayed as a control (shadow.champion_control_rate is 0), and live latencies "
               "are not comparable with replayed ones; set shadow.champion_control_rate above 0 to apply it.")
    return f"p95 latency guardrail not applied: {why}"


def _status(inputs: BoardInputs, variant: Variant, row: VariantRow) -> tuple[Status, str]:
    """The status a challenger earns, most blocking reason first."""
    scoring = inputs.scoring
    if variant.version_id in inputs.paused:
        return Status.PAUSED, "paused"
    if variant.version_id in inputs.unpriced or (inputs.champion and inputs.champion.version_id in inputs.unpriced):
        return Status.PRICE_UNKNOWN, "price unknown"
    if inputs.champion is None:
        return Status.COLLECTING, "collecting (no champion to compare with)"
    comparison = row.comparison
    if comparison is None or comparison.pairs == 0:
        return (Status.NO_DATA, "no data") if row.n == 0 else (Status.COLLECTING, f"collecting (0/{scoring.min_samples})")
    if comparison.pairs < scoring.min_samples:
        return Status.COLLECTING, f"collecting ({comparison.pairs}/{scoring.min_samples})"
    net = comparison.net
    result = bounds_verdict(comparison.pairs, _bound(net.lower, -math.inf), _bound(net.upper, math.inf),
                            scoring.min_samples, scoring.min_effect_usd)
    if result == Verdict.WORSE:
        return Status.WORSE, "worse"
    if result == Verdict.READY:
        broken = broken_guardrail(scoring, comparison.error_rate_delta, comparison.p95_latency_ratio)
        if broken:
            return Status.GUARDRAIL, f"guardrail: {broken}"
        return Status.READY, "ready" if row.promotable else "ready (shadow only)"
    return Status.COLLECTING, "collecting (inconclusive)"
