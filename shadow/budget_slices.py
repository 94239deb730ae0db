"""Daily USD caps shared by every runner on every host: slices reserved from PostgreSQL, spent locally.

On one host a `DailyCap` holds the slot's (or the judge's) whole daily cap. With several
runners, the cap of a scope ("shadow/<slot>", "judge/<metric>") and UTC day is one row of
`budget_days`; a runner reserves a slice of what is left (about `SLICE_S` seconds of its
recent spend, at least `MIN_CALLS_PER_SLICE` calls' estimates, never more than is left) with
one row-locked update, spends it under the same rule as `DailyCap` (the estimates of calls
in flight are held against it), tops it up when it runs out, and gives the unused rest back
when its run ends. `SlicedCap` has `DailyCap`'s interface, so a `DailyBudget` spends either.

Overshoot bound. The slices granted for a scope and day never add up to more than its
limit, and a runner never starts a call its slices cannot cover, so the spend across all
runners passes the limit only by what calls cost beyond their estimates (as on one host).
A limit lowered during the day binds new slices only: the slices already out (at most one
per runner in flight, plus less than one call's estimate) may still be spent. The other way,
a slice held by one runner is not available to another until it is given back, and a runner
killed while holding a slice leaks its unspent rest for the rest of that day: at most one
slice per crash, counted as spent (the cap then under-spends, never over-spends). A run
keeps the UTC day it started with, as `DailyBudget` does on one host.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

SLICE_S = 10.0
"""A slice is about this many seconds of the runner's recent spend."""
MIN_CALLS_PER_SLICE = 4
"""...and at least this many of the next call's estimate, so a slow runner does not ask for every call."""
RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class BudgetDay:
    """One scope's cap on one UTC day: its limit, what slices hold (spent or not), what was reported spent."""

    limit_usd: float
    allotted_usd: float
    spent_usd: float

    @property
    def left_usd(self) -> float:
        return self.limit_usd - self.allotted_usd


class BudgetLedger:
    """The `budget_days` rows, on this runner's psycopg connection (each call is one transaction)."""

    def __init__(self, connection: "psycopg.Connection") -> None:
        self.connection = connection

    def reserve(self, scope: str, day: date, limit_usd: float, want_usd: float, spent_before_usd: float = 0.0) -> float:
        """Grant up to `want_usd` of what the day has left (0 when nothing is left).

        The row is created at the first reservation of the day with `limit_usd`, counting
        `spent_before_usd` (spend recorded before the ledger held this day) as allotted; a
        later reservation updates the limit (a reloaded config).
        """
        with self.connection.transaction():
            allotted = self.connection.execute(
                "INSERT INTO budget_days (scope, day, limit_usd, allotted_usd, spent_usd) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (scope, day) DO UPDATE SET limit_usd = excluded.limit_usd RETURNING allotted_usd",
                [scope, day, limit_usd, spent_before_usd, spent_before_usd]).fetchone()[0]
            granted = max(0.0, min(want_usd, limit_usd - allotted))
            if granted:
                self.connection.execute("UPDATE budget_days SET allotted_usd = allotted_usd + %s "
                                        "WHERE scope = %s AND day = %s", [granted, scope, day])
        return granted

    def give_back(self, scope: str, day: date, unused_usd: float, spent_usd: float) -> None:
        """Return a slice's unused rest and report what was spent of it (a negative rest: calls cost
        more than estimated, and the day is charged for it)."""
        with self.connection.transaction():
            self.connection.execute(
                "UPDATE budget_days SET allotted_usd = allotted_usd - %s, spent_usd = spent_usd + %s "
                "WHERE scope = %s AND day = %s", [unused_usd, spent_usd, scope, day])

    def day(self, scope: str, day: date) -> BudgetDay | None:
        """The scope's row for the day, or None before its first reservation."""
        with self.connection.transaction():
            row = self.connection.execute("SELECT limit_usd, allotted_usd, spent_usd FROM budget_days "
                                          "WHERE scope = %s AND day = %s", [scope, day]).fetchone()
        return BudgetDay(*row) if row else None


class SlicedCap:
    """A `DailyCap` whose room is slices of the scope's shared cap, reserved as it spends.

    `reserve(estimate)` holds an estimate against the slices held, topping them up from the
    ledger when they run short; `settle` replaces it by the actual cost; `release()` (when
    no call is in flight) gives the unused rest back. Ledger calls run in a worker thread.
    """

    def __init__(self, ledger: BudgetLedger, scope: str, day: date, limit_usd: float,
                 spent_before_usd: float = 0.0) -> None:
        self.ledger = ledger
        self.scope = scope
        self.day = day
        self.limit = limit_usd
        self.spent_before = spent_before_usd
        self.held = 0.0
        """The slices granted to this cap and not given back."""
        self.committed = 0.0
        """Spent, plus the estimates of the calls in flight."""
        self.spent = 0.0
        self.in_flight = 0
        self.exhausted = False
        self._settled = asyncio.Event()
        self._asking = asyncio.Lock()
        self._recent: deque[tuple[float, float]] = deque()
        self._started = time.monotonic()

    async def reserve(self, estimate: float) -> bool:
        """Hold `estimate` for a call; False when the day's cap has no room left and no call in flight could make some."""
        while self.committed + estimate > self.held:
            if await self._top_up(estimate):
                continue
            if not self.in_flight:
                self.exhausted = True
                return False
            self._settled.clear()
            await self._settled.wait()
        self.committed += estimate
        self.in_flight += 1
        return True

    def settle(self, estimate: float, actual: float | None) -> None:
        """Replace a call's estimate by what it cost (an unknown cost counts as 0, as in `DailyCap`)."""
        cost = actual or 0.0
        self.committed += cost - estimate
        self.spent += cost
        self.in_flight -= 1
        self._recent.append((time.monotonic(), cost))
        self._settled.set()

    async def release(self) -> None:
        """Give the unused rest of the slices back and report the spend (call when no call is in flight)."""
        if self.in_flight:
            raise RuntimeError(f"budget {self.scope}: {self.in_flight} calls still in flight; release after they settle")
        unused, spent = self.held - self.committed, self.spent
        if unused or spent:
            await asyncio.to_thread(self.ledger.give_back, self.scope, self.day, unused, spent)
        self.held, self.committed, self.spent = 0.0, 0.0, 0.0

    async def _top_up(self, estimate: float) -> bool:
        """Reserve the next slice (one request at a time: the ledger's connection is not shared); whether there is room now."""
        async with self._asking:
            if self.committed + estimate <= self.held:
                return True  # another call's top-up made room
            granted = await asyncio.to_thread(self.ledger.reserve, self.scope, self.day, self.limit,
                                              self.slice_usd(estimate), self.spent_before)
            self.held += granted
            return granted > 0

    def slice_usd(self, estimate: float) -> float:
        """How much to ask for: about `SLICE_S` of recent spend, at least `MIN_CALLS_PER_SLICE` estimates."""
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        window = min(RATE_WINDOW_S, max(1.0, now - self._started))
        rate = sum(cost for _, cost in self._recent) / window
        return max(MIN_CALLS_PER_SLICE * estimate, rate * SLICE_S, self.committed + estimate - self.held)
