"""Slices: the leaderboard of the requests that carry given tags (`leaderboard --where k=v`).

A slice view computes the descriptive columns afresh over the slice's answers, and pairs
each challenger with the champion on the slice's pairs of the current period: the pairs
the period already holds (`paired`), whose request carries every tag. The statistics are
the period's (the same confidence sequence), at an α of the slice's own: the k-th distinct
slice looked at in a period gets α·6/(π²k²) of the slot's α, fixed the first time it is
looked at (`period_slices`), and splits it among the challengers as the period does. So
slices, however many are looked at, never take from the period's α nor from each other's.

A slice view stores no snapshot: the period's evidence and its running intersection are
left exactly as they were, and each slice look's interval stands on its own.
"""

from __future__ import annotations

import duckdb

from registry import utcnow
from registry.db import sql_literal
from scorer.leaderboard_model import Slice
from scorer.pairing import Moments, period_moments
from scorer.periods import Period
from scorer.sequential import alpha_share
from shadow.tags import where_text

Where = dict[str, str]
"""Tag conditions: a request is in the slice when it carries every key with that value."""


def tags_sql(where: Where, column: str = "tags") -> str:
    """The SQL condition on a traffic row's tags `column` selecting the slice (true for no conditions)."""
    return " AND ".join(f"{column}[{sql_literal(key)}] = {sql_literal(value)}"
                        for key, value in sorted(where.items())) or "true"


def slice_of(db: duckdb.DuckDBPyConnection, period: Period | None, where: Where, alpha: float) -> Slice:
    """The slice's α share in the period: assigned the first time it is looked at, then kept (none without
    a period: without a champion nothing is paired)."""
    text = where_text(where)
    if period is None:
        return Slice(where=where, position=0, alpha=0.0, note=f"slice {text}: the descriptive columns cover the "
                                                              "slice only; without a champion nothing is paired.")
    row = db.execute("SELECT position, alpha FROM period_slices WHERE period_id = ? AND slice = ?",
                     [period.period_id, text]).fetchone()
    if row is None:
        position = db.execute("SELECT count(*) FROM period_slices WHERE period_id = ?",
                              [period.period_id]).fetchone()[0] + 1
        row = (position, alpha * alpha_share(position))
        db.execute("INSERT INTO period_slices VALUES (?, ?, ?, ?, ?)", [period.period_id, text, *row, utcnow()])
    position, share = row
    return Slice(where=where, position=position, alpha=share, note=(
        f"slice {text}: its own α share, {share:.4g} (the slot's α × 6/(π²·{position}²): slice {position} looked "
        "at in this period), split among challengers as the period's α is; the pairs are the period's pairs of "
        "this slice, each look's interval stands alone (no running intersection, nothing stored), and the "
        "descriptive columns cover the slice only. Promotion acts on the whole period's evidence."))


def slice_moments(db: duckdb.DuckDBPyConnection, period_id: int, where: Where) -> Moments:
    """Count, mean and M2 of the slice's pairs in the period, per challenger and measure."""
    return period_moments(db, period_id, f"request_seq IN (SELECT seq FROM traffic WHERE {tags_sql(where)})")


def slice_alphas(alphas: dict[str, float], slot_alpha: float, part: Slice) -> dict[str, float]:
    """Each challenger's α in the slice: its share of the period's α, applied to the slice's α."""
    return {version_id: alpha * part.alpha / slot_alpha for version_id, alpha in alphas.items()}
