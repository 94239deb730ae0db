"""Which singleton jobs this daemon leads: on `backend: distributed`, the scorer, watch and
retention of each slot, and rotation, run in exactly one daemon among those with the
`scorer` role, elected in PostgreSQL (`registry.leadership`); embedded, the one daemon leads all.

A job asks before each run, per slot (`leads`); a candidate that does not lead skips quietly,
and takes over when the leader's session ends (it stopped, died, or lost PostgreSQL). On
shutdown every leadership is resigned, so another daemon takes over at its next run.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING, Any

from registry.leadership import Leadership, job_name

if TYPE_CHECKING:
    import psycopg

    from registry.workspace_config import DistributedConfig


class EveryJob:
    """The embedded backend's one daemon: it leads every job."""

    def leads(self, job: str, slot: str | None = None) -> bool:
        return True

    def resign(self) -> None:
        """Nothing is held."""


class ElectedJobs:
    """One leadership candidate per job and slot, each on its own PostgreSQL session, made on first use."""

    def __init__(self, config: DistributedConfig, candidate: str | None = None) -> None:
        self.config = config
        self.candidate = candidate or f"{config.host or socket.gethostname()}:{os.getpid()}"
        self._candidates: dict[str, Leadership] = {}
        self._guard = threading.Lock()  # jobs run in worker threads; each name's candidate is made once

    def leads(self, job: str, slot: str | None = None) -> bool:
        """Whether this daemon leads `job` (for `slot`) now: campaigns when it does not yet."""
        name = job_name(job, slot)
        with self._guard:
            candidate = self._candidates.setdefault(name, Leadership(self._connect, name, self.candidate))
        return candidate.campaign()

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
