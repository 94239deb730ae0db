"""Each slot's daily shadow budget (USD, UTC day), held against the calls a run makes."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable

import duckdb

from registry import utcnow


class DailyBudget:
    """Each slot's daily USD cap: spend so far today plus what calls in flight are expected to cost.

    The first calls of a variant are estimated from its price and the request size (output
    at its cap); once some have finished, from their mean cost. When the next call would
    cross the cap while others are still in flight, the decision waits for them to settle,
    so a high early estimate never turns work away that the cap allows. An unpriced model
    costs 0 here: its spend is unknown and cannot be held against the cap.
    """

    def __init__(self, limits: dict[str, float], spent: dict[str, float]) -> None:
        self._limits = limits
        self._committed: defaultdict[str, float] = defaultdict(float, spent)
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._cost_sum: defaultdict[str, float] = defaultdict(float)
        self._cost_count: defaultdict[str, int] = defaultdict(int)
        self._settled = asyncio.Event()

    def estimate(self, version_id: str, first_guess: Callable[[], float]) -> float:
        """What the variant's next call may cost: the mean of its calls so far, else `first_guess()`."""
        count = self._cost_count[version_id]
        return self._cost_sum[version_id] / count if count else first_guess()

    async def reserve(self, slot: str, estimate: float) -> str | None:
        """Hold `estimate` against the slot's cap; the not-run reason once the cap is reached."""
        limit = self._limits[slot]
        while (committed := self._committed[slot]) >= limit or committed + estimate > limit:
            if not self._in_flight[slot]:
                return f"budget: slot {slot!r} reached its daily shadow budget of ${limit:g} (UTC day)"
            self._settled.clear()
            await self._settled.wait()
        self._committed[slot] = committed + estimate
        self._in_flight[slot] += 1
        return None

    def settle(self, slot: str, version_id: str, estimate: float, actual: float | None) -> None:
        """Replace a call's estimate by what it cost."""
        self._committed[slot] += (actual or 0.0) - estimate
        self._in_flight[slot] -= 1
        if actual is not None:
            self._cost_sum[version_id] += actual
            self._cost_count[version_id] += 1
        self._settled.set()


def spent_today(connection: duckdb.DuckDBPyConnection, slots: list[str]) -> dict[str, float]:
    """Each slot's shadow spend since 00:00 UTC, from the results written so far."""
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    rows = connection.execute(
        "SELECT v.slot, coalesce(sum(s.cost_usd), 0) FROM shadow_results s JOIN variants v USING (version_id) "
        "WHERE s.finished_at >= ? AND list_contains(?, v.slot) GROUP BY v.slot",
        [midnight, slots],
    ).fetchall()
    return {slot: float(spent) for slot, spent in rows}
