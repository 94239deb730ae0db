"""Fencing an elected leader's lake commits by its epoch: a stale leader's write is refused.

A leader (`registry.leadership`) that lost its PostgreSQL session (a paused process, a cut
network, a PostgreSQL restart) does not know it at once: it may still be in the middle of a
refresh whose commit would land after a new leader's, appending the same pairs again. Its
lease on leadership cannot guard that commit, because the commit goes to the lake, not to
PostgreSQL's control tables. So the fence lives on the lake: `leader_fences` holds, per job
name, the newest epoch that wrote, and every lake commit a leader makes checks and rewrites
that row in the same transaction (`Fence.check`, called by `Database.committed` under
`fenced`):

- a new leader first `claim`s the row with its epoch, in a commit of its own, before its
  first write;
- a commit whose transaction sees a newer epoch than its own is refused (`NotLeader`): its
  transaction is rolled back, nothing of it written;
- a commit whose transaction began before the newer epoch was written rewrote the same
  row: DuckLake refuses it for the conflict, and the commit done again sees the newer epoch.

A stale leader's commit that lands before the new leader's claim is ordered before
everything the new leader writes (their commits conflict on the row, so the new leader's is
done again on top of it): nothing is counted twice. The row is deleted and inserted each time
(a DuckLake update), so every fenced commit of every job conflicts with the others': they
commit one at a time, which the scorer's commits do anyway. Only two first claims of a job
(no row yet) may both commit, as two inserts: the newest epoch is the row's `max`, read as such.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.leadership import NotLeader

if TYPE_CHECKING:
    import duckdb

    from registry.db import Database

FENCES_TABLE = "CREATE TABLE IF NOT EXISTS lake.main.leader_fences (name VARCHAR NOT NULL, epoch BIGINT NOT NULL)"
"""The lake's fencing rows (the distributed backend's own, like `lake_migrations`; `registry.planes`)."""

_ACTIVE: ContextVar[Fence | None] = ContextVar("shadowzoo_leader_fence", default=None)


@dataclass(frozen=True)
class Fence:
    """The epoch `candidate` won for the job `name`: what its lake commits are fenced by."""

    name: str
    epoch: int
    candidate: str

    def claim(self, database: Database) -> None:
        """Write this epoch to the job's fencing row (a new leader, before its first write):
        every transaction of an older leader still open then is refused at its commit."""
        database.committed(self.check)

    def check(self, db: duckdb.DuckDBPyConnection) -> None:
        """In a writing transaction: `NotLeader` if a newer leader wrote the row; otherwise
        rewrite it, so that a newer leader's claim committed meanwhile refuses this commit."""
        newest = db.execute("SELECT max(epoch) FROM leader_fences WHERE name = ?", [self.name]).fetchone()[0]
        if newest is not None and newest > self.epoch:
            raise NotLeader(f"{self.candidate} no longer leads {self.name}: it won epoch {self.epoch}, and the leader "
                            f"of epoch {newest} has written since; its commit was refused")
        db.execute("DELETE FROM leader_fences WHERE name = ?", [self.name])
        db.execute("INSERT INTO leader_fences VALUES (?, ?)", [self.name, self.epoch])


@contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Fence every `Database.committed` of this thread (or task) by `fence` for the block (None: no fence)."""
    token = _ACTIVE.set(fence)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active() -> Fence | None:
    """The fence of the leader whose job this thread runs now, if any."""
    return _ACTIVE.get()
