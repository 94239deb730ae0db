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
    """Floats to 12 significant digits (the two engines may sum in another order), in any structure."""
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
