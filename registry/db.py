"""Opening the database: the DuckDB file (lock handling, schema migration, and version
checks), or on `backend: distributed` a DuckDB connection over the lake and the control plane.

DuckDB lets one process hold the file at a time. CLI commands hold it for milliseconds,
so a command that finds it locked waits a little (`SHADOWZOO_LOCK_WAIT_S`, default 10 s)
before giving up; when it gives up it names the process that holds the lock and what to do.
`SHADOWZOO_DUCKDB_THREADS` caps the worker threads of every DuckDB connection a process opens.
The distributed backend has no file and no single writer: processes on several hosts
append to its lake at once, drawing their ids from the control plane (`reserve`), doing a
transaction again when DuckLake refuses its commit for a conflict with another writer's
(`committed`), and taking a PostgreSQL advisory lock for work that must run in one process
at a time (`exclusive`: a slot's scorer).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple, TypeVar

import duckdb

from registry.errors import DatabaseError
from registry.migrations import LATEST, MIGRATIONS

if TYPE_CHECKING:
    import polars as pl

    from registry.lake_instances import LakeInstance
    from registry.planes import LakeIds
    from registry.workspace_config import DistributedConfig

DEFAULT_LOCK_WAIT_S = 10.0
COMMIT_ATTEMPTS = 5
"""How many times `Database.committed` tries a transaction DuckLake refuses for a conflict."""
_PID_RE = re.compile(r"PID (\d+)")
# Any fixed number: the first key of the advisory locks `Database.exclusive` takes (the second is the name's hash).
_EXCLUSIVE_LOCKS = 0x5AD0_2003
T = TypeVar("T")
log = logging.getLogger("shadowzoo.db")


class _AbsentPandas:
    """An import finder that says at once that pandas is not installed.

    DuckDB's Python client tries to import pandas each time it binds a query parameter. Without
    pandas each try fails only after searching every path entry again, which made a
    parameterised query about four times as costly in CPU (5.4 ms instead of 1.3 ms for 30
    parameters). Installed first among the finders only when pandas is absent, this one ends
    that search; every import of pandas still fails with `ModuleNotFoundError`, as before.
    """

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")


if importlib.util.find_spec("pandas") is None:
    sys.meta_path.insert(0, _AbsentPandas())


def sql_literal(value: object) -> str:
    """`value` as a SQL literal: a boolean as `true`/`false`, anything else as a quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


def frame(db: duckdb.DuckDBPyConnection, query: str, params: list | None = None) -> pl.DataFrame:
    """The whole result of `query` as a polars frame (through Arrow, without a row copy)."""
    return db.sql(query, params=params).pl()


@contextmanager
def registered(db: duckdb.DuckDBPyConnection, name: str, table: object) -> Iterator[None]:
    """Make an Arrow table queryable as `name` for the duration of the block.

    DuckDB refuses to register while an earlier `fetchone()` left a result open; running
    a trivial query first closes that result.
    """
    db.execute("SELECT NULL").fetchall()
    db.register(name, table)
    try:
        yield
    finally:
        db.execute("SELECT NULL").fetchall()
        db.unregister(name)


def utcnow() -> datetime:
    """The current UTC time as a naive datetime, the form stored in the database."""
    return datetime.now(UTC).replace(tzinfo=None)


def utc_day_start(now: datetime | None = None) -> datetime:
    """00:00 UTC of the day of `now` (naive UTC, by default the current time): where daily budgets start again."""
    return (now or utcnow()).replace(hour=0, minute=0, second=0, microsecond=0)


class _Lake(NamedTuple):
    """What a `Database` on the distributed backend holds besides its connection."""

    config: DistributedConfig
    ids: LakeIds
    instance: LakeInstance


