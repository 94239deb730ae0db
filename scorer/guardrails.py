"""Guardrails: the limits a variant must hold against the one it would replace, whatever its net value.

The leaderboard holds a challenger to them before calling it ready, and the daemon's watch
task holds a newly promoted champion to them against its predecessor on live traffic; both
ask here, so the two can never disagree on what breaks a guardrail.
"""

from __future__ import annotations

from registry.workspace_config import ScoringConfig

ERROR_RATE = "error rate"
P95_LATENCY = "p95 latency"


def broken_guardrail(scoring: ScoringConfig, error_rate_delta: float | None,
                     p95_latency_ratio: float | None) -> str | None:
    """Which guardrail a variant breaks (`error rate`, `p95 latency`), or None; a measurement
    that is missing (None) breaks nothing."""
    if error_rate_delta is not None and error_rate_delta > scoring.max_error_rate_increase:
        return ERROR_RATE
    limit = scoring.max_p95_latency_ratio
    if limit is not None and p95_latency_ratio is not None and p95_latency_ratio > limit:
        return P95_LATENCY
    return None


def error_rate_delta(error_rate: float | None, baseline: float | None) -> float | None:
    """How much higher `error_rate` is than the baseline's, when both are known."""
    return None if error_rate is None or baseline is None else error_rate - baseline


def latency_ratio(p95_ms: float | None, baseline_ms: float | None) -> float | None:
    """`p95_ms` as a multiple of the baseline's, when both are known (and the baseline is not 0)."""
    return None if p95_ms is None or not baseline_ms else p95_ms / baseline_ms
