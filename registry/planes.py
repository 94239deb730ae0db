"""The distributed backend's schema: which plane each table lives on, the migrations' DDL
translated for it, and the migrations applied plane by plane.

The embedded backend keeps every table in one DuckDB file. On `backend: distributed` the
same `registry.migrations` build two planes, seen by one DuckDB connection under the same
plain names (`registry.distributed.attach_engines`):

- control (PostgreSQL, `control.public`, constraints and sequences kept): the registry
  (slots, skills, variants, aliases, promotions: the audit log), pauses, prices and
  `schema_migrations`. Small, keyed, written by operators.
- lake (DuckLake, `lake.main`): the data and everything the scorer derives from it. DuckLake
  has no PRIMARY KEY, UNIQUE or index, so their DDL is stripped here and the keyed writes
  go through `registry.keyed`; it has no sequences either, and its writers run on several
  hosts at once, so the change counter and the period and snapshot ids are allocated by the
  control plane in blocks (`LakeIds`): a writer reserves as many as its statement takes, and
  the statement draws them from a DuckDB temp sequence spanning exactly that block.

DuckDB lets one transaction write one attached database only, so every transaction that
writes tables of both planes had to be settled:
- ingest appends traffic, outcomes and the spool ledger (`spool_segments`) in one commit:
  the ledger is on the lake (DESIGN.md lists the segment ledger with the control plane; it
  must commit with its rows, as DESIGN.md's ingest role says).
- a scorer refresh appends pairs and moves `answer_stats`, `pair_moments`, `worst_pairs`,
  `period_challengers`, `period_slices`, the watermark and the snapshot in one commit: all
  on the lake (DESIGN.md puts scorer watermarks on the control plane; they must commit with
  the pairs they count). `evaluation_periods` joins them (written alone, read with them).
- a retried shadow result replaces its row and forgets the slot's scored evidence in one
  commit: `shadow_results` and the scored tables are all on the lake.
- retention deletes traffic and what hangs off it (results, metric values, outcomes, pairs,
  worst pairs): all on the lake.
- registering, promoting and pausing write control tables only; prices are synced in a
  transaction of their own (control). Jobs and budgets have no tables: jobs live in the
  daemon, spend is read off `shadow_results` and `metric_values`.
Neither engine takes `INSERT … RETURNING` through DuckDB: a promotion is read back, a
period's id is taken from its sequence first.
- an elected leader's lake commits also rewrite its fencing row, `leader_fences`, on the
  lake (`registry.fences`), the distributed backend's own table like `lake_migrations`.
- a migration that creates tables of both planes is applied in two commits: the lake's part
  with its row in `lake_migrations` (the lake's own ledger), then the control part with its
  row in `schema_migrations`; a crash in between re-applies only the part not recorded.

Several processes write the lake at once (ingest and runner workers; DuckLake commits
concurrent appends), so `seq` order is not commit order there: the scorer's watermark on the
lake is a snapshot id, and what is new is read off DuckLake's change feed (`scorer.changes`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from registry.db import utcnow
from registry.errors import DatabaseError
from registry.fences import FENCES_TABLE
from registry.migrations import LATEST, MIGRATIONS

if TYPE_CHECKING:
    import duckdb
    import psycopg

    from registry.workspace_config import DistributedConfig

Plane = Literal["control", "lake"]

CONTROL_TABLES = frozenset({"slots", "skills", "variants", "aliases", "promotions", "pauses", "prices"})
LAKE_TABLES = frozenset({
    "traffic", "outcomes", "shadow_results", "spool_segments", "metric_values", "evaluation_periods",
    "period_challengers", "period_slices", "paired", "pair_moments", "answer_stats", "worst_pairs",
    "scoring_watermarks", "leaderboard_snapshots",
    "scores", "metric_values_keyed",  # tables of earlier migrations, dropped or renamed since
})
LAKE_SEQUENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "change_seq": (("traffic", "seq"), ("outcomes", "seq"), ("shadow_results", "seq"), ("metric_values", "seq")),
    "period_id": (("evaluation_periods", "period_id"),),
    "snapshot_id": (("leaderboard_snapshots", "snapshot_id"),),
}
"""The sequences of lake tables, each with the columns that take its values (its next value
is past their highest). On the lake each is a row of the control plane's `lake_ids`."""

# Any fixed number: two processes opening the distributed backend at once migrate one at a time.
_MIGRATION_LOCK = 0x5AD0_2002
_TARGET = re.compile(
    r"^\s*(?:CREATE\s+TABLE(?:\s+IF\s+NOT\s+EXISTS)?|ALTER\s+TABLE|INSERT\s+INTO|UPDATE|DELETE\s+FROM|"
    r"DROP\s+TABLE(?:\s+IF\s+EXISTS)?|CREATE\s+(?:UNIQUE\s+)?INDEX\s+\w+\s+ON|CREATE\s+SEQUENCE)\s+(\w+)",
    re.IGNORECASE)
