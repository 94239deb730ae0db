"""A benchmark's figures: latency summaries, ratios, targets, and the one JSON object it prints."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def summary(latencies_ms: list[float]) -> dict[str, float | int | None]:
    """n, p50, p90, p99, mean and max of a latency sample, in ms."""
    if not latencies_ms:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    values = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"n": len(values), "p50": round3(p50), "p90": round3(p90), "p99": round3(p99),
            "mean": round3(values.mean()), "max": round3(values.max())}


def round3(value: float) -> float:
    return round(float(value), 3)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator to 3 decimals; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round3(numerator / denominator)


def target_check(value: float | None, limit: float, at_most: bool) -> dict[str, Any]:
    """A figure beside its target, and whether it is met."""
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, "target": f"{'<=' if at_most else '>='} {limit:g}", "met": met}


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()
