"""Daily USD caps (UTC day) held against calls in flight: each slot's shadow budget and each judge's.

The shadow runner and the judge spend under the same rule, so it lives here once: today's
spend plus what the calls in flight are expected to cost must leave room for the next call.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime

import duckdb

from registry import utc_day_start


USD_TOLERANCE = 1e-9
"""Sums of float costs drift by far less than this: a call that fits a cap to within it fits (else a
cap could refuse the call that fills it exactly, leaving its last cent unspent)."""


class DailyCap:
    """One daily USD cap: today's spend plus the estimates of the calls in flight must leave room for the next.

    When the next call does not fit while others are in flight, it waits for them to settle
    (they usually cost less than estimated), so a high estimate never turns work away that
    the cap allows; when none are in flight it is refused, and the cap says it was `exhausted`.
    """

    def __init__(self, limit_usd: float, spent_usd: float) -> None:
        self.limit = limit_usd
        self.committed = spent_usd
        self.in_flight = 0
        self.exhausted = False
        self._settled = asyncio.Event()

    async def reserve(self, estimate: float) -> bool:
        """Hold `estimate` for a call; False when the cap leaves no room and no call in flight could make some."""
        while not await self._room(estimate):
            if not self.in_flight:
                self.exhausted = True
                return False
            self._settled.clear()
            await self._settled.wait()
        self.committed += estimate
        self.in_flight += 1
        return True

    async def _room(self, estimate: float) -> bool:
        """Whether `estimate` fits now (a cap shared across runners may reserve more first: `shadow.budget_slices`)."""
        return self.committed < self.limit and self.committed + estimate <= self.limit + USD_TOLERANCE

    def settle(self, estimate: float, actual: float | None) -> None:
        """Replace a call's estimate by what it cost (an unknown cost counts as 0: it cannot be held against the cap)."""
        self.committed += (actual or 0.0) - estimate
        self.in_flight -= 1
        self._settled.set()

    async def release(self) -> None:
        """Give back what the cap holds beyond its spend: nothing on one host (a shared cap's slices:
        `shadow.budget_slices`). Called at the end of a run, once no call is in flight."""


CapFactory = Callable[[str, float, float], DailyCap]
"""Makes the cap of one slot from (slot, daily limit, spent today): where a cap's room comes from."""


def local_cap(slot: str, limit_usd: float, spent_usd: float) -> DailyCap:
    """The cap of a slot on one host: the whole daily limit, less today's spend."""
    return DailyCap(limit_usd, spent_usd)


class DailyBudget:
    """Each slot's daily shadow cap, with what each variant's next call may cost.

    The first calls of a variant are estimated from its price and the request size (output
    at its cap); once some have finished, from their mean cost. An unpriced model costs 0
    here: its spend is unknown and cannot be held against the cap.
    """

    def __init__(self, limits: dict[str, float], spent: dict[str, float], cap: CapFactory | None = None) -> None:
        make = cap or local_cap
        self._caps = {slot: make(slot, limit, spent.get(slot, 0.0)) for slot, limit in limits.items()}
        self._cost_sum: defaultdict[str, float] = defaultdict(float)
        self._cost_count: defaultdict[str, int] = defaultdict(int)

    def estimate(self, version_id: str, first_guess: Callable[[], float]) -> float:
        """What the variant's next call may cost: the mean of its calls so far, else `first_guess()`."""
        count = self._cost_count[version_id]
        return self._cost_sum[version_id] / count if count else first_guess()

    async def reserve(self, slot: str, estimate: float) -> str | None:
        """Hold `estimate` against the slot's cap; the not-run reason once the cap is reached."""
        cap = self._caps[slot]
        if await cap.reserve(estimate):
            return None
        return f"budget: slot {slot!r} reached its daily shadow budget of ${cap.limit:g} (UTC day)"

    def settle(self, slot: str, version_id: str, estimate: float, actual: float | None) -> None:
        """Replace a call's estimate by what it cost."""
        self._caps[slot].settle(estimate, actual)
        if actual is not None:
            self._cost_sum[version_id] += actual
            self._cost_count[version_id] += 1

    async def release(self) -> None:
        """At the end of a run: each cap without a call in flight gives back what it holds beyond its
        spend (a cap left with calls in flight, after a failure, keeps it, as a crash would)."""
        for cap in self._caps.values():
            if not cap.in_flight:
                await cap.release()


def spent_today(connection: duckdb.DuckDBPyConnection, now: datetime | None = None) -> dict[str, float]:
    """Each slot's shadow spend this UTC day (of `now`, by default the current time), from the results written.

    A result counts for the slot of the challenger that answered; this is what the runner
    holds against the cap and what status reports as the budget left.
    """
    rows = connection.execute(
        "SELECT v.slot, coalesce(sum(s.cost_usd), 0) FROM shadow_results s JOIN variants v USING (version_id) "
        "WHERE s.finished_at >= ? GROUP BY v.slot",
        [utc_day_start(now)],
    ).fetchall()
    return {slot: float(spent) for slot, spent in rows}


def budget_left(connection: duckdb.DuckDBPyConnection, limits: dict[str, float],
                now: datetime | None = None) -> dict[str, float]:
    """Each slot's shadow budget left this UTC day: its `daily_budget_usd` less `spent_today`."""
    spent = spent_today(connection, now)
    return {slot: limit - spent.get(slot, 0.0) for slot, limit in limits.items()}