_KEYS = (re.compile(r",\s*(?:PRIMARY\s+KEY|UNIQUE)\s*\([^)]*\)", re.IGNORECASE),
         re.compile(r"\s+PRIMARY\s+KEY\b", re.IGNORECASE))
_SEQUENCE_DEFAULT = re.compile(r"\s+DEFAULT\s+nextval\('\w+'\)", re.IGNORECASE)


def plane_of(table: str) -> Plane:
    """The plane a table of `registry.migrations` lives on, or an error for a table not placed here."""
    if table in CONTROL_TABLES:
        return "control"
    if table in LAKE_TABLES:
        return "lake"
    raise DatabaseError(f"table {table!r} has no plane: place it in registry.planes (CONTROL_TABLES or LAKE_TABLES)")


def split_migration(sql: str) -> dict[Plane, list[str]]:
    """A migration's statements per plane, each in that plane's dialect: PostgreSQL's for the
    control plane, DuckDB's without keys, indexes or sequences for the lake."""
    parts: dict[Plane, list[str]] = {"control": [], "lake": []}
    for statement in filter(str.strip, sql.split(";")):
        match = _TARGET.match(statement)
        if match is None:
            raise DatabaseError(f"cannot tell which table this migration statement writes: {statement.strip()[:80]}")
        name = match.group(1)
        if re.match(r"\s*CREATE\s+SEQUENCE", statement, re.IGNORECASE):
            if name not in LAKE_SEQUENCES:  # a control table's: PostgreSQL keeps it
                parts["control"].append(statement)
            continue
        plane = plane_of(name)
        translated = _postgres_ddl(statement) if plane == "control" else _lake_ddl(statement)
        if translated is not None:
            parts[plane].append(translated)
    return parts


def _postgres_ddl(statement: str) -> str:
    return re.sub(r"\bDOUBLE\b(?!\s+PRECISION)", "DOUBLE PRECISION", statement, flags=re.IGNORECASE)


def _lake_ddl(statement: str) -> str | None:
    """The statement as DuckLake takes it: no index, no key, and no column added with a
    sequence default (DuckLake refuses one: writers name the column, `nextval` and all)."""
    if re.match(r"\s*CREATE\s+(?:UNIQUE\s+)?INDEX", statement, re.IGNORECASE):
        return None
    for pattern in _KEYS:
        statement = pattern.sub("", statement)
    if re.match(r"\s*ALTER\s+TABLE", statement, re.IGNORECASE):
        statement = _SEQUENCE_DEFAULT.sub("", statement)
    return statement


def migrate_planes(connection: "duckdb.DuckDBPyConnection", config: "DistributedConfig") -> None:
    """Apply the migrations the planes lack (under an advisory lock) and, when any was applied or
    the control plane has no `lake_ids` yet, start the lake's ids past the stored ones. Every
    other write to the lake takes its ids from `lake_ids`, so an open that migrated nothing
    leaves them be (reading each table's highest id costs every open a third of a second);
    a history copied into the lake moves them itself (`seed_lake_ids`)."""
    from registry.distributed import connect_control

    _create_sequences(connection)
    with connect_control(config, autocommit=True) as control:
        control.execute("SELECT pg_advisory_lock(%s)", [_MIGRATION_LOCK])
        try:
            if _migrate(connection, control) or not _ids_allocated(control):
                _seed_ids(connection, control)
        finally:
            control.execute("SELECT pg_advisory_unlock(%s)", [_MIGRATION_LOCK])


def seed_lake_ids(connection: "duckdb.DuckDBPyConnection", config: "DistributedConfig") -> None:
    """Move the lake's ids past the highest stored in the lake (after rows were copied in with their ids)."""
    from registry.distributed import connect_control

    with connect_control(config, autocommit=True) as control:
        _seed_ids(connection, control)


