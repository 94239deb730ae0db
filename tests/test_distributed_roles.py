"""Roles (issue 16): `serve --role` runs only some of shadowzoo's parts; on backend: distributed
the scorer of each slot runs in exactly one elected daemon, and ingest workers share the object
store's segments by leases so that every capture is stored once."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from ops.leaders import ElectedJobs
from ops.operations import LocalOperations
from ops.prometheus_metrics import DaemonMetrics
from ops.tasks import TaskContext, score
from registry import Registry, load_workspace, utcnow
from registry.workspace_config import DistributedConfig
from shadow.ingest import ingest_from
from shadow.spool_records import TrafficRecord
from shadow.spool_source import SHARED_BATCH_BYTES, LeasedSpool, leased_spool, object_store_spool
from tests.conftest import SHADOWZOO
from tests.engines import distributed_section
from tests.servers import ADMIN_TOKEN, champion_workspace, wait_until

SLOT = "support-triage"
NO_UPSTREAM = "http://127.0.0.1:9/v1"
"""The providers' address: nothing these tests run calls a provider."""
QUESTION = [{"role": "user", "content": "My invoice shows a double charge this month."}]


def test_serve_names_the_option_and_the_roles_when_a_role_is_unknown(cli_script) -> None:
    result = cli_script("serve", "--role", "gateway,sorcerer")
    assert result.code == 2, result
    assert "--role" in result.err and "'sorcerer'" in result.err
    assert "gateway, ingest, runner, scorer, admin" in result.err


def test_an_embedded_workspace_refuses_a_split_that_would_give_its_database_two_owners(cli_script) -> None:
    result = cli_script("serve", "--role", "ingest", "--role", "scorer")
    assert result.code == 2, result
    assert "--role" in result.err and "backend: distributed" in result.err


@pytest.fixture(scope="module")
def credentials(object_store):
    with pytest.MonkeyPatch.context() as environment:
        for name, value in object_store.credentials_env.items():  # the registry opens the lake in this process
            environment.setenv(name, value)
        yield object_store.credentials_env


@pytest.fixture(scope="module")
def lake_workspace(tmp_path_factory, postgres, object_store, lake_extensions, credentials) -> Path:
    """The module's distributed workspace, the demo's specs registered and a champion (the registry
    is in PostgreSQL: one per module)."""
    return champion_workspace(tmp_path_factory.mktemp("roles") / "ws", NO_UPSTREAM, settings={
        "backend": "distributed",
        "distributed": distributed_section(postgres, object_store, lake_extensions, host="roles-a")})


@pytest.mark.slow
def test_a_daemon_with_the_scorer_and_admin_roles_scores_and_leaves_the_spool_to_ingest_workers(
    tmp_path: Path, lake_workspace: Path, cli
) -> None:
    workspace_dir = lake_workspace
    settings = load_workspace(workspace_dir).config.distributed
    store = object_store_spool(settings, tmp_path / "inbox")
    shipped = f"{settings.spool_prefix}roles-serve/0000000000001-7-00000000.jsonl"
    store.client.put_object(Bucket=store.bucket, Key=shipped, Body=_traffic("roles-serve-1") + b"\n")
    env = {"SHADOWZOO_ADMIN_TOKEN": ADMIN_TOKEN}
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen([str(SHADOWZOO), "serve", "--role", "scorer", "--role", "admin"], cwd=workspace_dir,
                                 env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def scored() -> dict | None:  # the scorer role's jobs start at once, each in a thread: any may end last
            result = cli("status", "--json", cwd=workspace_dir, env=env)
            ran = set(result.json().get("last_runs", {})) if result.code == 0 else set()
            return result.json() if {"score", "watch", "retention"} <= ran else None

        published = load_workspace(workspace_dir).state_dir / "daemon.json"  # before that, status would open the lake here
        wait_until(lambda: serve.poll() is not None or published.exists(), timeout_s=60)
        status = wait_until(lambda: serve.poll() is not None or scored(), timeout_s=60, interval_s=0.5)
        assert serve.poll() is None, (tmp_path / "serve.log").read_text(errors="replace")
        assert status["roles"] == "scorer,admin"
        assert {"score", "watch", "retention"} <= set(status["last_runs"]) and "ingest" not in status["last_runs"]
        assert [segment.key for segment in store.ready()] == ["roles-serve/0000000000001-7-00000000.jsonl"]
        replay = cli("replay", "--slot", SLOT, cwd=workspace_dir, env=env)  # nothing here runs shadow calls
        assert replay.code == 1 and "without runner" in replay.err, replay
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)
        store.client.delete_object(Bucket=store.bucket, Key=shipped)
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def lake_registry(lake_workspace: Path):
    """The module's workspace's registry, open (it holds the lake for the module's later tests)."""
    with Registry.open(load_workspace(lake_workspace)) as registry:
        yield registry


