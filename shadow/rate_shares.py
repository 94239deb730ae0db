"""Providers' rate limits shared by the runners on every host: each takes an equal share.

A provider's `requests_per_minute` and `tokens_per_minute` are the whole deployment's. Each
runner beats a heartbeat row in PostgreSQL every few seconds and counts the runners seen
within `LIVE_WITHIN_S`; it then runs its `ProviderClient`s with `limit // live` of each limit
(`shared_provider`, handed to `ProviderPool.update`). The shares add up to at most the limit
while every runner counts the same workers. When one joins, the others keep their larger
share until their next beat, so for up to one heartbeat interval the sum may pass the limit
by one share per newcomer; when one dies, its share goes unused until its heartbeat is older
than `LIVE_WITHIN_S`. The upstream's own `x-ratelimit-remaining-*` headers (`Headroom`)
still pause every runner when the provider says it is near its limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from registry.workspace_config import ProviderConfig

if TYPE_CHECKING:
    import psycopg

HEARTBEAT_S = 5.0
LIVE_WITHIN_S = 3 * HEARTBEAT_S
"""A worker counts as live while its last heartbeat is this recent (three missed beats and it is gone)."""
DEPARTED_KEPT_S = 86_400.0
"""A worker killed without `leave` keeps its row this long (for `status` and for looking into a crash)."""


class Heartbeats:
    """One worker's heartbeat row, and how many workers of its role are live (PostgreSQL's clock)."""

    def __init__(self, connection: "psycopg.Connection", worker: str, role: str) -> None:
        self.connection = connection
        self.worker = worker
        self.role = role

    def beat(self) -> int:
        """Record that this worker is alive; the number of live workers of its role, itself included."""
        with self.connection.transaction():
            self.connection.execute(
                "INSERT INTO worker_heartbeats (worker, role, seen_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (worker) DO UPDATE SET role = excluded.role, seen_at = excluded.seen_at",
                [self.worker, self.role])
            return self.connection.execute(
                "SELECT count(*) FROM worker_heartbeats "
                "WHERE role = %s AND seen_at > now() - make_interval(secs => %s)", [self.role, LIVE_WITHIN_S]).fetchone()[0]

    def leave(self) -> None:
        """Remove this worker's row (a clean shutdown), so the others take its share at their next beat."""
        with self.connection.transaction():
            self.connection.execute("DELETE FROM worker_heartbeats WHERE worker = %s", [self.worker])


def forget_departed(connection: "psycopg.Connection", kept_s: float = DEPARTED_KEPT_S) -> int:
    """Delete the heartbeat rows of workers unseen for `kept_s` (killed, never left); returns how many."""
    with connection.transaction():
        return connection.execute("DELETE FROM worker_heartbeats WHERE seen_at < now() - make_interval(secs => %s)",
                                  [kept_s]).rowcount


def share(limit: int | None, workers: int) -> int | None:
    """One worker's share of a per-minute limit (None: unlimited); never below 1 per minute."""
    return None if limit is None else max(1, limit // max(1, workers))


def shared_provider(config: ProviderConfig, workers: int) -> ProviderConfig:
    """The provider's settings as one of `workers` runners uses them: its share of each per-minute limit."""
    return config.model_copy(update={"requests_per_minute": share(config.requests_per_minute, workers),
                                     "tokens_per_minute": share(config.tokens_per_minute, workers)})