class Database:
    """One open DuckDB file, shared by the stores of one process and serialised by one lock.

    DuckDB connections are not safe to use from several threads at once, and every write
    must see the state the previous one left: all access goes through `reading()` or
    `transaction()`.
    """

    def __init__(self, path: Path | None, connection: duckdb.DuckDBPyConnection,
                 distributed: _Lake | None = None) -> None:
        self.path = path
        """The DuckDB file; None on the distributed backend."""
        self._distributed = distributed
        """On the distributed backend, its configuration, the allocator of the lake's ids and the DuckDB instance."""
        self.connection = connection
        self.lock = threading.RLock()

    @classmethod
    def open(cls, path: Path, lock_wait_s: float | None = None) -> "Database":
        """Open (creating if needed) and migrate the database at `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = _connect_waiting(path, _lock_wait(lock_wait_s))
        try:
            migrate(connection, path)
        except BaseException:
            connection.close()
            raise
        return cls(path, connection)

    @classmethod
    def open_distributed(cls, config: DistributedConfig, spill_dir: Path) -> "Database":
        """A connection over the lake and the control plane, both migrated (`registry.planes`),
        spilling what exceeds its memory limit to `spill_dir` (created when first needed). The
        same `reading()` and `transaction()` serve it; a transaction writes one plane only
        (DuckDB refuses one that writes both).

        Any number of processes open it at once: their lake ids come from the control plane
        (`reserve`), and nothing is waited for. The connection's DuckDB instance, its extensions
        loaded, is kept for the process's next open when this one closes (`registry.lake_instances`)."""
        from registry import lake_instances
        from registry.distributed import attach_engines
        from registry.planes import LakeIds, migrate_planes

        ids = LakeIds(config)  # first: an unreachable PostgreSQL is named as `postgres_url`
        try:
            instance = lake_instances.take(config.extension_directory, spill_dir)
        except BaseException:
            ids.close()
            raise
        connection = instance.connect()
        try:
            attach_engines(connection, config)
            migrate_planes(connection, config)
        except BaseException:
            connection.close()
            lake_instances.give_back(instance)
            ids.close()
            raise
        return cls(None, connection, _Lake(config, ids, instance))

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection, held for a group of reads."""
        with self.lock:
            yield self.connection

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection inside BEGIN … COMMIT; any exception rolls the whole group back."""
        with self.lock:
            self.connection.execute("BEGIN TRANSACTION")
            try:
                yield self.connection
            except BaseException:
                _roll_back_if_open(self.connection)  # a failed ROLLBACK must not hide what failed
                raise
            try:
                self.connection.execute("COMMIT")
            except duckdb.Error:
                _roll_back_if_open(self.connection)
                raise

    def committed(self, work: Callable[[duckdb.DuckDBPyConnection], T], attempts: int = COMMIT_ATTEMPTS) -> T:
        """`work(connection)` in one transaction, done again (up to `attempts` times in all) when
        DuckLake refuses the commit for a conflict with a transaction another process committed
        meanwhile (two writers deleting or updating rows of one table). `work` must be safe to
        run again: it is, when all it does is read and write through the connection.

        Inside an elected leader's job (`registry.fences.fenced`), the commit is fenced by its
        epoch: refused (`NotLeader`, nothing written) once a newer leader has written."""
        from registry.fences import active

        fence = active() if self._distributed is not None else None
        for attempt in range(1, attempts + 1):
            try:
                with self.transaction() as connection:
                    done = work(connection)
                    if fence is not None:
                        fence.check(connection)
                    return done
            except duckdb.TransactionException as exc:
                if "conflict" not in str(exc).lower() or attempt == attempts:
                    raise
                log.info("the lake refused a commit for a conflict with another writer (attempt %d of %d): %s",
                         attempt, attempts, str(exc).splitlines()[-1])
                time.sleep(0.01 * 2 ** attempt)
        raise AssertionError("unreachable")

    def probe(self) -> None:
        """Raise the store's own error when it cannot answer a read now (on the lake: PostgreSQL or
        the catalog unreachable); return when it can."""
        with self.reading() as db:
            db.execute("SELECT count(*) FROM spool_segments WHERE false").fetchall()

    def reserve(self, sequence: str, count: int) -> None:
        """Make the next `count` values of `sequence` unique across every process writing the
        database; call it in the transaction whose statement draws them. A DuckDB file's
        sequences already are (one process holds the file)."""
        if self._distributed is not None:
            with self.lock:
                self._distributed.ids.reserve(self.connection, sequence, count)

    @contextmanager
    def exclusive(self, *names: str) -> Iterator[None]:
        """Hold the locks `names` (e.g. one slot's scorer, or the segments of an ingest batch) for
        the block, waiting for another process holding any of them. A DuckDB file is one process's
        already; on the distributed backend these are PostgreSQL advisory locks of a session of
        their own, ended with the block (or the process), taken in one order (no deadlock)."""
        if self._distributed is None:
            yield
            return
        from registry.distributed import connect_control

        with connect_control(self._distributed.config, autocommit=True) as session:
            for name in sorted(set(names)):
                session.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [_EXCLUSIVE_LOCKS, name])
            yield

    def limit(self, threads: int, memory_limit: str) -> None:
        """Cap DuckDB's worker threads and memory (a long-running daemon shares the machine
        with gateways); work beyond the memory limit spills to disk."""
        with self.lock:
            self.connection.execute(f"SET threads = {int(threads)}; SET memory_limit = '{memory_limit}'")

    def close(self) -> None:
        with self.lock:
            self.connection.close()
            if self._distributed is not None:
                from registry import lake_instances

                lake_instances.give_back(self._distributed.instance)
                self._distributed.ids.close()


