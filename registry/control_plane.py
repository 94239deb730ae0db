"""The distributed backend's coordination tables in PostgreSQL: forward-only migrations in
PostgreSQL's own dialect, applied by whichever process starts first.

These tables exist only on the distributed backend (leases, leadership, budget slices,
gateway hosts, published routes): coordination between processes on several hosts, which
the embedded backend does not need. The registry's and the data's tables keep their one
schema, `registry.migrations`, on both backends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.errors import DatabaseError
from registry.migrations import Migration

if TYPE_CHECKING:
    import psycopg

# Any fixed number: every shadowzoo process that migrates takes this lock first, so two that
# start at once apply each migration once.
_MIGRATION_LOCK = 0x5AD0_2001

CONTROL_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "coordination: work leases, leadership, budget days, worker heartbeats", """
        CREATE SEQUENCE lease_tokens;
        CREATE TABLE work_leases (
            kind TEXT NOT NULL,
            item TEXT NOT NULL,
            holder TEXT,
            token BIGINT,
            expires_at TIMESTAMPTZ,
            done_at TIMESTAMPTZ,
            offered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, item)
        );
        CREATE INDEX work_leases_open ON work_leases (kind, offered_at, item) WHERE done_at IS NULL;
        CREATE UNIQUE INDEX work_leases_token ON work_leases (token);
        CREATE TABLE leadership (
            id SERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            epoch BIGINT NOT NULL DEFAULT 0,
            leader TEXT,
            since TIMESTAMPTZ
        );
        CREATE TABLE budget_days (
            scope TEXT NOT NULL,
            day DATE NOT NULL,
            limit_usd DOUBLE PRECISION NOT NULL,
            allotted_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
            PRIMARY KEY (scope, day)
        );
        CREATE TABLE worker_heartbeats (
            worker TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            seen_at TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX worker_heartbeats_role ON worker_heartbeats (role, seen_at);
    """),
    Migration(
        2,
        "published routes",
        # One row: the newest route table and its version. Followers need only the newest (the
        # champions' history is the registry's `promotions`), and one row is one lock that
        # orders publishers. `route_followers` is each gateway host's report of what it serves.
        """
        CREATE TABLE published_routes (
            singleton BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
            version BIGINT NOT NULL,
            document TEXT,
            published_at TIMESTAMP,
            publisher TEXT
        );
        INSERT INTO published_routes (version) VALUES (0);
        CREATE TABLE route_followers (
            host TEXT PRIMARY KEY,
            version BIGINT NOT NULL,
            generated_at TIMESTAMP,
            checked_at TIMESTAMP NOT NULL
        );
        """,
    ),
    Migration(
        3,
        "spool shipping heartbeats",
        # Each gateway host's shipper says how far behind it is: the age of its oldest
        # complete segment not yet in the object store (0 when none), how many segments it
        # has shipped in all, and when it last shipped one and last reported (`shadowzoo
        # status`; a host whose `seen_at` is old has stopped reporting).
        """
        CREATE TABLE spool_shipping (
            host TEXT PRIMARY KEY,
            lag_s DOUBLE PRECISION NOT NULL,
            segments_shipped BIGINT NOT NULL,
            last_shipped_at TIMESTAMP,
            seen_at TIMESTAMP NOT NULL
        );
        """,
    ),
)
CONTROL_LATEST = CONTROL_MIGRATIONS[-1].version if CONTROL_MIGRATIONS else 0


def migrate_control(connection: "psycopg.Connection") -> None:
    """Apply the control-plane migrations this PostgreSQL database lacks; refuse a newer one."""
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        connection.execute("CREATE TABLE IF NOT EXISTS control_migrations ("
                           "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMP NOT NULL)")
        applied = {row[0] for row in connection.execute("SELECT version FROM control_migrations")}
        if max(applied, default=0) > CONTROL_LATEST:
            raise DatabaseError(f"the control plane has schema version {max(applied)}, but this shadowzoo knows "
                                f"versions up to {CONTROL_LATEST}: upgrade shadowzoo on this host")
        for migration in CONTROL_MIGRATIONS:
            if migration.version not in applied:
                connection.execute(migration.sql)
                connection.execute("INSERT INTO control_migrations VALUES (%s, %s, now() AT TIME ZONE 'UTC')",
                                   [migration.version, migration.name])