def _snapshots(registry: Registry) -> int:
    with registry.database.reading() as db:
        return db.execute("SELECT count(*) FROM leaderboard_snapshots WHERE slot = ?", [SLOT]).fetchall()[0][0]


def _lead_until_killed(settings: dict, candidate: str, marker: str) -> None:
    """A scorer candidate in a process of its own: it takes the slot's leadership and holds it."""
    import time

    leaders = ElectedJobs(DistributedConfig.model_validate(settings), candidate)
    while not leaders.leads("scorer", SLOT):
        time.sleep(0.05)
    Path(marker).write_text(candidate)
    time.sleep(300)


def test_one_scorer_candidate_scores_a_slot_and_another_takes_over_when_the_leader_is_killed(
    lake_registry: Registry, tmp_path: Path
) -> None:
    settings = lake_registry.workspace.config.distributed
    marker = tmp_path / "leading"
    leader = multiprocessing.get_context("spawn").Process(
        target=_lead_until_killed, args=(settings.model_dump(mode="json"), "doomed", str(marker)), daemon=True)
    leader.start()
    follower = ElectedJobs(settings, "follower")
    context = TaskContext(lake_registry.workspace, LocalOperations(lake_registry), DaemonMetrics(), leaders=follower)
    try:
        wait_until(marker.exists, timeout_s=60)
        before = _snapshots(lake_registry)
        assert score(context)["slots"] == 0  # another candidate leads: this one skips, quietly
        assert _snapshots(lake_registry) == before
        os.kill(leader.pid, signal.SIGKILL)
        leader.join(10)
        wait_until(lambda: score(context)["slots"] == 1, timeout_s=30, interval_s=0.2)
        assert _snapshots(lake_registry) == before + 1
        with_two = TaskContext(lake_registry.workspace, LocalOperations(lake_registry), DaemonMetrics(),
                               leaders=ElectedJobs(settings, "second"))
        assert score(with_two)["slots"] == 0  # the new leader keeps it
        follower.resign()
        assert score(with_two)["slots"] == 1  # and gives it up at shutdown
        with_two.leaders.resign()
    finally:
        if leader.is_alive():
            leader.kill()
        follower.resign()


def _traffic(request_id: str, output: str = "billing") -> bytes:
    return TrafficRecord(request_id=request_id, slot=SLOT, received_at=utcnow(),
                         request={"messages": QUESTION}, champion_version="v1", status=200, output=output,
                         stream=False).model_dump_json().encode()


def _ship(source: LeasedSpool, host: str, segments: int, records: int, output: str = "billing") -> set[str]:
    """Segments of a gateway host in the object store, as its shipper puts them; returns their request ids."""
    store, ids = source.store, set()
    for n in range(segments):
        batch = [f"{host}-{n}-{i}" for i in range(records)]
        body = b"\n".join(_traffic(request_id, output) for request_id in batch) + b"\n"
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}{host}/{1000 + n:013d}-7-00000000.jsonl",
                                Body=body)
        ids |= set(batch)
    return ids


def _workers(registry: Registry, tmp_path: Path) -> list[LeasedSpool]:
    settings = registry.workspace.config.distributed
    return [leased_spool(settings, tmp_path / name, holder=name) for name in ("ingest-1", "ingest-2")]


