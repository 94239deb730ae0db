"""Where ingest takes spool segments from: the local spool directory, or the object store the
gateway hosts ship to (`backend: distributed`).

Ingest (`shadow.ingest`) reads segments as local files and records each in the
`spool_segments` ledger under its key; a source says which segments are ready, makes a
batch of them local files (`claim`), names each one's key, and disposes of it once its rows
are committed, or quarantines it. Locally the key is the segment's file name, as it always
was; in the object store it is `<host>/<name>`, the key under `spool_prefix`, since names
are unique only per gateway host.

`claim` is where a lease goes when several ingest workers share the store (`LeasedSpool`, the
workspace's source on `backend: distributed`): it may return fewer segments than asked for
(those another worker holds are left out), and a lease expires for a worker that dies
before disposing of what it claimed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from registry.atomic import write_atomic
from registry.leases import LeaseLost, WorkLeases
from shadow import spool
from shadow.spool import SEGMENT_SUFFIX, RejectedLine, ready_segments

if TYPE_CHECKING:
    from registry import Workspace
    from registry.workspace_config import DistributedConfig

log = logging.getLogger(__name__)

INBOX = "spool-inbox"
"""Under the state dir: where segments downloaded from the object store wait for ingest."""
SEGMENT_LEASES = "segment"
"""The kind of work lease an ingest worker holds on a segment of the object store."""
BATCH_BYTES = 256 * 1024 * 1024
"""How much of a source's segments one ingest batch takes (claimed, staged and committed together)
when one process ingests them all: a large backlog never has to fit in memory."""
SHARED_BATCH_BYTES = 8 * 1024 * 1024
"""The same for ingest workers sharing the object store: a few seconds of one worker's work, so
that a backlog is split among the workers rather than claimed whole by the first to look."""


@dataclass(frozen=True)
class ReadySegment:
    """A complete segment ingest may take: its ledger key, its size in bytes, and when it was
    written (seconds since the epoch: the file's mtime, or when the object store received it)."""

    key: str
    size: int
    written_at: float


class SegmentSource(Protocol):
    """What ingest needs of wherever the segments are."""

    batch_bytes: int
    """How many bytes of segments ingest claims at once."""

    def ready(self) -> list[ReadySegment]:
        """The complete segments, oldest first."""

    def claim(self, segments: list[ReadySegment]) -> list[Path]:
        """Local files of these segments (or of those of them this worker may take)."""

    def key(self, path: Path) -> str:
        """The ledger key of a claimed segment."""

    def dispose(self, path: Path) -> None:
        """Its rows are committed: delete the segment (or archive it)."""

    def quarantine(self, path: Path, reason: str) -> None:
        """Nothing of it can be stored: set it aside with a note of why."""

    def quarantine_lines(self, path: Path, rejected: list[RejectedLine]) -> None:
        """Some of its lines cannot be stored: copy them aside with a note of why."""

    def close(self) -> None:
        """The ingest run is over: give back what was claimed and not disposed of."""


class LocalSpool:
    """The spool directory on this host (the embedded backend, and `shadowzoo ingest`)."""

    batch_bytes = BATCH_BYTES

    def __init__(self, directory: Path, archive_dir: Path | None = None) -> None:
        self.directory = directory
        self.archive_dir = archive_dir

    def ready(self) -> list[ReadySegment]:
        return [ReadySegment(path.name, *_size_and_time(path)) for path in ready_segments(self.directory)]

    def claim(self, segments: list[ReadySegment]) -> list[Path]:
        return [self.directory / segment.key for segment in segments]

    def key(self, path: Path) -> str:
        return path.name

    def dispose(self, path: Path) -> None:
        """Delete an ingested segment, or keep it in `archive_dir`."""
        if self.archive_dir is None:
            path.unlink(missing_ok=True)
            return
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(path, self.archive_dir / path.name)

    def quarantine(self, path: Path, reason: str) -> None:
        spool.quarantine(path, reason)

    def quarantine_lines(self, path: Path, rejected: list[RejectedLine]) -> None:
        spool.quarantine_lines(path, rejected)

    def close(self) -> None:
        """Nothing is held."""


class ObjectStoreSpool:
    """Segments shipped by the gateway hosts, at `<prefix><host>/<name>` in the bucket.

    A claimed segment is downloaded to `inbox/<host>/<name>`. Its object is deleted only
    after its rows are committed (the local copy first: a crash in between leaves the
    object, which the ledger then recognises). A bad one is copied to
    `<prefix>quarantine/<host>/<name>` with a `.reason` note beside it; that prefix is one
    level deeper than any segment's, so it is never listed as ready.
    """

    batch_bytes = BATCH_BYTES

    def __init__(self, client: Any, bucket: str, prefix: str, inbox: Path) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.inbox = inbox

    def ready(self) -> list[ReadySegment]:
        """Every host's segments, oldest first (names begin with their creation time); the
        inbox is emptied of what an earlier run left behind."""
        shutil.rmtree(self.inbox, ignore_errors=True)
        return stored_segments(self.client, self.bucket, self.prefix)

    def claim(self, segments: list[ReadySegment]) -> list[Path]:
        """Download each segment; one gone meanwhile (another worker finished it) is left out."""
        claimed = []
        for segment in segments:
            body = self._get(self.prefix + segment.key)
            if body is not None:
                path = self.inbox / segment.key
                write_atomic(path, body)
                claimed.append(path)
        return claimed

    def key(self, path: Path) -> str:
        return path.relative_to(self.inbox).as_posix()

    def dispose(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + self.key(path))

    def quarantine(self, path: Path, reason: str) -> None:
        target = self._quarantine_key(self.key(path))
        self._put(target, path.read_bytes())
        self._put(f"{target}.reason", (reason + "\n").encode())
        self.dispose(path)

    def quarantine_lines(self, path: Path, rejected: list[RejectedLine]) -> None:
        host, name = self.key(path).split("/")
        target = self._quarantine_key(f"{host}/{spool.rejected_name(name)}")
        self._put(target, spool.rejected_lines(rejected))
        self._put(f"{target}.reason", spool.rejected_notes(name, rejected))

    def close(self) -> None:
        """Nothing is held."""

    def _quarantine_key(self, key: str) -> str:
        return f"{self.prefix}{spool.QUARANTINE}/{key}"

    def _get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def _put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=body)


