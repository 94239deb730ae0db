"""Shipping the spool to object storage (`backend: distributed`): one shipper per gateway host.

Gateway workers keep writing complete segments to the local spool exactly as on the
embedded backend; the shipper, a process of its own beside them (started by `gateway` and
`serve`), PUTs each one, oldest first, to `<spool_prefix><host>/<name>` in the bucket and
deletes the local file only after the PUT succeeded. A crash in between ships it again
under the same key with the same bytes, which is harmless. The champion path never waits on
it: while the object store is down, segments pile up locally and are shipped once it is back.

A failing object store (or PostgreSQL, where the heartbeat goes) is logged once when it
starts failing and once when it is back, not per attempt; the shipper retries after a
back-off that doubles up to `MAX_BACKOFF_S`. Its lag (the age of the oldest complete segment
not yet shipped, 0 when none) is a gauge on the gateway's /metrics and, with the count
shipped, a heartbeat row in the control plane's `spool_shipping`, which `status` shows
(`shadow.shipping_report`).
Only one shipper works on a spool at a time (an exclusive lock on `shipper.lock`).
"""

from __future__ import annotations

import fcntl
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import utcnow
from registry.control_plane import migrate_control
from registry.distributed import connect_control, host_name, object_store_client
from registry.errors import ConfigError, ShadowzooError
from registry.workspace_config import HOST_NAME
from shadow.gateway.loglines import process_log
from shadow.gateway.prometheus_metrics import ShippingMetrics
from shadow.spool import first_line, quarantine, ready_segments, segment_age_s, spool_dir

if TYPE_CHECKING:
    from registry import Workspace
    from registry.workspace_config import DistributedConfig

log = logging.getLogger("shadowzoo.shipper")
POLL_S = 0.5
HEARTBEAT_S = 2.0
MAX_BACKOFF_S = 10.0
SHIP_BATCH = 64
"""Segments shipped between two looks at the lag, the heartbeat and a stop request."""
LOCK_FILE = "shipper.lock"


class Outage:
    """A dependency that fails: logged once when it starts failing and once when it is back."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None

    def failed(self, exc: Exception, consequence: str) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s unreachable: %s; %s", self.what, first_line(exc), consequence)

    def recovered(self) -> None:
        if self.since is not None:
            log.info("%s reachable again after %.0f s", self.what, time.monotonic() - self.since)
            self.since = None


class Shipper:
    """Ships a spool directory's complete segments to `<prefix><host>/` in a bucket."""

    def __init__(self, spool: Path, client: Any, bucket: str, prefix: str, host: str) -> None:
        self.spool = spool
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix}{host}/"
        self.shipped = 0
        self.last_shipped_at: datetime | None = None

    def ship_ready(self, limit: int = SHIP_BATCH) -> int:
        """PUT up to `limit` segments, oldest first, deleting each once stored; returns how many.

        The first failure stops the pass (it raises): what is left is shipped next time."""
        return self.ship(ready_segments(self.spool)[:limit])

    def ship(self, paths: list[Path]) -> int:
        """PUT these segments in order, deleting each once stored; returns how many (a first failure raises)."""
        shipped = 0
        for path in paths:
            try:
                body = path.read_bytes()
            except FileNotFoundError:  # removed meanwhile (another shipper before this one took the lock)
                continue
            except OSError as exc:  # never blocks the segments after it
                reason = f"{path.name}: cannot be read for shipping: {exc.strerror or exc}"
                log.warning("spool segment quarantined: %s", reason)
                quarantine(path, reason)
                continue
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + path.name, Body=body)
            path.unlink(missing_ok=True)
            shipped += 1
            self.shipped += 1
            self.last_shipped_at = utcnow()
        return shipped

    def lag_s(self) -> float:
        """Age of the oldest complete segment not yet shipped; 0 when none waits."""
        segments = ready_segments(self.spool)
        return segment_age_s(segments[0]) if segments else 0.0


class Heartbeat:
    """This host's row in the control plane's `spool_shipping`, kept up to date.

    PostgreSQL being down never stops shipping: the count shipped meanwhile is added at the
    next heartbeat that gets through."""

    def __init__(self, settings: DistributedConfig, host: str) -> None:
        self.settings = settings
        self.host = host
        self.reported = 0
        self.connection: Any = None
        self.outage = Outage(f"the control plane ({settings.postgres_url})")

    def beat(self, lag_s: float, shipped: int, last_shipped_at: datetime | None) -> None:
        import psycopg

        try:
            connection = self._connect()
            with connection.transaction():
                connection.execute(_UPSERT, [self.host, lag_s, shipped - self.reported, last_shipped_at])
        except (psycopg.Error, ConfigError) as exc:
            self.close()
            self.outage.failed(exc, "the shipping heartbeat waits for it")
            return
        self.reported = shipped
        self.outage.recovered()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _connect(self) -> Any:
        if self.connection is None:
            self.connection = connect_control(self.settings, autocommit=True)
            migrate_control(self.connection)
        return self.connection