def test_two_ingest_workers_never_download_the_same_segment(lake_registry: Registry, tmp_path: Path) -> None:
    first, second = _workers(lake_registry, tmp_path)
    try:
        _ship(first, "leases-a", 3, 1)
        _ship(first, "leases-b", 3, 1)
        ready = first.ready()
        mine = {first.key(path) for path in first.claim(ready[:2])}
        theirs = {second.key(path) for path in second.claim(second.ready())}
        assert len(mine) == 2 and mine.isdisjoint(theirs) and len(mine | theirs) == 6
        first.close()  # gives back what it claimed and did not ingest
        again = {second.key(path) for path in second.claim(second.ready())}
        assert again == mine
    finally:
        first.close()
        second.close()
        for segment in second.store.ready():  # not ingested here: the next test's workers find them gone
            second.store.client.delete_object(Bucket=second.store.bucket, Key=second.store.prefix + segment.key)


def test_two_ingest_workers_over_two_gateway_hosts_store_every_capture_exactly_once(
    lake_registry: Registry, tmp_path: Path
) -> None:
    workers = _workers(lake_registry, tmp_path)
    captured = _ship(workers[0], "gw-one", 6, 3) | _ship(workers[0], "gw-two", 6, 3)
    reports = []

    def ingest(source: LeasedSpool) -> None:
        reports.append(ingest_from(lake_registry.database, source, batch_bytes=1))  # one segment per claim

    threads = [threading.Thread(target=ingest, args=(worker,)) for worker in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for worker in workers:
        worker.close()
    assert sum(report.segments for report in reports) == 12
    assert sum(report.already_ingested for report in reports) == 0  # no segment was taken by both
    with lake_registry.database.reading() as db:
        stored = db.execute("SELECT request_id FROM traffic WHERE request_id LIKE 'gw-%'").fetchall()
    assert sorted(row[0] for row in stored) == sorted(captured)
    assert workers[0].store.ready() == []


def test_a_backlog_in_the_object_store_is_split_between_two_ingest_workers(
    lake_registry: Registry, tmp_path: Path
) -> None:
    first, second = _workers(lake_registry, tmp_path)
    megabyte = 1024 * 1024
    segments = SHARED_BATCH_BYTES // megabyte + 4  # of about 1 MB each: more than one worker's batch
    captured = _ship(first, "backlog", segments, 4, output="billing " * (megabyte // 4 // 8))
    reports = []

    def second_worker_looks(done: int, total: int) -> None:  # while the first has stored one batch
        if not reports:
            reports.append(ingest_from(lake_registry.database, second))

    try:
        reports.append(ingest_from(lake_registry.database, first, progress=second_worker_looks))
    finally:
        first.close()
        second.close()
    theirs, mine = reports
    assert mine.segments > 0 and theirs.segments > 0 and mine.segments + theirs.segments == segments
    with lake_registry.database.reading() as db:
        stored = db.execute("SELECT request_id FROM traffic WHERE request_id LIKE 'backlog-%'").fetchall()
    assert sorted(row[0] for row in stored) == sorted(captured)


def test_the_segments_of_an_ingest_worker_that_died_holding_them_are_stored_once_by_another(
    lake_registry: Registry, tmp_path: Path
) -> None:
    settings = lake_registry.workspace.config.distributed.model_copy(update={"segment_lease_ttl_s": 1})
    dead, alive = (leased_spool(settings, tmp_path / name, holder=name) for name in ("dies", "lives"))
    captured = _ship(dead, "gw-dead", 2, 2)
    assert len(dead.claim(dead.ready())) == 2
    dead.leases.connection.close()  # it dies: nothing is released, its leases run out

    def stored() -> list[str]:
        ingest_from(lake_registry.database, alive)  # nothing to take until the dead worker's leases expire
        with lake_registry.database.reading() as db:
            return sorted(row[0] for row in db.execute(
                "SELECT request_id FROM traffic WHERE request_id LIKE 'gw-dead-%'").fetchall())

    try:
        wait_until(lambda: stored() == sorted(captured), timeout_s=30, interval_s=0.5)
        assert stored() == sorted(captured) and alive.store.ready() == []  # once each, and nothing left behind
    finally:
        alive.close()
