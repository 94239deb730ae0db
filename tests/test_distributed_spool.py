"""The spool across hosts (issue 16): each gateway host ships its complete segments to object
storage under its own prefix, never making the champion wait on it, and ingest reads them
from there exactly once."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from registry import Registry, load_workspace, utcnow
from registry.distributed import connect_control, object_store_client
from registry.published_routes import report_following
from registry.workspace_config import DistributedConfig
from shadow.ingest import ingest_from
from shadow.shipper import Heartbeat, Shipper
from shadow.shipping_report import shipping_report
from shadow.spool import ready_segments, spool_dir, write_segment
from shadow.spool_records import TrafficRecord
from shadow.spool_source import ObjectStoreSpool, object_store_spool
from tests.clirun import run_in_process
from tests.engines import PostgresServer, S3Bucket, S3Server, distributed_section
from tests.servers import GatewayProcess, champion_workspace, edit_config, wait_until

SLOT = "support-triage"
QUESTION = [{"role": "user", "content": "My invoice shows a double charge this month."}]


@pytest.fixture
def credentials(object_store, monkeypatch) -> dict[str, str]:
    for name, value in object_store.credentials_env.items():
        monkeypatch.setenv(name, value)
    return object_store.credentials_env


def gateway_host(directory: Path, simulator, postgres, store: S3Server | S3Bucket, extensions: Path, host: str) -> Path:
    """A workspace of its own (its own state dir and spool) serving as gateway host `host`."""
    workspace_dir = champion_workspace(directory, simulator.base_url, gateway={"flush_interval_s": 0.1})

    def distributed(config: dict) -> None:
        config["backend"] = "distributed"
        config["distributed"] = distributed_section(postgres, store, extensions, host=host)

    edit_config(workspace_dir, distributed)
    return workspace_dir


def gateway_env(store: S3Server | S3Bucket) -> dict[str, str]:
    """A gateway host's environment: the object store's credentials and the simulator's key."""
    return {**store.credentials_env, "SIM_API_KEY": "sim"}


def settings_of(workspace_dir: Path) -> DistributedConfig:
    return load_workspace(workspace_dir).config.distributed


def ask(gateway: GatewayProcess, count: int) -> set[str]:
    """`count` chat completions through the gateway, each answered; returns their request ids."""
    client = OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
    ids = set()
    for _ in range(count):
        response = client.chat.completions.with_raw_response.create(model=SLOT, messages=QUESTION)
        assert response.http_response.status_code == 200
        ids.add(response.headers["x-shadowzoo-request-id"])
    return ids


def shipped(settings: DistributedConfig, host: str | None = None) -> dict[str, bytes]:
    """The objects in the bucket under the spool prefix (of one host), by key."""
    return objects(object_store_client(settings.object_store), settings.object_store.bucket,
                   settings.spool_prefix + (f"{host}/" if host else ""))


def shipped_keys(source: ObjectStoreSpool) -> dict[str, bytes]:
    """The objects under the source's prefix, by key."""
    return objects(source.client, source.bucket, source.prefix)


def objects(client: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for page in pages for item in page.get("Contents", [])}


def request_ids(segments: dict[str, bytes]) -> list[str]:
    return [json.loads(line)["request_id"] for body in segments.values() for line in body.splitlines() if line]


def heartbeat_row(settings: DistributedConfig, host: str) -> tuple | None:
    with connect_control(settings) as connection:
        return connection.execute("SELECT lag_s, segments_shipped, last_shipped_at FROM spool_shipping WHERE host = %s",
                                  [host]).fetchone()


