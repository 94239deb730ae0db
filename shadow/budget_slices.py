"""Daily USD caps shared by every runner on every host: slices reserved from PostgreSQL, spent locally.

On one host a `DailyCap` holds the slot's (or the judge's) whole daily cap. With several
runners, the cap of a scope ("shadow/<slot>", "judge/<metric>") and UTC day is one row of
`budget_days`; a runner reserves a slice of what is left (about `SLICE_S` seconds of its
recent spend, at least `MIN_CALLS_PER_SLICE` calls' estimates, never more than is left) with
one row-locked update, spends it under the same rule as `DailyCap` (the estimates of calls
in flight are held against it), tops it up when it runs out, and gives the unused rest back
when its run ends. `SlicedCap` is a `DailyCap` (only where its room comes from differs).

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from registry import utcnow
from shadow.budget import USD_TOLERANCE, DailyCap

if TYPE_CHECKING:
    import psycopg

    from registry.workspace_config import DistributedConfig

SLICE_S = 10.0
"""A slice is about this many seconds of the runner's recent spend."""
MIN_CALLS_PER_SLICE = 4
"""...and at least this many of the next call's estimate, so a slow runner does not ask for every call."""
RATE_WINDOW_S = 60.0
PAST_DAYS_KEPT = 7
"""A scope's rows of past UTC days are kept this many days (a run keeps the day it started with, never this long)."""


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

    def forget_past_days(self, kept_days: int = PAST_DAYS_KEPT) -> int:
        """Delete every scope's rows of UTC days more than `kept_days` before today; returns how many."""
        with self.connection.transaction():
            return self.connection.execute(
                "DELETE FROM budget_days WHERE day < (now() AT TIME ZONE 'UTC')::date - %s", [kept_days]).rowcount


class SlicedCap(DailyCap):
    """A `DailyCap` whose room is slices of the scope's shared cap, reserved as it spends.

    `reserve(estimate)` holds an estimate against the slices held, topping them up from the
    ledger when they run short; `settle` replaces it by the actual cost; `release()` (when
    no call is in flight) gives the unused rest back. Ledger calls run in a worker thread.
    """

    def __init__(self, ledger: BudgetLedger, scope: str, day: date, limit_usd: float,
                 spent_before_usd: float = 0.0) -> None:
        super().__init__(limit_usd, 0.0)
        self.ledger = ledger
        self.scope = scope
        self.day = day
        self.spent_before = spent_before_usd
        self.held = 0.0
        """The slices granted to this cap and not given back (`committed`: spent, plus the estimates in flight)."""
        self.spent = 0.0
        self._asking = asyncio.Lock()
        self._recent: deque[tuple[float, float]] = deque()
        self._started = time.monotonic()

    async def _room(self, estimate: float) -> bool:
        """Whether `estimate` fits the slices held, reserving the next slice when it does not (one
        request at a time: the ledger's connection is not shared between threads)."""
        async with self._asking:
            if self.committed + estimate > self.held + USD_TOLERANCE:
                self.held += await asyncio.to_thread(self.ledger.reserve, self.scope, self.day, self.limit,
                                                     self.slice_usd(estimate), self.spent_before)
            return self.committed + estimate <= self.held + USD_TOLERANCE

    def settle(self, estimate: float, actual: float | None) -> None:
        super().settle(estimate, actual)
        self.spent += actual or 0.0
        self._recent.append((time.monotonic(), actual or 0.0))

    async def release(self) -> None:
        """Give the unused rest of the slices back and report the spend (call when no call is in flight)."""
        if self.in_flight:
            raise RuntimeError(f"budget {self.scope}: {self.in_flight} calls still in flight; release after they settle")
        unused, spent = self.held - self.committed, self.spent
        if unused or spent:
            await asyncio.to_thread(self.ledger.give_back, self.scope, self.day, unused, spent)
        self.held, self.committed, self.spent = 0.0, 0.0, 0.0

    def slice_usd(self, estimate: float) -> float:
        """How much to ask for: about `SLICE_S` of recent spend, at least `MIN_CALLS_PER_SLICE` estimates."""
        now = time.monotonic()
        while self._recent and now - self._recent[0][0] > RATE_WINDOW_S:
            self._recent.popleft()
        window = min(RATE_WINDOW_S, max(1.0, now - self._started))
        rate = sum(cost for _, cost in self._recent) / window
        return max(MIN_CALLS_PER_SLICE * estimate, rate * SLICE_S, self.committed + estimate - self.held)


@contextmanager
def run_cap(config: "DistributedConfig | None", scope: str, limit_usd: float, spent_usd: float) -> Iterator[DailyCap]:
    """The cap of `scope` for one run (a judge's pass): with a distributed `config`, slices of the
    scope's shared cap for today (UTC), on a connection of the run's own, closed after it; without
    one (embedded), the whole cap, less `spent_usd`. The run `release`s it when it ends."""
    if config is None:
        yield DailyCap(limit_usd, spent_usd)
        return
    from registry.control_plane import migrate_control
    from registry.distributed import connect_control

    with connect_control(config, autocommit=True) as connection:
        migrate_control(connection)
        yield SlicedCap(BudgetLedger(connection), scope, utcnow().date(), limit_usd, spent_usd)
