"""The gateway's view of `routes.json`: reloaded within a second of a change, never torn.

The registry replaces the file atomically. A file that is missing or does not parse keeps
the last good table in service, and the problem is logged once per distinct change; a
table is logged when what it serves changes, not each time the file is rewritten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from registry import Route, RouteTable, read_routes

log = logging.getLogger("shadowzoo.gateway")
POLL_INTERVAL_S = 0.25


class RouteWatcher:
    """Holds the current route table and keeps it in step with the file."""

    def __init__(self, path: Path, on_change: Callable[[RouteTable], None] | None = None) -> None:
        """`on_change` is called with each table written after this start (the gateway takes its redaction
        rules from it; the file already there may predate the config the worker just read)."""
        self.path = path
        self.on_change: Callable[[RouteTable], None] | None = None
        self.table: RouteTable | None = None
        self._seen: tuple[int, int] | None = None
        self.reload()
        self.on_change = on_change

    def route(self, slot: str) -> Route | None:
        return self.table.slots.get(slot) if self.table else None

    def slots(self) -> list[str]:
        return sorted(self.table.slots) if self.table else []

    def reload(self) -> None:
        """Read the file if it changed since the last look; keep the old table if it is bad."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._seen != (0, 0):
                log.warning("routes file %s does not exist yet; no slot is served until a champion is promoted", self.path)
                self._seen = (0, 0)
            return
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._seen:
            return
        self._seen = signature
        try:
            table, self.table = self.table, read_routes(self.path)
        except (OSError, ValueError) as exc:
            log.error("routes file %s is unreadable (%s); still serving the last good table", self.path,
                      str(exc).splitlines()[0])
            return
        if self.on_change is not None:
            self.on_change(self.table)
        if table is not None and table.slots == self.table.slots:
            return  # rewritten as it was (a daemon start, a config reload): nothing to say
        log.info("routes loaded: %s", ", ".join(f"{s}={r.version_id}" for s, r in self.table.slots.items()) or "none")

    async def watch(self) -> None:
        """Poll the file until cancelled."""
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self.reload()
