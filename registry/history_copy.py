"""`shadowzoo migrate --to distributed`: an embedded workspace's history copied into the
distributed backend its `distributed:` section names, table by table, resumable.

One DuckDB connection does it all: the distributed backend's own (`Database.open_distributed`:
the lake and the control plane attached, both migrated, the lake's writer lock held) with
the workspace's DuckDB file attached READ_ONLY beside them as `embedded`. Each table of the
schema is copied by one `INSERT … SELECT` to its plane (`registry.planes`), which DuckDB
streams (rows go to the lake's Parquet files or PostgreSQL's COPY as they are read, never
the whole table in memory), with ids, `seq` values and timestamps as stored.

Each table is copied in one transaction (it writes one plane), so after a crash or `kill -9`
a table is either all there or not at all, and a re-run tells which by comparing contents:
a table's fingerprint is its row count and the sum of a hash of each row, on both sides.
- the target's table is empty: copy it;
- it has the source's fingerprint: already copied (a re-run copies nothing new);
- anything else is another history (variants with the same ids but other content, traffic
  the source never had): refused, naming the tables, unless `force`, which replaces the
  target table's rows with the source's in the same transaction.
Sequences continue past the copied values: the lake's ids (the control plane's `lake_ids`,
`registry.planes`) are moved past the stored maxima and PostgreSQL's own sequences (the
promotions' ids) are set after the copy, on a re-run too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import duckdb

from registry.db import Database, connection_config, sql_literal
from registry.distributed import connect_control
from registry.errors import ConfigError, DatabaseError, ShadowzooError
from registry.planes import Plane, plane_of, seed_lake_ids

if TYPE_CHECKING:
    from registry.workspace import Workspace
    from registry.workspace_config import DistributedConfig

SOURCE = "embedded"
"""The name the workspace's DuckDB file is attached under."""
RESCORED = frozenset({"paired", "pair_moments", "answer_stats", "worst_pairs"})
"""The scorer's pairs and sums, copied for past periods only: each slot's current period (the one its
watermark names) is paired again from the copied rows by the lake's first refresh (a full rescore
equals the incremental one). A watermark in a DuckDB file is a change counter and on the lake a
snapshot id, which no copied value can stand for, so the watermarks stay behind, and pairs of a
period without one would be counted twice."""
_SKIPPED = frozenset({"schema_migrations", "scoring_watermarks"})  # each plane keeps its own migrations' ledger
_TARGET_SCHEMA: dict[Plane, str] = {"control": "control.public", "lake": "lake.main"}

State = Literal["copy", "copied", "already copied", "empty", "differs", "replace", "replaced"]


@dataclass(frozen=True)
class TableCopy:
    """One table's part in a migration: what the source holds, what the target held, and what was done."""

    table: str
    plane: Plane
    rows: int
    """Rows of the table in the workspace's DuckDB file."""
    target_rows: int
    """Rows the target held before this run."""
    state: State
    """`copy`/`replace` while planned (or in a dry run), `copied`/`replaced`/`already copied` when done,
    `empty` when neither side has a row, `differs` when the target holds another history and `force`
    was not given."""

    @property
    def copied(self) -> int:
        """Rows this run wrote."""
        return self.rows if self.state in ("copied", "replaced") else 0


Progress = Callable[[TableCopy, int, int], None]
"""Called before and after each table is copied, with its position and the number of tables."""


def copy_history(workspace: Workspace, dry_run: bool = False, force: bool = False,
                 progress: Progress | None = None) -> list[TableCopy]:
    """Copy every table of the workspace's DuckDB file to the distributed backend it names, or
    (`dry_run`) say what would be copied, writing nothing; returns each table's part, in copy order."""
    config = _target(workspace)
    source = _migrated_source(workspace.db_path)
    if dry_run and not _has_schema(config):  # opening would create it: every table is to copy
        with _source_only(source) as db:
            counts = {table: _rows(db, _source(table)) for table in _tables(db)}
            return [TableCopy(table, plane_of(table), rows, 0, "copy" if rows else "empty")
                    for table, rows in counts.items()]
    database = Database.open_distributed(config, workspace.spill_dir)
    try:
        with database.reading() as db:
            _attach(db, source)
            plan = [_plan(db, table, force) for table in _tables(db)]
            differing = [entry for entry in plan if entry.state == "differs"]
            if differing:
                raise ShadowzooError(_differs_message(config, differing))
            if dry_run:
                return plan
            done = [_copy(db, entry, index, len(plan), progress) for index, entry in enumerate(plan, 1)]
            seed_lake_ids(db, config)
    finally:
        database.close()
    _continue_control_sequences(config, [entry.table for entry in done if entry.plane == "control"])
    return done


def _target(workspace: Workspace) -> DistributedConfig:
    """The `distributed:` section naming the target, or an error saying it is needed."""
    if workspace.config.distributed is None:
        raise ConfigError(
            f"{workspace.config_path}: distributed: section missing: `migrate --to distributed` copies the history "
            "into the PostgreSQL and object store it names (postgres_url, object_store); add it, keep "
            "`backend: embedded` until the copy is done")
    return workspace.config.distributed