def _lock_wait(explicit: float | None) -> float:
    if explicit is not None:
        return explicit
    raw = os.environ.get("SHADOWZOO_LOCK_WAIT_S")
    try:
        return float(raw) if raw else DEFAULT_LOCK_WAIT_S
    except ValueError:
        raise DatabaseError(f"SHADOWZOO_LOCK_WAIT_S={raw!r}: expected a number of seconds") from None


def connection_config() -> dict[str, int]:
    """The settings each DuckDB connection of this process starts with: its worker threads when
    `SHADOWZOO_DUCKDB_THREADS` caps them. DuckDB's default, a thread per core, is the best for one
    process alone on its host; a CLI run beside the daemon, or processes sharing the host's cores
    (a test suite's workers and servers), each do better with fewer. The daemon's own
    `daemon.duckdb_threads` still applies to its connection."""
    raw = os.environ.get("SHADOWZOO_DUCKDB_THREADS")
    if not raw:
        return {}
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise DatabaseError(f"SHADOWZOO_DUCKDB_THREADS={raw!r}: expected a whole number of threads, 1 or more")
    return {"threads": threads}


def _connect_waiting(path: Path, wait_s: float) -> duckdb.DuckDBPyConnection:
    """Connect, retrying while another process holds the lock, for at most `wait_s`."""
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(str(path), config=connection_config())
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise DatabaseError(f"cannot open database {path}: {exc}") from None
            if time.monotonic() >= deadline:
                raise DatabaseError(_locked_message(path, str(exc))) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
        except duckdb.Error as exc:
            raise DatabaseError(f"cannot open database {path}: {exc}") from None


def _roll_back_if_open(connection: duckdb.DuckDBPyConnection) -> None:
    """End a failed transaction, if the failure left it open (a failed commit ends it; a lost
    PostgreSQL connection fails the ROLLBACK too, and DuckDB ends the transaction regardless)."""
    try:
        connection.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.debug("ROLLBACK after a failure failed too: %s", exc)


def _locked_message(path: Path, detail: str) -> str:
    """Say which process holds the database and what the user can do about it."""
    match = _PID_RE.search(detail)
    if not match:
        return f"database {path} is locked by another process ({detail})"
    pid = match.group(1)
    return (
        f"database {path} is locked by process {pid} ({_command_line(pid)}). "
        "If that is the shadowzoo daemon, run the command while it is up so it goes through "
        "the daemon; otherwise wait for that process to finish or stop it, then retry."
    )


def _command_line(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "command line unknown"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "command line unknown"


def migrate(connection: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Apply the migrations this database lacks; refuse a database from a newer shadowzoo.

    Applied migrations are checkpointed into the file at once: DuckDB cannot replay from its
    write-ahead log a column added with a default that calls a function (`nextval`), so a
    process killed before its first checkpoint (the 16 MB of writes after a new workspace's
    first open) left a database that no process could open."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL)"
    )
    applied = {row[0] for row in connection.execute("SELECT version FROM schema_migrations").fetchall()}
    newest = max(applied, default=0)
    if newest > LATEST:
        raise DatabaseError(
            f"database {path} has schema version {newest}, but this shadowzoo knows versions up "
            f"to {LATEST}: it was written by a newer shadowzoo. Upgrade shadowzoo to use it."
        )
    for migration in MIGRATIONS:
        if migration.version in applied:
            continue
        connection.execute("BEGIN TRANSACTION")
        try:
            connection.execute(migration.sql)
            connection.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                [migration.version, migration.name, utcnow()],
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    if not set(migration.version for migration in MIGRATIONS) <= applied:
        connection.execute("CHECKPOINT")
