"""The registry: slots, variants, skills, the champion alias and its audit log, in DuckDB.

All writes go through one `Registry` object, which serialises them with a lock and a
transaction, so two promotions of one slot can never lose an update. Every alias move
writes an audit row and then rewrites `routes.json`, the only file the gateway reads.
"""

from __future__ import annotations

import difflib
import json
from datetime import datetime
from typing import Any

import duckdb

from registry.admission import check_new_variant
from registry.workspace import Workspace
from registry.db import Database, utcnow
from registry.errors import ConfigError, NotFound, Refused
from registry.identity import fingerprint, sha256_text, version_id
from registry.records import Move, NewVariant, Registration, Variant
from registry.distributed import host_name
from registry.published_routes import publish_routes
from registry.routes import RouteTable, build_routes, write_routes

CHAMPION = "champion"
_VARIANT_COLUMNS = (
    "version_id, slot, label, kind, config_json, skill_sha, fingerprint, parent, status, "
    "source, spec_path, meta_json, created_at"
)


class Registry:
    """The single entry point to the database for registry data."""

    def __init__(self, workspace: Workspace, database: Database) -> None:
        self.workspace = workspace
        self.database = database
        self._db = database.connection
        self._lock = database.lock
        self._transaction = database.transaction

    @classmethod
    def open(cls, workspace: Workspace, lock_wait_s: float | None = None) -> "Registry":
        """Open the workspace's database (its DuckDB file, or on `backend: distributed` its
        engines), creating and migrating it as needed."""
        config = workspace.config
        if config.backend == "distributed" and config.distributed is not None:
            return cls(workspace, Database.open_distributed(config.distributed, workspace.spill_dir))
        return cls(workspace, Database.open(workspace.db_path, lock_wait_s))

    def close(self) -> None:
        self.database.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- variants ---------------------------------------------------------------------

    def register(self, new: NewVariant) -> Registration:
        """Register a resolved variant; an identical config in the slot returns the existing one.

        Every field is checked first (`check_new_variant`), whoever sends it.
        """
        check_new_variant(new, self.workspace)
        config = dict(new.config)
        skill_sha = None
        if new.skill_text is not None:
            skill_sha = sha256_text(new.skill_text)
            config["skill_sha"] = skill_sha
        config_fp = fingerprint(config)
        with self._transaction() as db:
            existing = self._with_fingerprint(db, new.slot, config_fp)
            if existing is not None:
                return Registration(variant=existing, created=False)
            now = utcnow()
            vid = version_id(new.slot, new.label, now, config_fp)
            if new.parent is not None and self._require_variant(db, new.parent).slot != new.slot:
                raise ConfigError(f"parent: {new.parent} is a variant of another slot than {new.slot!r}")
            if self._exists(db, vid):
                raise Refused(f"version id {vid} is already taken by another variant (their fingerprints share "
                              "a prefix); register this one under another label")
            db.execute("INSERT OR IGNORE INTO slots VALUES (?, ?)", [new.slot, now])
            if skill_sha is not None:
                db.execute("INSERT OR IGNORE INTO skills VALUES (?, ?, ?)", [skill_sha, new.skill_text, now])
            db.execute(
                f"INSERT INTO variants ({_VARIANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    vid, new.slot, new.label, new.kind, json.dumps(config), skill_sha, config_fp,
                    new.parent, "active", new.source, new.spec_path,
                    json.dumps(new.meta) if new.meta is not None else None, now,
                ],
            )
            return Registration(variant=self._require_variant(db, vid), created=True)

    def variant(self, version_id: str) -> Variant:
        """The variant with this id, or an error suggesting close ids."""
        with self._lock:
            return self._require_variant(self._db, version_id)

    def variants(self, slot: str | None = None, status: str | None = None) -> list[Variant]:
        """Variants, oldest first, optionally of one slot and one status."""
        query = f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE 1=1"
        params: list[Any] = []
        if slot is not None:
            query += " AND slot = ?"
            params.append(slot)
        if status is not None:
            query += " AND status = ?"
            params.append(status)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, version_id", params).fetchall()
        return [_variant(row) for row in rows]

    def variant_with_fingerprint(self, slot: str, config_fingerprint: str) -> Variant | None:
        """The variant of `slot` whose resolved config has this fingerprint, if registered."""
        with self._lock:
            return self._with_fingerprint(self._db, slot, config_fingerprint)

    def latest_with_label(self, slot: str, label: str) -> Variant | None:
        """The newest active variant of `slot` registered under `label`."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE slot = ? AND label = ? AND status = 'active' "
                "ORDER BY created_at DESC, version_id DESC LIMIT 1",
                [slot, label],
            ).fetchone()
        return _variant(row) if row else None

    def skill_text(self, sha: str) -> str:
        """The skill document stored under `sha`."""
        with self._lock:
            row = self._db.execute("SELECT content FROM skills WHERE sha = ?", [sha]).fetchone()
        if row is None:
            raise NotFound(f"no skill with sha256 {sha}")
        return row[0]

    def slots(self) -> list[str]:
        """Slots that have at least one registered variant."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT slot FROM slots ORDER BY slot").fetchall()]

    # -- champion alias -----------------------------------------------------------------

    def champion(self, slot: str) -> Variant | None:
        """The slot's current champion, if it has one."""
        with self._lock:
            return self._champion(self._db, slot)

    def champion_since(self, slot: str) -> datetime | None:
        """When the slot's current champion took office."""
        with self._lock:
            rows = self._db.execute(
                "SELECT since FROM aliases WHERE slot = ? AND alias = ?", [slot, CHAMPION]).fetchall()
        return rows[0][0] if rows else None

    def promote(
        self, slot: str, version_id: str, actor: str, reason: str | None, evidence: dict[str, Any] | None
    ) -> Move:
        """Make `version_id` the champion of `slot`; it must be an active chat variant of the slot."""
        with self._transaction() as db:
            target = self._require_variant(db, version_id)
            _check_can_serve(target, slot)
            current = self._champion(db, slot)
            if current is not None and current.version_id == target.version_id:
                raise Refused(f"{version_id} is already the champion of slot {slot!r}")
            move = self._move(db, slot, current, target.version_id, "promote", actor, reason, evidence)
        self.write_routes()
        return move

    def rollback(self, slot: str, actor: str, reason: str | None, evidence: dict[str, Any] | None = None) -> Move:
        """Move the alias back to the champion before the current one."""
        with self._transaction() as db:
            stack = self._champion_stack(db, slot)
            if len(stack) < 2:
                raise Refused(f"slot {slot!r} has no previous champion to roll back to (see `shadowzoo history {slot}`)")
            previous = self._require_variant(db, stack[-2])
            if previous.status != "active":
                raise Refused(
                    f"the previous champion of {slot!r}, {previous.version_id}, is retired; "
                    f"promote an active variant instead (`shadowzoo promote {slot} VERSION`)"
                )
            current = self._champion(db, slot)
            move = self._move(db, slot, current, previous.version_id, "rollback", actor, reason, evidence)
        self.write_routes()
        return move

    def retire(self, version_id: str, actor: str, reason: str | None) -> Move:
        """Stop a variant from being a challenger; the champion cannot be retired."""
        with self._transaction() as db:
            target = self._require_variant(db, version_id)
            if target.status == "retired":
                raise Refused(f"{version_id} is already retired")
            current = self._champion(db, target.slot)
            if current is not None and current.version_id == version_id:
                raise Refused(
                    f"{version_id} is the champion of slot {target.slot!r}; promote another variant "
                    "or roll back first, then retire it"
                )
            db.execute("UPDATE variants SET status = 'retired' WHERE version_id = ?", [version_id])
            return self._insert_move(db, target.slot, None, version_id, "retire", actor, reason, None)

    def reactivate(self, version_id: str, actor: str, reason: str | None) -> Move:
        """Make a retired variant a challenger again; only a retired one can be."""
        with self._transaction() as db:
            target = self._require_variant(db, version_id)
            if target.status != "retired":
                raise Refused(f"{version_id} is not retired (it is {target.status}); only a retired variant "
                              "can be reactivated")
            db.execute("UPDATE variants SET status = 'active' WHERE version_id = ?", [version_id])
            return self._insert_move(db, target.slot, None, version_id, "reactivate", actor, reason, None)

    def history(self, slot: str) -> list[Move]:
        """Every audit row of the slot, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, slot, from_version, to_version, action, actor, reason, evidence_json, moved_at "
                "FROM promotions WHERE slot = ? ORDER BY id",
                [slot],
            ).fetchall()
        return [_move(row) for row in rows]

    def write_routes(self) -> None:
        """Rewrite `routes.json` from the current champions (atomically); on `backend: distributed`,
        publish the table to the control plane first, for every gateway host to follow."""
        config = self.workspace.config
        if config.backend == "distributed" and config.distributed is not None:
            table = publish_routes(config.distributed, self.route_table, publisher=host_name(config.distributed))
        else:
            table = self.route_table()
        write_routes(self.workspace.routes_path, table)

    def route_table(self) -> RouteTable:
        """The route table of the current champions."""
        with self._lock:
            champions = [
                _variant(row)
                for row in self._db.execute(
                    f"SELECT {', '.join('v.' + c.strip() for c in _VARIANT_COLUMNS.split(','))} "
                    "FROM aliases a JOIN variants v ON v.version_id = a.version_id WHERE a.alias = ? ORDER BY a.slot",
                    [CHAMPION],
                ).fetchall()
            ]
            skills = {v.skill_sha: self.skill_text(v.skill_sha) for v in champions if v.skill_sha}
        return build_routes(self.workspace, champions, skills)

    # -- internals ------------------------------------------------------------------------

    def _require_variant(self, db: duckdb.DuckDBPyConnection, version_id: str) -> Variant:
        row = db.execute(f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE version_id = ?", [version_id]).fetchone()
        if row is not None:
            return _variant(row)
        known = [r[0] for r in db.execute("SELECT version_id FROM variants").fetchall()]
        close = difflib.get_close_matches(version_id, known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `shadowzoo variants list`"
        raise NotFound(f"no variant {version_id!r}{hint}")

    def _exists(self, db: duckdb.DuckDBPyConnection, version_id: str) -> bool:
        return db.execute("SELECT 1 FROM variants WHERE version_id = ?", [version_id]).fetchone() is not None

    def _with_fingerprint(self, db: duckdb.DuckDBPyConnection, slot: str, config_fp: str) -> Variant | None:
        row = db.execute(
            f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE slot = ? AND fingerprint = ?", [slot, config_fp]
        ).fetchone()
        return _variant(row) if row else None

    def _champion(self, db: duckdb.DuckDBPyConnection, slot: str) -> Variant | None:
        row = db.execute("SELECT version_id FROM aliases WHERE slot = ? AND alias = ?", [slot, CHAMPION]).fetchone()
        return self._require_variant(db, row[0]) if row else None

    def _champion_stack(self, db: duckdb.DuckDBPyConnection, slot: str) -> list[str]:
        """Champions in promotion order, with rolled-back ones removed: the rollback path."""
        stack: list[str] = []
        for action, to_version in db.execute(
            "SELECT action, to_version FROM promotions WHERE slot = ? AND action IN ('promote', 'rollback') ORDER BY id",
            [slot],
        ).fetchall():
            if action == "promote":
                stack.append(to_version)
            elif stack:
                stack.pop()
        return stack

    def _move(
        self,
        db: duckdb.DuckDBPyConnection,
        slot: str,
        current: Variant | None,
        to_version: str,
        action: str,
        actor: str,
        reason: str | None,
        evidence: dict[str, Any] | None,
    ) -> Move:
        db.execute(
            "INSERT OR REPLACE INTO aliases VALUES (?, ?, ?, ?)", [slot, CHAMPION, to_version, utcnow()]
        )
        from_version = current.version_id if current else None
        return self._insert_move(db, slot, from_version, to_version, action, actor, reason, evidence)

    def _insert_move(
        self,
        db: duckdb.DuckDBPyConnection,
        slot: str,
        from_version: str | None,
        to_version: str | None,
        action: str,
        actor: str,
        reason: str | None,
        evidence: dict[str, Any] | None,
    ) -> Move:
        moved_at = utcnow()
        db.execute(
            "INSERT INTO promotions (slot, from_version, to_version, action, actor, reason, evidence_json, moved_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [slot, from_version, to_version, action, actor, reason,
             json.dumps(evidence) if evidence is not None else None, moved_at],
        )
        # read back, not RETURNING: PostgreSQL tables take none through DuckDB (backend: distributed)
        row = db.execute(
            "SELECT id, slot, from_version, to_version, action, actor, reason, evidence_json, moved_at FROM promotions "
            "WHERE slot = ? AND actor = ? AND moved_at = ? ORDER BY id DESC LIMIT 1", [slot, actor, moved_at],
        ).fetchone()
        return _move(row)


def _check_can_serve(target: Variant, slot: str) -> None:
    """Only an active chat variant of the same slot may answer that slot's users."""
    if target.slot != slot:
        raise Refused(f"{target.version_id} belongs to slot {target.slot!r}, not {slot!r}")
    if target.status != "active":
        raise Refused(f"{target.version_id} is retired; only active variants can be promoted")
    if target.kind != "chat":
        raise Refused(f"{target.version_id} is a {target.kind} variant: those answer captured traffic only, never users")


def _variant(row: tuple) -> Variant:
    (vid, slot, label, kind, config_json, skill_sha, config_fp, parent, status, source, spec_path,
     meta_json, created_at) = row
    return Variant(
        version_id=vid, slot=slot, label=label, kind=kind, config=json.loads(config_json),
        skill_sha=skill_sha, fingerprint=config_fp, parent=parent, status=status, source=source,
        spec_path=spec_path, meta=json.loads(meta_json) if meta_json else None, created_at=created_at,
    )


def _move(row: tuple) -> Move:
    move_id, slot, from_version, to_version, action, actor, reason, evidence_json, at = row
    return Move(
        id=move_id, slot=slot, from_version=from_version, to_version=to_version, action=action,
        actor=actor, reason=reason, evidence=json.loads(evidence_json) if evidence_json else None,
        at=at if isinstance(at, datetime) else datetime.fromisoformat(str(at)),
    )
