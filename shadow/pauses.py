"""Pausing shadow spend: one challenger by version id, or everything (scope `all`).

A pause is a row of the `pauses` table with who set it and why. The runner re-reads the
pauses every few seconds; what it would have run for a paused challenger is
recorded as `not_run` with the pause as its reason, so the record says why a challenger
has no answer to a request. Resuming lets new work run; it does not re-run those rows.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
from pydantic import BaseModel

from registry import Refused, Registry, utcnow
from registry.records import UtcDatetime

ALL = "all"
VERSION = "version"
EVERYTHING = "*"


class Pause(BaseModel):
    """One pause: scope `all` (target `*`) or `version` (target a version id)."""

    scope: str
    target: str
    actor: str
    reason: str | None
    since: UtcDatetime

    def describe(self) -> str:
        """E.g. `flash-20261121-9c8d7e6f paused by alice since 2026-11-21 09:00 UTC: provider incident`."""
        return f"{self.target if self.scope == VERSION else 'all shadow spend'} {self._by()}"

    def not_run_reason(self) -> str:
        """The `error` of a result this pause kept from running (the challenger is in the row already)."""
        return f"paused: {'challenger' if self.scope == VERSION else 'all shadow spend'} {self._by()}"

    def _by(self) -> str:
        because = f": {self.reason}" if self.reason else ""
        return f"paused by {self.actor} since {self.since:%Y-%m-%d %H:%M} UTC{because}"


class PauseSet:
    """The pauses in force, as the runner asks about them: why, if at all, is this challenger paused?"""

    def __init__(self, pauses: list[Pause]) -> None:
        self._all = next((p for p in pauses if p.scope == ALL), None)
        self._versions = {p.target: p for p in pauses if p.scope == VERSION}

    def reason_for(self, version_id: str) -> str | None:
        """The `not_run` reason for a call to this challenger, or None when it may run."""
        pause = self.pause_of(version_id)
        return pause.not_run_reason() if pause else None

    def pause_of(self, version_id: str) -> Pause | None:
        """The pause that holds this challenger: the pause of everything first, else its own."""
        return self._all or self._versions.get(version_id)

    def paused(self, version_ids: Iterable[str]) -> set[str]:
        """Which of these challengers are paused (every one while everything is)."""
        return {version_id for version_id in version_ids if self.pause_of(version_id)}


def read_pauses(connection: duckdb.DuckDBPyConnection) -> list[Pause]:
    """Every pause in force; call with the database held."""
    rows = connection.execute(
        "SELECT scope, target, actor, reason, since FROM pauses ORDER BY scope, target"
    ).fetchall()
    return [Pause(scope=s, target=t, actor=a, reason=r, since=at) for s, t, a, r, at in rows]


def list_pauses(registry: Registry) -> list[Pause]:
    """Every pause in force."""
    with registry.database.reading() as connection:
        return read_pauses(connection)


def pause(registry: Registry, version_id: str | None, actor: str, reason: str | None) -> Pause:
    """Pause one challenger, or all shadow spend when `version_id` is None (again = new actor and reason)."""
    scope, target = _scope(registry, version_id)
    new = Pause(scope=scope, target=target, actor=actor, reason=reason, since=utcnow())
    with registry.database.transaction() as connection:
        connection.execute(
            "INSERT OR REPLACE INTO pauses (scope, target, actor, reason, since) VALUES (?, ?, ?, ?, ?)",
            [new.scope, new.target, new.actor, new.reason, new.since],
        )
    return new


def resume(registry: Registry, version_id: str | None) -> Pause | None:
    """Lift the pause of one challenger, or the pause of everything; returns what was lifted."""
    scope, target = _target(version_id)
    with registry.database.transaction() as connection:
        lifted = [p for p in read_pauses(connection) if p.scope == scope and p.target == target]
        connection.execute("DELETE FROM pauses WHERE scope = ? AND target = ?", [scope, target])
    return lifted[0] if lifted else None


def _scope(registry: Registry, version_id: str | None) -> tuple[str, str]:
    """Check that the version can be paused: it exists and is not the champion."""
    if version_id is None:
        return _target(None)
    variant = registry.variant(version_id)
    champion = registry.champion(variant.slot)
    if champion is not None and champion.version_id == version_id:
        raise Refused(
            f"{version_id} is the champion of slot {variant.slot!r}: it answers users and has no shadow "
            "calls to pause (use `shadowzoo pause --all` to stop all shadow spend)"
        )
    return _target(variant.version_id)


def _target(version_id: str | None) -> tuple[str, str]:
    """The (scope, target) row key of a pause: one version, or everything when `version_id` is None."""
    return (VERSION, version_id) if version_id is not None else (ALL, EVERYTHING)
