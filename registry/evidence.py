"""What writers of raw rows need to know of the scorer's evidence, without importing the scorer.

The scorer records each slot's evaluation periods and derives, per period, the pairs, their
moments and the descriptive sums from the raw rows, incrementally. The runner needs two
things from that bookkeeping: where the current period starts (traffic received earlier
can never count in it), and a way to make the scorer forget what it derived when a row it
already scored is replaced (its next refresh then rebuilds the period from the rows).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

SCORED_TABLES = ("paired", "worst_pairs", "pair_moments", "answer_stats")
"""The per-period tables the scorer derives from the rows (rebuilt when forgotten)."""


def period_start(db: duckdb.DuckDBPyConnection, slot: str, champion: str, champion_since: datetime) -> datetime:
    """When the slot's current evaluation period started: the recorded period's start when it
    is this champion's, else when the champion took office (where the scorer will open it)."""
    latest = db.execute(
        "SELECT champion_version, started_at FROM evaluation_periods WHERE slot = ? ORDER BY period_id DESC LIMIT 1",
        [slot]).fetchone()
    return latest[1] if latest is not None and latest[0] == champion else champion_since


def forget_scored_evidence(db: duckdb.DuckDBPyConnection, slots: list[str]) -> None:
    """Drop what the scorer derived for the slots' latest periods, and their watermarks, so that
    its next refresh scores each current period afresh from the rows as they are now. Closed
    periods keep their evidence: promotions cited it."""
    if not slots:
        return
    periods = "SELECT max(period_id) FROM evaluation_periods WHERE list_contains(?, slot) GROUP BY slot"
    for table in SCORED_TABLES:
        db.execute(f"DELETE FROM {table} WHERE period_id IN ({periods})", [slots])
    db.execute("DELETE FROM scoring_watermarks WHERE list_contains(?, slot)", [slots])