def lag_gauge(gateway: GatewayProcess) -> float:
    with urllib.request.urlopen(gateway.base_url.removesuffix("/v1") + "/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^shadowzoo_spool_shipping_lag_seconds\S* (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def empty_bucket(settings: DistributedConfig) -> None:
    client = object_store_client(settings.object_store)
    for key in shipped(settings):
        client.delete_object(Bucket=settings.object_store.bucket, Key=key)


@pytest.mark.slow
def test_two_gateway_hosts_ship_their_segments_under_their_own_prefixes_and_keep_no_local_copy(
    tmp_path: Path, simulator, postgres, object_store, lake_extensions, credentials
) -> None:
    hosts = {name: gateway_host(tmp_path / name, simulator, postgres, object_store, lake_extensions, name)
             for name in ("gw-a", "gw-b")}
    gateways = {name: GatewayProcess(directory, env=gateway_env(object_store)) for name, directory in hosts.items()}
    try:
        asked = {name: ask(gateway, 12) for name, gateway in gateways.items()}
        for name, directory in hosts.items():
            settings = settings_of(directory)
            wait_until(lambda: sorted(request_ids(shipped(settings, name))) == sorted(asked[name]), timeout_s=30)
            assert ready_segments(spool_dir(directory / ".shadowzoo")) == []
            beat = wait_until(lambda: (row := heartbeat_row(settings, name)) and row[1] == len(shipped(settings, name))
                              and row, timeout_s=15)
            assert beat[0] == 0 and beat[2] is not None
            assert lag_gauge(gateways[name]) == 0
    finally:
        outputs = {name: gateway.stop() for name, gateway in gateways.items()}
    assert all("unreachable" not in output for output in outputs.values()), outputs
    empty_bucket(settings_of(hosts["gw-a"]))


@pytest.fixture
def own_engines(tmp_path: Path):
    """A PostgreSQL and an object store of the test's own, for a test that kills one (a lake's
    catalog and its files go together, so neither is the module's)."""
    postgres, store = PostgresServer(), S3Server(tmp_path / "own-s3")
    yield postgres, store
    store.close()
    postgres.close()


@pytest.mark.slow
def test_with_the_object_store_down_the_gateway_answers_every_request_and_ingest_stores_each_capture_once(
    tmp_path: Path, simulator, own_engines: tuple[PostgresServer, S3Server], lake_extensions, monkeypatch
) -> None:
    postgres, store = own_engines
    for name, value in store.credentials_env.items():
        monkeypatch.setenv(name, value)
    directory = gateway_host(tmp_path / "ws", simulator, postgres, store, lake_extensions, "gw-down")
    settings = settings_of(directory)
    gateway = GatewayProcess(directory, env=gateway_env(store))
    try:
        before = ask(gateway, 5)
        wait_until(lambda: len(request_ids(shipped(settings))) == 5, timeout_s=30)
        store.kill()
        during = ask(gateway, 20)  # each asserted answered
        spool = spool_dir(directory / ".shadowzoo")
        wait_until(lambda: ready_segments(spool) and lag_gauge(gateway) > 0, timeout_s=30)
        wait_until(lambda: (row := heartbeat_row(settings, "gw-down")) and row[0] > 0, timeout_s=30)
        status = run_in_process(("status",), directory, {})
        assert status.code == 0, status.err
        assert re.search(r"gw-down\W+[1-9][0-9.]* s", status.out), status.out
        store.start()
        wait_until(lambda: not ready_segments(spool) and len(request_ids(shipped(settings))) == 25, timeout_s=60)
        wait_until(lambda: heartbeat_row(settings, "gw-down")[0] == 0, timeout_s=15)
    finally:
        output = gateway.stop()
    assert output.count("the object store") == 2, output  # unreachable once, reachable again once
    assert "reachable again" in output
    segments = shipped(settings)
    assert sorted(request_ids(segments)) == sorted(before | during)
    with Registry.open(load_workspace(directory)) as registry:  # the lake: DuckLake, its catalog in PostgreSQL
        assert registry.database.path is None
        source = object_store_spool(settings, tmp_path / "inbox")
        first = ingest_from(registry.database, source)
        key, body = next(iter(segments.items()))  # as if ingest died after its commit, before this delete
        source.client.put_object(Bucket=source.bucket, Key=key, Body=body)
        again = ingest_from(registry.database, source)
        with registry.database.reading() as db:
            stored = db.execute("SELECT count(*), count(DISTINCT request_id) FROM traffic").fetchall()
    assert (first.traffic_rows, again.already_ingested, again.traffic_rows, stored) == (25, 1, 0, [(25, 25)])
    assert shipped(settings) == {}


@pytest.mark.slow
def test_two_gateways_started_on_one_host_ship_its_spool_through_one_shipper(
    tmp_path: Path, simulator, postgres, object_store, lake_extensions, credentials
) -> None:
    directory = gateway_host(tmp_path / "ws", simulator, postgres, object_store, lake_extensions, "gw-twice")
    settings = settings_of(directory)
    first = GatewayProcess(directory, env=gateway_env(object_store))
    second = GatewayProcess(directory, env=gateway_env(object_store))
    try:
        asked = ask(first, 6) | ask(second, 6)
        wait_until(lambda: sorted(request_ids(shipped(settings, "gw-twice"))) == sorted(asked), timeout_s=30)
    finally:
        outputs = second.stop() + first.stop()
    assert outputs.count("another shipper holds") == 1, outputs
    empty_bucket(settings)


def traffic(request_id: str) -> bytes:
    return TrafficRecord(request_id=request_id, slot=SLOT, received_at=utcnow(), request={"messages": QUESTION},
                         champion_version="v1", status=200, output="billing", stream=False).model_dump_json().encode()


def put_segment(source: ObjectStoreSpool, host: str, name: str, lines: list[bytes]) -> None:
    source.client.put_object(Bucket=source.bucket, Key=f"{source.prefix}{host}/{name}", Body=b"\n".join(lines) + b"\n")


@pytest.fixture
def store_spool(object_store, postgres, lake_extensions, credentials, tmp_path: Path) -> ObjectStoreSpool:
    settings = DistributedConfig.model_validate(distributed_section(postgres, object_store, lake_extensions))
    empty_bucket(settings)
    return object_store_spool(settings, tmp_path / "inbox")


def test_segments_of_the_same_name_from_two_hosts_are_both_ingested(registry: Registry, store_spool) -> None:
    put_segment(store_spool, "gw-a", "0000000000001-7-00000000.jsonl", [traffic("a1"), traffic("a2")])
    assert ingest_from(registry.database, store_spool).traffic_rows == 2
    put_segment(store_spool, "gw-b", "0000000000001-7-00000000.jsonl", [traffic("b1")])
    report = ingest_from(registry.database, store_spool)
    assert (report.already_ingested, report.segments, report.traffic_rows) == (0, 1, 1)
    assert sorted(registry.database.connection.execute("SELECT segment, records FROM spool_segments").fetchall()) == [
        ("gw-a/0000000000001-7-00000000.jsonl", 2), ("gw-b/0000000000001-7-00000000.jsonl", 1)]


def test_a_segment_ingested_again_after_a_crash_before_its_delete_stores_each_capture_once(
    registry: Registry, store_spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_segment(store_spool, "gw-a", "0000000000002-7-00000000.jsonl", [traffic("c1"), traffic("c2")])

    def crash(source: ObjectStoreSpool, path: Path) -> None:
        raise KeyboardInterrupt("killed after commit")

    monkeypatch.setattr(ObjectStoreSpool, "dispose", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest_from(registry.database, store_spool)
    monkeypatch.undo()
    assert list(shipped_keys(store_spool)) == ["spool/gw-a/0000000000002-7-00000000.jsonl"]
    report = ingest_from(registry.database, store_spool)
    assert (report.already_ingested, report.traffic_rows) == (1, 0)
    assert registry.database.connection.execute("SELECT count(*) FROM traffic").fetchall() == [(2,)]
    assert list(shipped_keys(store_spool)) == []


def test_a_bad_segment_in_the_object_store_goes_to_the_quarantine_prefix_with_a_note_of_why(
    registry: Registry, store_spool
) -> None:
    put_segment(store_spool, "gw-a", "0000000000003-7-00000000.jsonl", [b"not json"])
    put_segment(store_spool, "gw-a", "0000000000004-7-00000000.jsonl", [traffic("d1"), b'{"type": "traffic"}'])
    report = ingest_from(registry.database, store_spool)
    assert (report.traffic_rows, report.quarantined_records) == (1, 2)
    keys = shipped_keys(store_spool)
    assert sorted(keys) == [
        "spool/quarantine/gw-a/0000000000003-7-00000000.jsonl",
        "spool/quarantine/gw-a/0000000000003-7-00000000.jsonl.reason",
        "spool/quarantine/gw-a/0000000000004-7-00000000-rejected.jsonl",
        "spool/quarantine/gw-a/0000000000004-7-00000000-rejected.jsonl.reason",
    ]
    assert keys["spool/quarantine/gw-a/0000000000003-7-00000000.jsonl.reason"].startswith(
        b"gw-a/0000000000003-7-00000000.jsonl: line 1: not valid JSON")
    assert b"line 2: field 'request_id'" in keys["spool/quarantine/gw-a/0000000000004-7-00000000-rejected.jsonl.reason"]
    assert ingest_from(registry.database, store_spool).segments == 0  # the quarantine is never read as segments


def test_a_segment_shipped_again_after_a_crash_before_its_local_delete_is_the_same_object(
    registry: Registry, store_spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    path = write_segment(spool, [traffic("e1"), traffic("e2")])
    shipper = Shipper(spool, store_spool.client, store_spool.bucket, store_spool.prefix, "gw-e")
    real_unlink = Path.unlink

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise KeyboardInterrupt("killed after the PUT")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        shipper.ship_ready()
    monkeypatch.setattr(Path, "unlink", real_unlink)
    assert ready_segments(spool) == [path]
    assert shipper.ship_ready() == 1 and ready_segments(spool) == []
    assert list(shipped_keys(store_spool)) == [f"spool/gw-e/{path.name}"]
    assert ingest_from(registry.database, store_spool).traffic_rows == 2


@pytest.fixture
def distributed_workspace(workspace_dir: Path, postgres, object_store, lake_extensions, credentials) -> Path:
    """The demo workspace on the distributed backend, as gateway host `gw-file`."""
    def distributed(config: dict) -> None:
        config["backend"] = "distributed"
        config["distributed"] = distributed_section(postgres, object_store, lake_extensions, host="gw-file")

    edit_config(workspace_dir, distributed)
    empty_bucket(settings_of(workspace_dir))
    return workspace_dir


def logged_exchange(request_id: str) -> str:
    """One line of a request/response log, as `shadowzoo ingest traffic` reads it."""
    return json.dumps({
        "request_id": request_id, "slot": SLOT, "request": {"model": "gpt-4o-mini", "messages": QUESTION},
        "response": {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"},
                                  "finish_reason": "stop"}]},
    }) + "\n"


def test_a_loaded_log_file_reaches_the_store_through_the_object_store(distributed_workspace: Path, cli,
                                                                      tmp_path: Path) -> None:
    log = tmp_path / "traffic.jsonl"
    log.write_text(logged_exchange("f1") + logged_exchange("f2"))
    result = cli("ingest", "traffic", str(log), "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["ingest"]["traffic_rows"] == 2
    assert ready_segments(spool_dir(distributed_workspace / ".shadowzoo")) == []
    assert shipped(settings_of(distributed_workspace)) == {}


def test_a_log_file_loaded_while_the_object_store_is_unreachable_waits_in_the_local_spool(
    distributed_workspace: Path, cli, tmp_path: Path
) -> None:
    edit_config(distributed_workspace, lambda config: config["distributed"]["object_store"].update(
        endpoint="http://127.0.0.1:1"))
    log = tmp_path / "traffic.jsonl"
    log.write_text(logged_exchange("g1"))
    result = cli("ingest", "traffic", str(log))
    assert result.code == 1
    bucket = settings_of(distributed_workspace).object_store.bucket
    assert f"the object store (http://127.0.0.1:1, bucket {bucket}) unreachable" in result.err
    assert len(ready_segments(spool_dir(distributed_workspace / ".shadowzoo"))) == 1


def test_an_unreadable_entry_in_the_spool_is_quarantined_and_the_segments_after_it_are_shipped(
    store_spool, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    (spool / "0000000000000-1-00000000.jsonl").mkdir(parents=True)  # not a file: cannot be read
    path = write_segment(spool, [traffic("h1")])
    shipper = Shipper(spool, store_spool.client, store_spool.bucket, store_spool.prefix, "gw-h")
    assert shipper.ship_ready() == 1
    assert list(shipped_keys(store_spool)) == [f"spool/gw-h/{path.name}"]
    note = spool / "quarantine" / "0000000000000-1-00000000.jsonl.reason"
    assert "cannot be read for shipping" in note.read_text()


def test_the_heartbeat_counts_what_was_shipped_while_postgres_was_down_and_says_so_once(
    object_store, lake_extensions, caplog: pytest.LogCaptureFixture
) -> None:
    postgres = PostgresServer()
    try:
        settings = DistributedConfig.model_validate(distributed_section(postgres, object_store, lake_extensions))
        heartbeat = Heartbeat(settings, "gw-pg")
        heartbeat.beat(0.0, 2, None)
        postgres.stop()  # its backends go too (a SIGKILLed postmaster's may serve on a while)
        heartbeat.beat(4.5, 5, None)
        heartbeat.beat(7.5, 9, None)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and warnings[0].startswith(f"the control plane ({settings.postgres_url}) unreachable")
        postgres.start()
        heartbeat.beat(0.0, 12, None)
        heartbeat.close()
        assert heartbeat_row(settings, "gw-pg")[:2] == (0.0, 12)
    finally:
        postgres.close()


def ship_segments(settings: DistributedConfig, host: str, spool: Path, request_ids: list[str]) -> Shipper:
    """Host `host`'s shipper, having shipped one segment per request id from its spool to the bucket."""
    spool.mkdir(parents=True, exist_ok=True)
    for request_id in request_ids:
        write_segment(spool, [traffic(request_id)])
    shipper = Shipper(spool, object_store_client(settings.object_store), settings.object_store.bucket,
                      settings.spool_prefix, host)
    assert shipper.ship_ready() == len(request_ids)
    return shipper


def report_shipping(settings: DistributedConfig, host: str, shipper: Shipper, lag_s: float) -> None:
    heartbeat = Heartbeat(settings, host)
    heartbeat.beat(lag_s, shipper.shipped, shipper.last_shipped_at)
    heartbeat.close()


def test_status_shows_per_gateway_host_its_reported_lag_its_segments_waiting_for_ingest_and_a_silent_host(
    distributed_workspace: Path, cli, tmp_path: Path
) -> None:
    settings = settings_of(distributed_workspace)
    quiet = ship_segments(settings, "gw-quiet", tmp_path / "quiet", ["q1"])
    with Registry.open(load_workspace(distributed_workspace)) as registry:
        assert ingest_from(registry.database, object_store_spool(settings, tmp_path / "inbox")).traffic_rows == 1
    busy = ship_segments(settings, "gw-busy", tmp_path / "busy", ["b1", "b2", "b3"])
    report_shipping(settings, "gw-quiet", quiet, 0.0)
    report_shipping(settings, "gw-busy", busy, 4.5)
    with connect_control(settings) as connection:  # gw-quiet's last report was two minutes ago
        connection.execute("UPDATE spool_shipping SET seen_at = seen_at - interval '2 minutes' WHERE host = 'gw-quiet'")

    result = cli("status", "--json")
    assert result.code == 0, result.err
    hosts = {h["host"]: h for h in json.loads(result.out)["gateway_shipping"]["hosts"]}
    assert (hosts["gw-busy"]["shipping_lag_s"], hosts["gw-busy"]["segments_shipped"]) == (4.5, 3)
    assert (hosts["gw-busy"]["waiting_segments"], hosts["gw-busy"]["silent"]) == (3, False)
    assert hosts["gw-busy"]["oldest_waiting_s"] >= 0 and hosts["gw-busy"]["last_shipped_at"] is not None
    assert (hosts["gw-quiet"]["waiting_segments"], hosts["gw-quiet"]["oldest_waiting_s"]) == (0, None)
    assert hosts["gw-quiet"]["silent"] and hosts["gw-quiet"]["reported_s_ago"] >= 120

    text = cli("status")
    assert text.code == 0, text.err
    assert re.search(r"gw-busy\W+4.5 s\W+3\W+\S+\W+3 segment\(s\), oldest [0-9.]+ s", text.out), text.out
    assert re.search(r"gw-quiet\W+0 s\W+1\W+\S+\W+none", text.out), text.out
    assert re.search(r"gateway host gw-quiet has not reported for 1[2-9][0-9.]* s", text.err), text.err
    assert "gw-busy has not reported" not in text.err


def test_a_gateway_host_taken_out_of_service_is_forgotten_once_silent_and_a_running_one_is_refused(
    distributed_workspace: Path, cli, tmp_path: Path
) -> None:
    settings = settings_of(distributed_workspace)
    for host in ("gw-gone", "gw-live"):
        report_shipping(settings, host, ship_segments(settings, host, tmp_path / host, [f"{host}-1"]), 0.0)
        with connect_control(settings) as connection:
            report_following(connection, host, None)
    with Registry.open(load_workspace(distributed_workspace)) as registry:  # nothing of theirs waits in the bucket
        ingest_from(registry.database, object_store_spool(settings, tmp_path / "inbox"))
    with connect_control(settings) as connection:  # gw-gone's last reports were two minutes ago
        for table, column in (("spool_shipping", "seen_at"), ("route_followers", "checked_at")):
            connection.execute(f"UPDATE {table} SET {column} = {column} - interval '2 minutes' WHERE host = 'gw-gone'")

    live = cli("forget-host", "gw-live")
    assert live.code == 1 and re.search(r"gateway host 'gw-live' reported \d+ s ago: it still runs", live.err), live.err
    unknown = cli("forget-host", "gw-never")
    assert unknown.code == 1 and re.search(r"no gateway host 'gw-never' has reported \(known: .*gw-gone.*gw-live", unknown.err)
    gone = cli("forget-host", "gw-gone", "--json")
    assert gone.code == 0, gone.err
    assert json.loads(gone.out)["host"] == "gw-gone" and json.loads(gone.out)["silent_s"] >= 120
    with connect_control(settings) as connection:
        reporting = {table: {row[0] for row in connection.execute(f"SELECT host FROM {table}")}
                     for table in ("spool_shipping", "route_followers")}
    assert all("gw-gone" not in hosts and "gw-live" in hosts for hosts in reporting.values()), reporting
    text = cli("status")
    assert text.code == 0 and "gw-gone" not in text.out + text.err, text.out + text.err


def test_with_the_object_store_unreachable_status_still_shows_the_hosts_reported_lag_and_says_why_the_rest_is_unknown(
    distributed_workspace: Path, tmp_path: Path
) -> None:
    settings = settings_of(distributed_workspace)
    report_shipping(settings, "gw-cut", ship_segments(settings, "gw-cut", tmp_path / "cut", ["c1"]), 2.5)
    settings.object_store.endpoint = "http://127.0.0.1:1"
    report = shipping_report(settings)
    assert report["bucket_error"].startswith(f"the object store (http://127.0.0.1:1, bucket {settings.object_store.bucket}) "
                                             "unreachable: ")
    cut = next(h for h in report["hosts"] if h["host"] == "gw-cut")
    assert (cut["shipping_lag_s"], cut["waiting_segments"], cut["silent"]) == (2.5, 0, False)
