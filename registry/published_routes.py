"""Route tables in the control plane (backend: distributed): published by the registry, followed
by every gateway host.

`published_routes` holds one row, the newest table and its version. A publisher locks that
row, and only then builds the table from the registry, so publications are ordered by when
their table was read: one built from an older registry state can never replace a newer one,
however two admins' publications interleave. Gateway hosts poll the version and fetch the
document when it differs from their local copy (`shadow.gateway.route_follower`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from registry.control_plane import migrate_control
from registry.distributed import connect_control
from registry.errors import ConfigError, DatabaseError, ShadowzooError
from registry.routes import RouteTable
from registry.workspace_config import DistributedConfig

if TYPE_CHECKING:
    import psycopg


class Published(NamedTuple):
    """The newest published table, as its JSON text (the bytes every host writes to routes.json)."""

    version: int
    document: str


class Follower(NamedTuple):
    """What one gateway host reported it serves, and when it last reached the control plane."""

    host: str
    version: int
    generated_at: datetime | None
    checked_at: datetime


def publish_routes(config: DistributedConfig, build: Callable[[], RouteTable], publisher: str) -> RouteTable:
    """Build the table under the publication lock and make it the newest version; returns it with its version."""
    import psycopg

    try:
        with connect_control(config) as connection:
            migrate_control(connection)
            return _publish(connection, build, publisher)
    except (psycopg.Error, ConfigError) as exc:
        raise DatabaseError(f"the routes were not published ({str(exc).strip()}): the gateway hosts keep serving "
                            "the previous table until the next publication (every promotion and daemon start "
                            "publishes)") from None


def _publish(connection: "psycopg.Connection", build: Callable[[], RouteTable], publisher: str) -> RouteTable:
    with connection.transaction():
        current = connection.execute("SELECT version FROM published_routes FOR UPDATE").fetchone()[0]
        table = build().model_copy(update={"version": current + 1})
        connection.execute(
            "UPDATE published_routes SET version = %s, document = %s, publisher = %s, "
            "published_at = now() AT TIME ZONE 'UTC'", [table.version, table.model_dump_json(indent=2), publisher])
    return table


def published_version(connection: "psycopg.Connection") -> int:
    """The newest version (0 while nothing is published); cheap enough to poll."""
    return connection.execute("SELECT version FROM published_routes").fetchone()[0]


def latest_published(connection: "psycopg.Connection") -> Published | None:
    """The newest table, or None while nothing is published."""
    version, document = connection.execute("SELECT version, document FROM published_routes").fetchone()
    return Published(version, document) if document is not None else None


def report_following(connection: "psycopg.Connection", host: str, table: RouteTable | None) -> None:
    """Record which version this host serves (None: no local copy yet) and that it reached the control plane now."""
    version = (table.version or 0) if table else 0
    generated_at = table.generated_at.astimezone(UTC).replace(tzinfo=None) if table else None
    connection.execute(
        "INSERT INTO route_followers VALUES (%s, %s, %s, now() AT TIME ZONE 'UTC') ON CONFLICT (host) DO UPDATE "
        "SET version = excluded.version, generated_at = excluded.generated_at, checked_at = excluded.checked_at",
        [host, version, generated_at])


def route_followers(connection: "psycopg.Connection") -> list[Follower]:
    """Every gateway host's last report, by host name."""
    return [Follower(*row) for row in connection.execute(
        "SELECT host, version, generated_at, checked_at FROM route_followers ORDER BY host")]


def gateway_routes(config: DistributedConfig) -> dict[str, Any]:
    """For `status`: the newest published version, and per gateway host the version it serves, how old that
    table is and when the host last reached the control plane; an `error` instead when PostgreSQL is unreachable."""
    import psycopg

    try:
        with connect_control(config) as connection:
            migrate_control(connection)
            newest = published_version(connection)
            followers = route_followers(connection)
            now = connection.execute("SELECT now() AT TIME ZONE 'UTC'").fetchone()[0]
    except (psycopg.Error, ShadowzooError) as exc:
        return {"error": str(exc).strip().splitlines()[0]}
    return {"published_version": newest, "hosts": [
        {"host": f.host, "version": f.version, "behind": f.version != newest,
         "routes_age_s": round((now - f.generated_at).total_seconds(), 1) if f.generated_at else None,
         "reported_s_ago": round((now - f.checked_at).total_seconds(), 1)} for f in followers]}
