"""Leader election in PostgreSQL: exactly one process runs a singleton job (a slot's scorer, watch,
retention, rotation) among the candidates on every host.

Each job name has a row in `leadership`; its id keys a session-level advisory lock, which a
candidate tries to take (`pg_try_advisory_lock`, never waiting) on a connection of its own.
The lock lives as long as that session: when the leader's process dies (even `kill -9`) or
PostgreSQL restarts, the session ends, the lock is free, and the next candidate to campaign
takes it. Each new leader bumps the row's epoch. A leader checks it still leads before each
run (one round trip); a run that outlives its leadership is refused where it writes: on the
lake by `registry.fences` (the job's lake commits carry the epoch), in PostgreSQL by `fence`
(the epoch it won must still be the row's; the row is share-locked until the write commits,
so a new leader's bump waits for it).

A session whose host vanishes without closing its socket (a partition, a frozen VM) holds
the lock until PostgreSQL notices: TCP keepalives on the leader's connection bound that to
`KEEPALIVE_OPTIONS`'s idle + interval × count seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from registry.errors import ShadowzooError

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x5AD0_2002
"""First key of every leadership lock (the second is the job's row id), apart from other advisory locks."""
KEEPALIVE_OPTIONS: dict[str, Any] = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                                     "keepalives_count": 3}


class NotLeader(ShadowzooError):
    """A write of a leader that no longer leads (another candidate won since): refused."""


def job_name(job: str, slot: str | None = None) -> str:
    """The leadership name of a singleton job, per slot where it runs per slot ("scorer/support")."""
    return f"{job}/{slot}" if slot else job


class Leadership:
    """One candidate for one job's leadership, on a dedicated connection from `connect(**options)`."""

    def __init__(self, connect: Callable[..., "psycopg.Connection"], name: str, candidate: str) -> None:
        self._connect = connect
        self.name = name
        self.candidate = candidate
        self.epoch: int | None = None
        """The epoch this candidate won, while it leads; None otherwise."""
        self._connection: psycopg.Connection | None = None
        self._lock_id: int | None = None

    def campaign(self) -> bool:
        """Whether this candidate leads now: a leader checks its lock is still held; any other
        candidate tries to take it. An unreachable PostgreSQL means not leading."""
        import psycopg

        try:
            if self.epoch is not None and self._holds_lock():
                return True
            self.epoch = None
            return self._try_take()
        except psycopg.Error as exc:
            self._drop(f"{type(exc).__name__}: {exc}".strip())
            return False

    def fence(self, connection: "psycopg.Connection") -> int:
        """Refuse a write of a stale leader: call inside the writing transaction, before the write.

        Returns the epoch; `NotLeader` when this candidate never led or another has won since.
        """
        row = connection.execute("SELECT epoch, leader FROM leadership WHERE name = %s FOR SHARE", [self.name]).fetchone()
        if self.epoch is None or row is None or row[0] != self.epoch:
            current = f"epoch {row[0]}, led by {row[1]}" if row else "no leader yet"
            raise NotLeader(f"{self.candidate} no longer leads {self.name} (it won epoch {self.epoch}; now {current})")
        return self.epoch

    def resign(self) -> None:
        """Stop leading (shutdown): the lock is freed at once for the other candidates."""
        import psycopg

        if self.epoch is not None and self._connection is not None:
            try:
                self._connection.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, self._lock_id])
            except psycopg.Error:
                pass  # the session is gone, and its lock with it
        self._drop("resigned")

    def _try_take(self) -> bool:
        connection = self._session()
        with connection.transaction():
            connection.execute("INSERT INTO leadership (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", [self.name])
        self._lock_id = connection.execute("SELECT id FROM leadership WHERE name = %s", [self.name]).fetchone()[0]
        taken = connection.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, self._lock_id]).fetchone()[0]
        if not taken:
            return False
        with connection.transaction():
            self.epoch = connection.execute(
                "UPDATE leadership SET epoch = epoch + 1, leader = %s, since = now() WHERE id = %s RETURNING epoch",
                [self.candidate, self._lock_id]).fetchone()[0]
        log.info("%s leads %s (epoch %d)", self.candidate, self.name, self.epoch)
        return True

    def _holds_lock(self) -> bool:
        """One round trip: this session still holds the lock (it ends with the session, never otherwise)."""
        assert self._connection is not None and self._lock_id is not None
        return bool(self._connection.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted "
            "AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 2", [LOCK_NAMESPACE, self._lock_id]).fetchone()[0])

    def _session(self) -> "psycopg.Connection":
        if self._connection is None or self._connection.closed:
            self._connection = self._connect(autocommit=True, **KEEPALIVE_OPTIONS)
        return self._connection

    def _drop(self, why: str) -> None:
        """Close the session (which frees the lock, if PostgreSQL still has it) and forget the epoch."""
        if self.epoch is not None:
            log.warning("%s no longer leads %s (epoch %d): %s", self.candidate, self.name, self.epoch, why)
        self.epoch = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
