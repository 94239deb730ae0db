"""What `status` says about each gateway host's spool shipping (`backend: distributed`).

Two sources, each read on its own so that one being unreachable still shows the other:

- the control plane's `spool_shipping`, where each host's shipper reports every couple of
  seconds (`shadow.shipper.Heartbeat`): its shipping lag (the age of its oldest complete
  segment not yet in the object store), the count shipped, when it last shipped. A host
  that has not reported for `SILENT_AFTER_S` is flagged `silent`: its shipper is stopped,
  cannot reach PostgreSQL, or the host is down, and the lag it last reported may be stale;
- the bucket: per host, the segments under `<spool_prefix><host>/` that ingest has not taken
  yet (ingest deletes each once its rows are committed), and how long the oldest has waited
  there since the object store received it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from registry.distributed import connect_control, object_store_client
from registry.errors import ShadowzooError
from shadow.spool import first_line
from shadow.spool_source import ReadySegment, oldest_age_s, stored_segments

if TYPE_CHECKING:
    from registry.workspace_config import DistributedConfig

SILENT_AFTER_S = 30.0
"""A host whose last heartbeat (one every `shadow.shipper.HEARTBEAT_S`) is older than this is flagged."""


def shipping_report(settings: DistributedConfig) -> dict[str, Any]:
    """Per gateway host (`hosts`, by name) its heartbeat and what of it waits in the bucket; `error`
    when PostgreSQL is unreachable, `bucket_error` when the object store is."""
    report: dict[str, Any] = {}
    try:
        heartbeats = _heartbeats(settings)
    except ShadowzooError as exc:
        heartbeats, report["error"] = {}, first_line(exc)
    try:
        waiting = _waiting(settings)
    except ShadowzooError as exc:
        waiting, report["bucket_error"] = {}, first_line(exc)
    report["hosts"] = [_host(host, heartbeats.get(host), waiting.get(host, []))
                       for host in sorted(heartbeats.keys() | waiting.keys())]
    return report


def _host(host: str, heartbeat: dict[str, Any] | None, waiting: list[ReadySegment]) -> dict[str, Any]:
    reported = heartbeat or {"shipping_lag_s": None, "segments_shipped": 0, "last_shipped_at": None,
                             "seen_at": None, "reported_s_ago": None}
    ago = reported["reported_s_ago"]
    return {"host": host, **reported, "silent": ago is None or ago > SILENT_AFTER_S,
            "waiting_segments": len(waiting),
            "oldest_waiting_s": None if (age := oldest_age_s(waiting)) is None else round(age, 1)}


def _heartbeats(settings: DistributedConfig) -> dict[str, dict[str, Any]]:
    """Each host's last heartbeat (none before a shipper's first), or an error saying why not."""
    import psycopg

    try:
        with connect_control(settings) as connection:
            known = connection.execute("SELECT to_regclass('spool_shipping') IS NOT NULL").fetchone()[0]
            rows = connection.execute(_HEARTBEATS).fetchall() if known else []
    except psycopg.Error as exc:
        raise ShadowzooError(f"the control plane ({settings.postgres_url}) unreachable: {first_line(exc)}") from None
    return {host: {"shipping_lag_s": round(lag, 1), "segments_shipped": shipped,
                   "last_shipped_at": shipped_at.isoformat() if shipped_at else None, "seen_at": seen_at.isoformat(),
                   "reported_s_ago": round(float(ago), 1)}
            for host, lag, shipped, shipped_at, seen_at, ago in rows}


_HEARTBEATS = """
SELECT host, lag_s, segments_shipped, last_shipped_at, seen_at, extract(epoch FROM (now() AT TIME ZONE 'UTC') - seen_at)
FROM spool_shipping ORDER BY host
"""


def _waiting(settings: DistributedConfig) -> dict[str, list[ReadySegment]]:
    """The segments in the bucket not yet ingested, by host, or an error saying why they are unknown."""
    from botocore.exceptions import BotoCoreError, ClientError

    store = settings.object_store
    try:
        segments = stored_segments(object_store_client(store), store.bucket, settings.spool_prefix)
    except (BotoCoreError, ClientError) as exc:
        raise ShadowzooError(f"the object store ({store.endpoint or 'AWS'}, bucket {store.bucket}) unreachable: "
                          f"{first_line(exc)}") from None
    waiting: dict[str, list[ReadySegment]] = {}
    for segment in segments:
        waiting.setdefault(segment.key.split("/")[0], []).append(segment)
    return waiting
