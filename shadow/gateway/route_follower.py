"""Following the published route table (backend: distributed): one poller per gateway host.

A process beside the gateway workers (started by `gateway` and `serve`) polls the control
plane's route version and, when it differs from the host's `routes.json`, writes the published
table there atomically; the workers' `RouteWatcher` serves it as it serves a local write, so
nothing on the champion path ever waits on PostgreSQL. The file is the last good copy: while
PostgreSQL is down the workers keep serving it, a worker started then serves it, and the
follower logs the outage once and reconnects with a bounded back-off.

The control plane is authoritative: a version that differs from the local one is followed,
lower as well as higher (a control plane restored from a backup); publishers are what keep
versions in order (`registry.published_routes`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import psycopg

from registry import RouteTable, load_workspace, read_routes
from registry.atomic import write_atomic
from registry.control_plane import migrate_control
from registry.distributed import connect_control, host_name
from registry.errors import ShadowzooError
from registry.published_routes import Published, latest_published, published_version, report_following
from registry.workspace_config import DistributedConfig
from shadow.gateway.loglines import process_log

log = logging.getLogger("shadowzoo.routes")
POLL_INTERVAL_S = 0.25
MAX_BACKOFF_S = 2.0
REPORT_INTERVAL_S = 5.0


class RouteFollower:
    """Keeps one host's `routes.json` equal to the control plane's newest published table."""

    def __init__(self, config: DistributedConfig, path: Path) -> None:
        self.config = config
        self.path = path
        self.host = host_name(config)
        self._connection: psycopg.Connection | None = None
        self._local: tuple[tuple[int, int], RouteTable | None] | None = None
        self._outage: str | None = None
        self._reported: tuple[int | None, float] | None = None

    def poll(self) -> bool:
        """One look at the control plane, writing its table here when it is another version; False when unreachable."""
        try:
            connection = self._connect()
            local = self.local_table()
            version = published_version(connection)
            if version and version != (local.version if local else None):
                local = self._apply(latest_published(connection)) or local
            self._report(connection, local)
        except (psycopg.Error, ShadowzooError) as exc:
            self._lost(exc)
            return False
        if self._outage is not None:
            log.info("control plane reachable again; following the routes it publishes (this host serves version %s)",
                     local.version if local else None)
            self._outage = None
        return True

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set, backing off (up to MAX_BACKOFF_S) while the control plane is unreachable."""
        wait_s = POLL_INTERVAL_S
        while not stop.is_set():
            wait_s = POLL_INTERVAL_S if self.poll() else min(wait_s * 2, MAX_BACKOFF_S)
            stop.wait(wait_s)
        self._disconnect()

    def local_table(self) -> RouteTable | None:
        """The table in this host's `routes.json` (re-read only when the file changed); None if missing or bad."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        signature = (stat.st_mtime_ns, stat.st_size)
        if self._local is None or self._local[0] != signature:
            try:
                table = read_routes(self.path)
            except (OSError, ValueError):
                table = None  # the published table replaces it
            self._local = (signature, table)
        return self._local[1]

    def _apply(self, published: Published | None) -> RouteTable | None:
        """Write the published table to `routes.json` as is; a table this shadowzoo cannot read is not written."""
        if published is None:
            return None
        try:
            table = RouteTable.model_validate_json(published.document)
        except ValueError as exc:
            log.error("published routes version %s is unreadable here (%s); still serving the local copy",
                      published.version, str(exc).splitlines()[0])
            return None
        try:
            write_atomic(self.path, published.document.encode("utf-8"))
        except OSError as exc:
            log.error("cannot write routes version %s to %s (%s); still serving the local copy",
                      published.version, self.path, exc)
            return None
        log.info("routes version %s written to %s", published.version, self.path)
        return table

    def _report(self, connection: psycopg.Connection, table: RouteTable | None) -> None:
        """Tell the control plane which version this host serves: when it changes, and every REPORT_INTERVAL_S."""
        version, now = (table.version if table else None), time.monotonic()
        if self._reported is None or self._reported[0] != version or now - self._reported[1] >= REPORT_INTERVAL_S:
            report_following(connection, self.host, table)
            self._reported = (version, now)

    def _connect(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = connect_control(self.config, autocommit=True)
            migrate_control(self._connection)
        return self._connection

    def _lost(self, exc: Exception) -> None:
        """Drop the connection; log the outage once, not once per retry."""
        self._disconnect()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._outage is None:
            local = self.local_table()
            log.warning("control plane unreachable (%s); serving the local copy %s (version %s) until it is back",
                        reason, self.path, local.version if local else None)
        self._outage = reason

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def follower_main(workspace_dir: str) -> None:
    """Entry point of a gateway host's route follower process; SIGTERM or SIGINT stops it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    with process_log():
        workspace = load_workspace(Path(workspace_dir))
        RouteFollower(workspace.config.distributed, workspace.routes_path).run(stop)
