"""Promotion policy: a challenger is promoted on evidence, or by force with a reason.

`promote` consults the slot's freshly refreshed leaderboard. The first champion of a slot
needs no evidence (there is nothing to compare with). After that the target must be a
challenger whose status is `ready`; otherwise the promotion is refused with its status
and the numbers behind it. `--force` overrides that, and must say why. Either way the
leaderboard the decision was taken on goes into the audit row.
"""

from __future__ import annotations

from typing import Any

from registry import Refused
from scorer.leaderboard_model import Leaderboard, Status


def promotion_evidence(board: Leaderboard, version_id: str, force: bool) -> dict[str, Any]:
    """The evidence to record for promoting `version_id`; raises `Refused` when it is not ready."""
    evidence = {"forced": force, "leaderboard": board.model_dump(mode="json")}
    if board.champion is None:
        evidence["first_champion"] = True
        return evidence
    row = next((r for r in board.rows if r.version_id == version_id), None)
    if row is None or row.status == Status.READY or force:  # not on the board: the registry says why it cannot serve
        return evidence
    raise Refused(f"{version_id} is not ready to promote: {row.display_status}. {_numbers(row, board)} "
                  f"Promote anyway with --force --reason '...', or wait for more evidence.")


def _numbers(row, board: Leaderboard) -> str:
    comparison = row.comparison
    if comparison is None or comparison.net.mean is None:
        return "It has no paired evidence yet."
    lower = "−∞" if comparison.net.lower is None else f"{comparison.net.lower:+.6f}"
    upper = "+∞" if comparison.net.upper is None else f"{comparison.net.upper:+.6f}"
    return (f"Evidence: {comparison.pairs} pairs (min_samples {board.min_samples}), mean net difference "
            f"{comparison.net.mean:+.6f} USD/request, always-valid interval [{lower}, {upper}] at α={comparison.alpha:.4f}, "
            f"needs lower bound > {board.min_effect_usd} USD.")
