"""Which singleton jobs this daemon leads: on `backend: distributed`, the scorer, watch and
retention of each slot, and rotation, run in exactly one daemon among those with the
`scorer` role, elected in PostgreSQL (`registry.leadership`); embedded, the one daemon leads all.

A job asks before each run, per slot (`leads`); a candidate that does not lead skips quietly,
and takes over when the leader's session ends (it stopped, died, or lost PostgreSQL). On
shutdown every leadership is resigned, so another daemon takes over at its next run. A job's
lake commits run `fenced` by the epoch it won (`registry.fences`): once another daemon has
taken over and written, a stale leader's commit is refused instead of counting work twice.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from registry.fences import Fence, fenced
from registry.leadership import Leadership, NotLeader, job_name

if TYPE_CHECKING:
    import psycopg

    from registry.db import Database
    from registry.workspace_config import DistributedConfig


class EveryJob:
    """The embedded backend's one daemon: it leads every job."""

    def leads(self, job: str, slot: str | None = None) -> bool:
        return True

    @contextmanager
    def fenced(self, database: Database, job: str, slot: str | None = None) -> Iterator[None]:
        """Nothing to fence: no other daemon writes."""
        yield

    def resign(self) -> None:
        """Nothing is held."""


class ElectedJobs:
    """One leadership candidate per job and slot, each on its own PostgreSQL session, made on first use."""

    def __init__(self, config: DistributedConfig, candidate: str | None = None) -> None:
        self.config = config
        self.candidate = candidate or f"{config.host or socket.gethostname()}:{os.getpid()}"
        self._candidates: dict[str, Leadership] = {}
        self._claimed: dict[str, int] = {}
        """The epoch of each job whose fencing row this daemon has claimed on the lake."""
        self._guard = threading.Lock()  # jobs run in worker threads; each name's candidate is made once

    def leads(self, job: str, slot: str | None = None) -> bool:
        """Whether this daemon leads `job` (for `slot`) now: campaigns when it does not yet."""
        name = job_name(job, slot)
        with self._guard:
            candidate = self._candidates.setdefault(name, Leadership(self._connect, name, self.candidate))
        return candidate.campaign()

    @contextmanager
    def fenced(self, database: Database, job: str, slot: str | None = None) -> Iterator[None]:
        """Run the block as the leader of `job` (for `slot`), as elected by the last `leads`: its
        lake commits are fenced by the epoch won, claimed on the lake before the first one.
        `NotLeader` when this daemon does not lead it, or a newer leader has written since."""
        name = job_name(job, slot)
        with self._guard:
            candidate = self._candidates.get(name)
        if candidate is None or candidate.epoch is None:
            raise NotLeader(f"{self.candidate} does not lead {name}")
        fence = Fence(name, candidate.epoch, self.candidate)
        if self._claimed.get(name) != fence.epoch:
            fence.claim(database)
            self._claimed[name] = fence.epoch
        with fenced(fence):
            yield

    def resign(self) -> None:
        """Give up every leadership at once (shutdown), so the other candidates take over."""
        with self._guard:
            for candidate in self._candidates.values():
                candidate.resign()
            self._candidates.clear()

    def _connect(self, **options: Any) -> psycopg.Connection:
        """A session for one leadership; an unreachable PostgreSQL raises psycopg's error, which `campaign`
        counts as not leading."""
        import psycopg

        from registry.control_plane import migrate_control

        connection = psycopg.connect(self.config.postgres_url, connect_timeout=5, **options)
        migrate_control(connection)  # the leadership table, should this daemon be the first to use it
        return connection


def job_leaders(backend: str, config: DistributedConfig | None) -> EveryJob | ElectedJobs:
    """The daemon's leadership for its backend."""
    return ElectedJobs(config) if backend == "distributed" and config is not None else EveryJob()
