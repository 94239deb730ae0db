"""The gate: does a candidate skill beat the current one on the selection split?

Both skills answer the same selection items, so the comparison is paired. `paired` accepts
only when the gain is positive beyond noise: an exact one-sided sign test on the items
where the two differ (McNemar's exact test when scores are 0/1) must reject "no
difference" at `alpha`. `strict` is the published rule: a strictly higher mean, no test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

GateKind = Literal["paired", "strict"]
TIE = 1e-9


@dataclass(frozen=True)
class GateDecision:
    """The verdict on one candidate, with the evidence behind it."""

    accepted: bool
    candidate_mean: float
    current_mean: float
    wins: int
    losses: int
    p_value: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_test_p(wins: int, losses: int) -> float:
    """P(at least `wins` wins out of wins + losses fair coin flips): the one-sided exact sign test."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def decide(kind: GateKind, candidate: list[float], current: list[float], alpha: float) -> GateDecision:
    """Compare per-item scores of the candidate and the current skill on the same items."""
    if len(candidate) != len(current) or not candidate:
        raise ValueError("the gate needs the same, non-empty items scored for both skills")
    diffs = [a - b for a, b in zip(candidate, current)]
    wins = sum(1 for d in diffs if d > TIE)
    losses = sum(1 for d in diffs if d < -TIE)
    cand_mean, cur_mean = sum(candidate) / len(candidate), sum(current) / len(current)
    if kind == "strict":
        accepted = cand_mean > cur_mean + TIE
        reason = f"mean {cand_mean:.3f} vs {cur_mean:.3f}: {'higher' if accepted else 'not higher'}"
        return GateDecision(accepted, cand_mean, cur_mean, wins, losses, None, reason)
    p = sign_test_p(wins, losses)
    accepted = wins > losses and p < alpha
    verdict = "gain beyond noise" if accepted else "no gain beyond noise"
    reason = f"+{wins}/-{losses} paired, sign test p={p:.3g} vs alpha {alpha:g}: {verdict}"
    return GateDecision(accepted, cand_mean, cur_mean, wins, losses, p, reason)
