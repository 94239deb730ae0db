"""What a training run spends: dollars per call against `max_cost_usd`, calls, and time waiting on models."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from registry.workspace_config import Price
from shadow.pricing import cost_usd, price_of
from shadow.providers import ChatResult


class BudgetExhausted(Exception):
    """Spend reached `max_cost_usd`: stop before the next model call's stage completes."""


class Meter:
    """Spend, calls, and wall time spent with at least one model call in flight."""

    def __init__(self, prices: dict[str, Price], max_cost_usd: float | None, saved: dict[str, Any] | None = None) -> None:
        saved = saved or {}
        self.prices = prices
        self.max_cost_usd = max_cost_usd
        self.spent_usd: float = saved.get("spent_usd", 0.0)
        self.unpriced_calls: int = saved.get("unpriced_calls", 0)
        self.target_calls: int = saved.get("target_calls", 0)
        self.target_failures: int = saved.get("target_failures", 0)
        self.waiting_s = 0.0
        self._in_flight = 0
        self._since = 0.0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Count wall time while any model call is outstanding (concurrent calls overlap)."""
        if self._in_flight == 0:
            self._since = time.perf_counter()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self.waiting_s += time.perf_counter() - self._since

    def charge(self, model: str, result: ChatResult) -> None:
        cost = cost_usd(price_of(self.prices, model), result.usage)
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.spent_usd += cost

    def check(self) -> None:
        if self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd:
            raise BudgetExhausted(f"spent ${self.spent_usd:.4f} of max_cost_usd ${self.max_cost_usd:g}")

    def saved(self) -> dict[str, Any]:
        return {"spent_usd": self.spent_usd, "unpriced_calls": self.unpriced_calls,
                "target_calls": self.target_calls, "target_failures": self.target_failures}