def _migrate(connection: "duckdb.DuckDBPyConnection", control: "psycopg.Connection") -> bool:
    """Apply the migrations the planes lack; whether there was any."""
    control.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)")
    connection.execute("CREATE TABLE IF NOT EXISTS lake.main.lake_migrations (version INTEGER NOT NULL, "
                       "applied_at TIMESTAMP NOT NULL)")
    connection.execute(FENCES_TABLE)
    applied = {row[0] for row in control.execute("SELECT version FROM schema_migrations")}
    if max(applied, default=0) > LATEST:
        raise DatabaseError(
            f"the control plane has schema version {max(applied)}, but this shadowzoo knows versions up to "
            f"{LATEST}: it was written by a newer shadowzoo. Upgrade shadowzoo to use it.")
    on_lake = {row[0] for row in connection.execute("SELECT version FROM lake.main.lake_migrations").fetchall()}
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        parts = split_migration(migration.sql)
        if parts["lake"] and migration.version not in on_lake:
            _apply_on_lake(connection, migration.version, parts["lake"])
        with control.transaction():
            for statement in parts["control"]:
                control.execute(statement)
            control.execute("INSERT INTO schema_migrations VALUES (%s, %s, %s)",
                            [migration.version, migration.name, utcnow()])
        connection.execute("CALL pg_clear_cache()")  # DuckDB caches the control plane's schema
    return any(migration.version not in applied for migration in MIGRATIONS)


def _apply_on_lake(connection: "duckdb.DuckDBPyConnection", version: int, statements: list[str]) -> None:
    connection.execute("BEGIN TRANSACTION")
    try:
        for statement in statements:
            connection.execute(statement)
        connection.execute("INSERT INTO lake.main.lake_migrations VALUES (?, ?)", [version, utcnow()])
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _create_sequences(connection: "duckdb.DuckDBPyConnection") -> None:
    """The lake's sequences, so that the migrations' defaults naming them bind: used up from
    the start, so that a write which reserved no ids (`LakeIds.reserve`) fails instead of
    taking one another process may take too."""
    for name in LAKE_SEQUENCES:
        connection.execute(f"CREATE OR REPLACE TEMP SEQUENCE {name} START 0 MINVALUE -1 MAXVALUE 0")
        connection.execute(f"SELECT nextval('{name}')")


def _ids_allocated(control: "psycopg.Connection") -> bool:
    """Whether the control plane holds a `lake_ids` row for each of the lake's sequences."""
    if control.execute("SELECT to_regclass('public.lake_ids') IS NULL").fetchone()[0]:
        return False
    return control.execute("SELECT count(*) FROM lake_ids").fetchone()[0] == len(LAKE_SEQUENCES)


def _seed_ids(connection: "duckdb.DuckDBPyConnection", control: "psycopg.Connection") -> None:
    """Create the control plane's `lake_ids` and move each id past the highest stored in the lake
    (which a lake written before the ids were allocated here, or copied in, may hold)."""
    control.execute("CREATE TABLE IF NOT EXISTS lake_ids (name TEXT PRIMARY KEY, next_value BIGINT NOT NULL)")
    for name, columns in LAKE_SEQUENCES.items():
        highest = ", ".join(f"(SELECT max({column}) FROM lake.main.{table})" for table, column in columns)
        start = int(connection.execute(f"SELECT greatest({highest}, 0)").fetchone()[0]) + 1
        control.execute("INSERT INTO lake_ids VALUES (%s, %s) ON CONFLICT (name) DO UPDATE "
                        "SET next_value = greatest(lake_ids.next_value, excluded.next_value)", [name, start])


class LakeIds:
    """The lake's ids, unique across every process writing it: each reservation takes a block
    of the control plane's counter (`lake_ids`, one row per sequence, one round trip in
    autocommit, so the row is locked for that statement alone) and points the connection's
    temp sequence of that name at exactly that block. A statement drawing more than was
    reserved fails on the sequence's end rather than take another writer's id; ids reserved
    by a transaction that rolls back are skipped (gaps are harmless: ids only need be unique).
    A session PostgreSQL dropped (a restart) is opened again once per reservation."""

    def __init__(self, config: "DistributedConfig") -> None:
        """Connect to the control plane (a ConfigError naming `postgres_url` when it cannot)."""
        from registry.distributed import connect_control

        self._config = config
        self._session: "psycopg.Connection | None" = connect_control(config, autocommit=True)

    def reserve(self, connection: "duckdb.DuckDBPyConnection", sequence: str, count: int) -> None:
        """Make the next `count` values of `sequence` on `connection` a block no other process takes."""
        if count <= 0:
            return
        first = self._take(sequence, count)
        connection.execute(f"CREATE OR REPLACE TEMP SEQUENCE {sequence} "
                           f"START {first} MINVALUE {first - 1} MAXVALUE {first + count - 1}")

    def _take(self, sequence: str, count: int) -> int:
        """The first id of a block of `count` taken from the counter."""
        import psycopg

        from registry.distributed import connect_control

        for attempt in (1, 2):
            if self._session is None or self._session.closed:
                self._session = connect_control(self._config, autocommit=True)
            try:
                return self._session.execute(
                    "UPDATE lake_ids SET next_value = next_value + %s WHERE name = %s RETURNING next_value - %s",
                    [count, sequence, count]).fetchone()[0]
            except psycopg.OperationalError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