_UPSERT = """
INSERT INTO spool_shipping (host, lag_s, segments_shipped, last_shipped_at, seen_at)
VALUES (%s, %s, %s, %s, now() AT TIME ZONE 'UTC')
ON CONFLICT (host) DO UPDATE SET
    lag_s = EXCLUDED.lag_s,
    segments_shipped = spool_shipping.segments_shipped + EXCLUDED.segments_shipped,
    last_shipped_at = coalesce(EXCLUDED.last_shipped_at, spool_shipping.last_shipped_at),
    seen_at = EXCLUDED.seen_at
"""


@dataclass
class _Backoff:
    """How long to wait before the next try: POLL_S while things work, doubling while they fail."""

    wait_s: float = POLL_S

    def failed(self) -> float:
        waited, self.wait_s = self.wait_s, min(self.wait_s * 2, MAX_BACKOFF_S)
        return waited

    def reset(self) -> None:
        self.wait_s = POLL_S


def shipping_host(settings: DistributedConfig) -> str:
    """This host's name (`registry.distributed.host_name`), checked to be one part of an object key."""
    host = host_name(settings)
    if not HOST_NAME.fullmatch(host):
        raise ConfigError(f"distributed.host: the hostname {host!r} cannot be part of an object key: "
                          "set distributed.host (letters, digits, . _ -)")
    return host


def workspace_shipper(settings: DistributedConfig, state_dir: Path) -> Shipper:
    """The shipper of this host's spool."""
    return Shipper(spool_dir(state_dir), object_store_client(settings.object_store), settings.object_store.bucket,
                   settings.spool_prefix, shipping_host(settings))


def ship_now(workspace: Workspace, paths: list[Path]) -> None:
    """Ship these segments at once (`shadowzoo ingest FILE` on the distributed backend, whose
    ingest reads the object store), or say why they stay in the local spool. A shipper
    running beside may ship them too: the same key with the same bytes, harmless."""
    from botocore.exceptions import BotoCoreError, ClientError

    settings = workspace.config.distributed
    if workspace.config.backend != "distributed" or settings is None:
        return
    try:
        workspace_shipper(settings, workspace.state_dir).ship(paths)
    except (BotoCoreError, ClientError, OSError) as exc:
        raise ShadowzooError(f"{_store_name(settings)} unreachable: {first_line(exc)}; the records wait in "
                             f"{spool_dir(workspace.state_dir)} until a gateway host's shipper sends them") from None


def _store_name(settings: DistributedConfig) -> str:
    return f"the object store ({settings.object_store.endpoint or 'AWS'}, bucket {settings.object_store.bucket})"


def run_shipper(workspace: Workspace, stop: threading.Event) -> None:
    """Ship the workspace's spool until `stop` is set, then make one last pass."""
    settings = workspace.config.distributed
    assert settings is not None, "the shipper runs on backend: distributed only"
    shipper = workspace_shipper(settings, workspace.state_dir)
    heartbeat = Heartbeat(settings, shipping_host(settings))
    metrics = ShippingMetrics()
    store = Outage(_store_name(settings))
    log.info("shipping %s to s3://%s/%s", shipper.spool, settings.object_store.bucket, shipper.prefix)
    backoff, beaten_at = _Backoff(), 0.0
    while True:
        stopping = stop.is_set()
        wait_s = _ship(shipper, store, backoff, metrics)
        lag = shipper.lag_s()
        metrics.lag.set(lag)
        if stopping or time.monotonic() - beaten_at >= HEARTBEAT_S:
            heartbeat.beat(lag, shipper.shipped, shipper.last_shipped_at)
            beaten_at = time.monotonic()
        if stopping:
            break
        stop.wait(wait_s)
    heartbeat.close()


def _ship(shipper: Shipper, store: Outage, backoff: _Backoff, metrics: ShippingMetrics) -> float:
    """One pass of shipping; returns how long to wait before the next (none while a backlog remains)."""
    from botocore.exceptions import BotoCoreError, ClientError

    before = shipper.shipped
    try:
        more = shipper.ship_ready() == SHIP_BATCH
    except (BotoCoreError, ClientError, OSError) as exc:
        store.failed(exc, "segments stay in the local spool until it is back")
        return backoff.failed()
    finally:
        metrics.shipped.inc(shipper.shipped - before)
    store.recovered()
    backoff.reset()
    return 0.0 if more else POLL_S


def shipper_main(workspace_dir: str) -> None:
    """Entry point of the shipper process: holds the spool's lock, ships until SIGTERM/SIGINT."""
    from registry import load_workspace

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    with process_log():
        workspace = load_workspace(Path(workspace_dir))
        with _single_owner(workspace.state_dir / LOCK_FILE, stop) as owner:
            if owner:
                run_shipper(workspace, stop)


@contextmanager
def _single_owner(path: Path, stop: threading.Event) -> Iterator[bool]:
    """Hold an exclusive lock on `path`, waiting while another shipper holds it; False when
    stopped before it was free. The lock goes with the process, so a dead owner frees it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        waiting = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    log.info("another shipper holds %s: waiting for it to stop", path)
                    waiting = True
                if stop.wait(POLL_S):
                    yield False
                    return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
