"""DuckDB instances with the distributed backend's extensions loaded, kept for the process's next open.

DuckDB verifies an extension's signature each time an instance loads it, hashing the whole
binary: about 0.6 s of CPU for ducklake, postgres and httpfs together, nine tenths of what an
open of the lake cost. A process that opens the lake again and again (a CLI command run in
process, a test suite, a migration that reopens) paid it at every open, with an instance each.

An open takes an instance here (`take`) and works on a connection of its own to it (`connect`);
`give_back` detaches the lake and the control plane, drops the credentials, resets every setting
the open changed, and keeps the instance for the next open. An instance serves one open at a time:
opens at once in one process get instances of their own. Nothing attached outlives its open, so
each open attaches afresh, as before (a restarted PostgreSQL is reached anew).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb

from registry.db import connection_config, sql_literal

KEPT = 2
"""Idle instances kept per extension directory (more than two opens at once in one process is rare)."""
SET_BY_EACH_OPEN = frozenset({"temp_directory"})
"""Settings `take` sets for each open: not reset."""
log = logging.getLogger("shadowzoo.db")


@dataclass(frozen=True)
class LakeInstance:
    """One in-memory DuckDB instance: its root connection, and its settings as it was made."""

    root: duckdb.DuckDBPyConnection
    extension_directory: str | None
    defaults: dict[str, str]
    configured: dict[str, int]
    """The settings it was made with (`connection_config`): reset to these, not to DuckDB's defaults."""

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new connection to the instance (its own session and temporary tables)."""
        return self.root.cursor()


_idle: dict[str | None, list[LakeInstance]] = {}
_idle_lock = threading.Lock()


def take(extension_directory: str | None, spill_dir: Path) -> LakeInstance:
    """An instance with the extensions loaded, spilling to `spill_dir`: a kept one when one can
    spill there, else a new one."""
    while (kept := _pop_idle(extension_directory)) is not None:
        if _spill_to(kept.root, spill_dir):
            return kept
        kept.root.close()
    from registry.distributed import load_extensions

    configured = connection_config()
    root = duckdb.connect(config={"temp_directory": str(spill_dir), **configured})
    try:
        load_extensions(root, extension_directory)
    except BaseException:
        root.close()
        raise
    return LakeInstance(root, extension_directory, _settings(root), configured)


def give_back(instance: LakeInstance) -> None:
    """Detach what the open attached, reset what it changed, and keep `instance` for the next
    open; close it instead when enough are kept, or when it cannot be cleaned."""
    from registry.distributed import detach_engines

    try:
        detach_engines(instance.root)
        changed = {name for name, value in _settings(instance.root).items()
                   if instance.defaults.get(name) != value} - SET_BY_EACH_OPEN
        for name in sorted(changed):
            instance.root.execute(f"RESET GLOBAL {name}")
        for name, value in instance.configured.items():  # after the resets: an alias (worker_threads) resets its setting
            instance.root.execute(f"SET GLOBAL {name} = {value}")
    except duckdb.Error as exc:
        log.debug("closing a DuckDB instance that could not be cleaned for reuse: %s", exc)
        instance.root.close()
        return
    with _idle_lock:
        idle = _idle.setdefault(instance.extension_directory, [])
        if len(idle) < KEPT:
            idle.append(instance)
            return
    instance.root.close()


def _pop_idle(extension_directory: str | None) -> LakeInstance | None:
    with _idle_lock:
        idle = _idle.get(extension_directory)
        return idle.pop() if idle else None


def _spill_to(root: duckdb.DuckDBPyConnection, spill_dir: Path) -> bool:
    """Point the instance's spilling at `spill_dir`; False when it cannot be (it spilled elsewhere)."""
    wanted = str(spill_dir)
    if root.execute("SELECT current_setting('temp_directory')").fetchone()[0] == wanted:
        return True
    try:
        root.execute(f"SET temp_directory = {sql_literal(wanted)}")
    except duckdb.Error:
        return False
    return True


def _settings(root: duckdb.DuckDBPyConnection) -> dict[str, str]:
    return dict(root.execute("SELECT name, value FROM duckdb_settings()").fetchall())
