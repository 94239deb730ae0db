"""The same traffic on both backends: replaying it, and comparing the leaderboards they make
of it by the numbers a user reads, without what legitimately differs from one run to the next."""

from __future__ import annotations

import asyncio
from typing import Any

from registry import Registry
from scorer.leaderboard_model import Leaderboard
from shadow.runner import ShadowRunner


def replay(registry: Registry) -> None:
    """Every pending pair run once, in this process (the embedded runner)."""
    async def go() -> None:
        async with ShadowRunner(registry) as runner:
            await runner.run_once()

    asyncio.run(go())


def significant(value: Any) -> Any:
    """Floats to 12 significant digits, in any structure: two engines, or two processes with other
    DuckDB thread counts, may sum in another order and differ in the last bits."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {key: significant(item) for key, item in value.items()}
    if isinstance(value, list):
        return [significant(item) for item in value]
    return value


def evidence(board: Leaderboard) -> dict[str, Any]:
    """The board's numbers by variant label, without what differs from run to run (times, latencies, ids)."""
    latency = {"p50_latency_ms", "p95_latency_ms"}
    return {row.label: significant(row.model_dump(mode="json", exclude=latency | {"version_id"}))
            for row in board.rows}


def differences(left: Any, right: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """Where two boards' evidence differ: each differing leaf by its dotted path, with both values."""
    if isinstance(left, dict) and isinstance(right, dict):
        found: dict[str, tuple[Any, Any]] = {}
        for key in left.keys() | right.keys():
            found |= differences(left.get(key), right.get(key), f"{path}.{key}" if path else str(key))
        return found
    return {} if left == right else {path: (left, right)}


def without_bounds(evidence: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[float | None, float | None]]]:
    """A board's evidence without its comparisons' interval bounds, and those bounds ((lower, upper) by
    `label.comparison.measure`). The bounds are the running intersection of every look the scorer
    took in the period, so two scorers that looked at other times differ there and only there."""
    kept, bounds = {}, {}
    for label, row in evidence.items():
        comparison = row.get("comparison") or {}
        intervals = {key: value for key, value in comparison.items() if isinstance(value, dict) and "upper" in value}
        bounds |= {f"{label}.comparison.{key}": (value["lower"], value["upper"]) for key, value in intervals.items()}
        kept[label] = row | ({"comparison": comparison | {key: {"mean": value["mean"]} for key, value in intervals.items()}}
                             if intervals else {})
    return kept, bounds


def within(inner: tuple[float | None, float | None], outer: tuple[float | None, float | None],
           tolerance: float = 1e-9) -> bool:
    """Whether the interval `inner` lies inside `outer` (None: unbounded on that side)."""
    (low, high), (outer_low, outer_high) = inner, outer
    return ((outer_low is None or (low is not None and low >= outer_low - tolerance))
            and (outer_high is None or (high is not None and high <= outer_high + tolerance)))