class LeasedSpool:
    """The object store's segments shared among ingest workers by work leases (kind "segment").

    Every ready segment is offered; `claim` downloads only the segments a lease gave this worker
    (oldest offered first, up to as many as asked for); `dispose` and `quarantine` complete the
    lease under its fencing token, so a worker whose lease expired and went to another worker
    leaves the segment to that one (its rows, if it committed them, are recognised there by the
    ledger key). `close` releases what the run claimed and did not finish. Ingest claims
    `SHARED_BATCH_BYTES` at a time, so that the other workers find part of a backlog left.
    """

    batch_bytes = SHARED_BATCH_BYTES

    def __init__(self, store: ObjectStoreSpool, leases: WorkLeases) -> None:
        self.store = store
        self.leases = leases
        self._ready: dict[str, ReadySegment] = {}
        self._tokens: dict[str, int] = {}

    def ready(self) -> list[ReadySegment]:
        segments = self.store.ready()
        self.leases.offer(segment.key for segment in segments)
        self._ready = {segment.key: segment for segment in segments}
        return segments

    def claim(self, segments: list[ReadySegment]) -> list[Path]:
        """Lease up to len(segments) open segments and download them; one leased but gone from the
        store (a worker disposed of it and died before completing) is completed here."""
        claimed = []
        for lease in self.leases.claim(len(segments)):
            paths = self.store.claim([self._ready.get(lease.item, ReadySegment(lease.item, 0, 0.0))])
            if paths:
                self._tokens[lease.item] = lease.token
                claimed.extend(paths)
            else:
                self._settle(lease.item, lease.token, lambda: None)
        return claimed

    def key(self, path: Path) -> str:
        return self.store.key(path)

    def dispose(self, path: Path) -> None:
        key = self.key(path)
        self._settle(key, self._tokens.pop(key), lambda: self.store.dispose(path))

    def quarantine(self, path: Path, reason: str) -> None:
        key = self.key(path)
        self._settle(key, self._tokens.pop(key), lambda: self.store.quarantine(path, reason))

    def quarantine_lines(self, path: Path, rejected: list[RejectedLine]) -> None:
        self.store.quarantine_lines(path, rejected)

    def close(self) -> None:
        if self._tokens:
            self.leases.release(self._tokens.values())
            self._tokens.clear()
        self.leases.connection.close()

    def _settle(self, key: str, token: int, action) -> None:
        """Do `action` (delete or set aside the segment) and mark its lease done, under its fencing
        token; a lease lost meanwhile leaves the segment to the worker that holds it now."""
        try:
            with self.leases.fenced(token):
                action()
        except LeaseLost:
            log.info("segment %s went to another ingest worker after this one's lease expired; left to it", key)


