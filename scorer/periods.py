"""Evaluation periods: the span over which evidence accumulates, and each challenger's α share.

A new period starts when the champion changes or when anything that defines the slot's
net value changes: its metrics, its scoring settings, or the prices of its variants'
models. So settings cannot be tuned until a challenger happens to look ready: tuning
restarts the evidence. Each challenger receives a fixed share of α the first time it is
seen in a period (the k-th gets α·6/(π²k²), see `scorer.sequential.alpha_share`), so
challengers that join later never inflate the error of those already running.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from registry import Variant, canonical_json, sha256_text, utcnow
from registry.workspace_config import SlotConfig
from scorer.sequential import alpha_share


@dataclass(frozen=True)
class Period:
    """One evaluation period of a slot."""

    period_id: int
    slot: str
    champion_version: str
    settings_hash: str
    started_at: datetime
    reason: str


def slot_settings(slot: SlotConfig, model_prices: dict[str, Any]) -> dict[str, Any]:
    """Everything that defines a slot's net value and verdicts, as plain data."""
    return {
        "metrics": [m.model_dump(mode="json", by_alias=True) for m in slot.metrics],
        "scoring": slot.scoring.model_dump(mode="json"),
        "prices": model_prices,
    }


def current_period(db: duckdb.DuckDBPyConnection, slot: str, champion: str, champion_since: datetime,
                   settings: dict[str, Any], reserve: Callable[[str, int], None] | None = None) -> Period:
    """The slot's open period, or a new one when the champion or the settings changed.

    A period opened for a new champion starts when that champion took office, so traffic
    it answered before the first scoring run counts; one opened for new settings starts now.
    A new period's id is reserved first with `reserve` when given (`Database.reserve`).
    """
    standing = standing_period(db, slot, champion, settings)
    if standing is not None:
        return standing
    settings_hash = sha256_text(canonical_json(settings))
    latest = _latest(db, slot)
    started_at = champion_since
    if latest is None:
        reason = "first period"
    elif latest[2] != champion:
        reason = f"champion changed: {latest[2]} -> {champion}"
    else:
        reason, started_at = f"settings changed: {_changed_keys(db, latest[0], settings)}", utcnow()
    # the id is taken first: the lake takes no INSERT … RETURNING
    if reserve is not None:
        reserve("period_id", 1)
    period_id = db.execute("SELECT nextval('period_id')").fetchone()[0]
    db.execute(
        "INSERT INTO evaluation_periods (period_id, slot, champion_version, settings_hash, settings_json, reason, "
        "started_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [period_id, slot, champion, settings_hash, json.dumps(settings), reason, started_at],
    )
    return Period(period_id, slot, champion, settings_hash, started_at, reason)


def standing_period(db: duckdb.DuckDBPyConnection, slot: str, champion: str, settings: dict[str, Any]) -> Period | None:
    """The slot's open period if `current_period` would keep it (a read only: no transaction needed)."""
    latest = _latest(db, slot)
    if latest is not None and latest[2] == champion and latest[3] == sha256_text(canonical_json(settings)):
        return Period(*latest)
    return None


def _latest(db: duckdb.DuckDBPyConnection, slot: str) -> tuple | None:
    return db.execute(
        "SELECT period_id, slot, champion_version, settings_hash, started_at, reason FROM evaluation_periods "
        "WHERE slot = ? ORDER BY period_id DESC LIMIT 1", [slot]).fetchone()


def _changed_keys(db: duckdb.DuckDBPyConnection, period_id: int, settings: dict[str, Any]) -> str:
    old = json.loads(db.execute("SELECT settings_json FROM evaluation_periods WHERE period_id = ?", [period_id]).fetchone()[0])
    return ", ".join(key for key in settings if old.get(key) != settings[key]) or "settings"


def challenger_alphas(db: duckdb.DuckDBPyConnection, period: Period, challengers: list[Variant], alpha: float) -> dict[str, float]:
    """Each challenger's α share in the period, assigned once, in order of registration."""
    known = dict(db.execute(
        "SELECT version_id, alpha FROM period_challengers WHERE period_id = ?", [period.period_id]).fetchall())
    position = len(known)
    for variant in sorted(challengers, key=lambda v: (v.created_at, v.version_id)):
        if variant.version_id in known:
            continue
        position += 1
        known[variant.version_id] = alpha * alpha_share(position)
        db.execute("INSERT INTO period_challengers VALUES (?, ?, ?, ?, ?)",
                   [period.period_id, variant.version_id, position, known[variant.version_id], utcnow()])
    return known