def _migrated_source(path: Path) -> Path:
    """The workspace's DuckDB file, brought to this shadowzoo's schema; opening it waits for and
    names a process holding it (the daemon), as every command does."""
    if not path.is_file():
        raise ShadowzooError(f"{path}: no embedded database to migrate (the workspace's state_dir holds none)")
    Database.open(path).close()
    return path


def _has_schema(config: DistributedConfig) -> bool:
    """Whether the target's planes were created already (by an earlier open of the distributed backend)."""
    with connect_control(config) as control:
        return control.execute("SELECT to_regclass('public.schema_migrations') IS NOT NULL").fetchone()[0]


@contextmanager
def _source_only(path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection seeing the source alone, for a dry run against a target not created yet."""
    db = duckdb.connect(config=connection_config())
    try:
        _attach(db, path)
        yield db
    finally:
        db.close()


def _attach(db: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        db.execute(f"ATTACH {sql_literal(path)} AS {SOURCE} (READ_ONLY)")
    except duckdb.Error as exc:
        raise DatabaseError(f"cannot read database {path}: {exc}") from None


def _tables(db: duckdb.DuckDBPyConnection) -> list[str]:
    """The source's tables in copy order: the control plane's first, each plane by name."""
    names = [row[0] for row in db.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'",
        [SOURCE]).fetchall() if row[0] not in _SKIPPED]
    return sorted(names, key=lambda name: (plane_of(name) != "control", name))


def _columns(db: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, str]]:
    """The source table's columns and their types, in order."""
    return db.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? "
                      "AND schema_name = 'main' AND table_name = ? ORDER BY column_index", [SOURCE, table]).fetchall()


def _source(table: str) -> str:
    """What of the source's `table` is copied: all of it, or for the scorer's pairs and sums, their past periods'."""
    relation = f"{SOURCE}.main.{table}"
    if table in RESCORED:
        return (f"(SELECT * FROM {relation} WHERE period_id NOT IN "
                f"(SELECT period_id FROM {SOURCE}.main.scoring_watermarks))")
    return relation


def _fingerprint(db: duckdb.DuckDBPyConnection, relation: str, columns: list[tuple[str, str]]) -> tuple:
    """(rows, sum of each row's hash) of `relation`, its columns read as the source's types so
    both engines hash the same values."""
    values = ", ".join(f"CAST({name} AS {kind})" for name, kind in columns)
    return db.execute(f"SELECT count(*), coalesce(sum(hash({values})::HUGEINT), 0) FROM {relation}").fetchone()


def _rows(db: duckdb.DuckDBPyConnection, relation: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {relation}").fetchone()[0])


def _plan(db: duckdb.DuckDBPyConnection, table: str, force: bool) -> TableCopy:
    """What to do with one table: copy it, leave it (the source's rows are there), or replace it."""
    plane = plane_of(table)
    target = _TARGET_SCHEMA[plane]
    columns = _columns(db, table)
    rows, target_rows = _rows(db, _source(table)), _rows(db, f"{target}.{table}")
    if rows == target_rows == 0:
        state: State = "empty"
    elif target_rows == 0:
        state = "copy"
    elif _fingerprint(db, f"{target}.{table}", columns) == _fingerprint(db, _source(table), columns):
        state = "already copied"
    else:
        state = "replace" if force else "differs"
    return TableCopy(table, plane, rows, target_rows, state)


def _copy(db: duckdb.DuckDBPyConnection, entry: TableCopy, index: int, total: int,
          progress: Progress | None) -> TableCopy:
    """Copy (or replace) one table in one transaction of its plane."""
    if entry.state not in ("copy", "replace"):
        done = entry
    else:
        if progress:
            progress(entry, index, total)
        target = f"{_TARGET_SCHEMA[entry.plane]}.{entry.table}"
        names = ", ".join(name for name, _ in _columns(db, entry.table))
        db.execute("BEGIN TRANSACTION")
        try:
            if entry.state == "replace":
                db.execute(f"DELETE FROM {target}")
            db.execute(f"INSERT INTO {target} ({names}) SELECT {names} FROM {_source(entry.table)}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        done = replace(entry, state="copied" if entry.state == "copy" else "replaced")
    if progress:
        progress(done, index, total)
    return done


def _continue_control_sequences(config: DistributedConfig, tables: list[str]) -> None:
    """Set each PostgreSQL sequence a copied table's column takes by default past the column's highest value."""
    with connect_control(config, autocommit=True) as control:
        defaults = control.execute(
            "SELECT table_name, column_name, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_default LIKE 'nextval(%%' AND table_name = ANY(%s)",
            [tables]).fetchall()
        for table, column, default in defaults:
            sequence = default.split("'")[1]
            control.execute(f"SELECT setval('{sequence}', coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)")


def _differs_message(config: DistributedConfig, differing: list[TableCopy]) -> str:
    tables = ", ".join(f"{entry.table} ({entry.target_rows} rows there, {entry.rows} here)" for entry in differing)
    return (f"distributed.postgres_url: the distributed backend at {config.postgres_url} already holds another "
            f"history in {tables}: it was written by something other than this migration. Point `distributed:` at "
            "an empty database and lake_prefix, or re-run with --force to replace those tables with this "
            "workspace's rows.")