def segment_source(workspace: Workspace) -> SegmentSource:
    """The workspace's source: the object store shared by leases on `backend: distributed`, else the local spool."""
    settings = workspace.config.distributed
    if workspace.config.backend != "distributed" or settings is None:
        return LocalSpool(spool.spool_dir(workspace.state_dir))
    return leased_spool(settings, workspace.state_dir / INBOX)


def leased_spool(settings: DistributedConfig, inbox: Path, holder: str | None = None) -> LeasedSpool:
    """The object store's segments, claimed by leases held as `holder` (default: host and pid) for
    `distributed.segment_lease_ttl_s`."""
    from registry.control_plane import migrate_control
    from registry.distributed import connect_control

    connection = connect_control(settings, autocommit=True)
    migrate_control(connection)
    holder = holder or f"{settings.host or socket.gethostname()}:{os.getpid()}:ingest"
    leases = WorkLeases(connection, SEGMENT_LEASES, holder, settings.segment_lease_ttl_s)
    return LeasedSpool(object_store_spool(settings, inbox), leases)


def object_store_spool(settings: DistributedConfig, inbox: Path) -> ObjectStoreSpool:
    from registry.distributed import object_store_client

    return ObjectStoreSpool(object_store_client(settings.object_store), settings.object_store.bucket,
                            settings.spool_prefix, inbox)


def stored_segments(client: Any, bucket: str, prefix: str) -> list[ReadySegment]:
    """The segments in the bucket under `prefix` (`<host>/<name>` keys, the time the object store
    received each), oldest first: names begin with their creation time."""
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"].removeprefix(prefix)
            if _is_segment_key(key):
                found.append(ReadySegment(key, item["Size"], item["LastModified"].timestamp()))
    return sorted(found, key=lambda segment: (segment.key.split("/")[1], segment.key))


def oldest_age_s(segments: list[ReadySegment]) -> float | None:
    """Seconds since the oldest of `segments` was written (None when there is none)."""
    return max(0.0, time.time() - min(segment.written_at for segment in segments)) if segments else None


def _is_segment_key(key: str) -> bool:
    """`<host>/<name>.jsonl`: exactly one level below the prefix, not a hidden or temp name."""
    parts = key.split("/")
    return len(parts) == 2 and all(parts) and parts[1].endswith(SEGMENT_SUFFIX) and not parts[1].startswith(".")


def _size_and_time(path: Path) -> tuple[int, float]:
    """A segment's size and mtime (0 and now when it is gone meanwhile)."""
    try:
        stat = path.stat()
    except OSError:
        return 0, time.time()
    return stat.st_size, stat.st_mtime
