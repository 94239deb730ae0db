"""Routes from the control plane (backend: distributed, issue 16): a promotion through one admin
reaches every gateway host; each host keeps the last good copy on its own disk, so its gateway
keeps answering, and starts, while PostgreSQL is down, and follows again once it is back.

Two gateway "hosts" are two workspaces with their own state dirs on one PostgreSQL; the admin
host's embedded registry publishes (as a promotion does), real gateway processes answer
through the simulator.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from ops.workspace_init import init_workspace
from registry import Registry, RouteTable, load_workspace, read_routes
from registry.distributed import connect_control
from registry.published_routes import latest_published, publish_routes, route_followers
from tests.engines import PostgresServer, S3Bucket, distributed_section
from tests.servers import GatewayProcess, edit_config, start_simulator, wait_until
from zoo import load_zoo, register_specs

SLOT = "support-triage"
GATEWAY_ENV = {"SIM_API_KEY": "sim"}


@dataclass
class Hosts:
    """The admin host (a registry and a gateway) and a second gateway host, on one control plane."""

    control: PostgresServer
    object_store: S3Bucket
    lake_extensions: Path
    admin: Path
    other: Path
    variants: dict[str, str]
    gateways: dict[Path, GatewayProcess]


@pytest.fixture(scope="module")
def control() -> PostgresServer:
    """This module's own PostgreSQL: its tests kill it."""
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, control: PostgresServer, object_store: S3Bucket, lake_extensions: Path) -> Hosts:
    with pytest.MonkeyPatch.context() as environment:
        for name, value in object_store.credentials_env.items():  # the registry opens the lake in this process
            environment.setenv(name, value)
            GATEWAY_ENV[name] = value
        yield from _hosts(tmp_path_factory, control, object_store, lake_extensions)


def _hosts(tmp_path_factory, control: PostgresServer, object_store: S3Bucket, lake_extensions: Path) -> Iterator[Hosts]:
    simulator = start_simulator()
    admin = _host(tmp_path_factory.mktemp("host-a"), "host-a", control, simulator.base_url, object_store, lake_extensions)
    other = _host(tmp_path_factory.mktemp("host-b"), "host-b", control, simulator.base_url, object_store, lake_extensions)
    workspace = load_workspace(admin)
    with Registry.open(workspace) as registry:
        zoo = load_zoo(workspace.specs_dir)
        variants = {o.spec_file.spec.name: o.registration.variant.version_id
                    for o in register_specs(zoo.specs, zoo, workspace, registry)}
        registry.promote(SLOT, variants["baseline"], "tester", "first", None)
    gateways = {ws: GatewayProcess(ws, env=GATEWAY_ENV) for ws in (admin, other)}
    yield Hosts(control, object_store, lake_extensions, admin, other, variants, gateways)
    for gateway in gateways.values():
        gateway.stop()
    simulator.stop()


@pytest.fixture
def up(hosts: Hosts) -> Hosts:
    """The hosts, with PostgreSQL running (a test before may have left it killed)."""
    if not hosts.control.ready():
        hosts.control.start()
    return hosts


def _host(directory: Path, name: str, control: PostgresServer, simulator_url: str, object_store: S3Bucket,
          lake_extensions: Path) -> Path:
    """A gateway host's workspace: the demo on the simulator, on the distributed backend."""
    workspace_dir = init_workspace(directory)

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator_url
        config["backend"] = "distributed"
        config["distributed"] = distributed_section(control, object_store, lake_extensions, host=name)

    edit_config(workspace_dir, configure)
    return workspace_dir


def _promote(hosts: Hosts, spec: str) -> str:
    """Promote through the admin host's registry, as `shadowzoo promote` does; returns the version id."""
    version_id = hosts.variants[spec]
    with Registry.open(load_workspace(hosts.admin)) as registry:
        registry.promote(SLOT, version_id, "tester", None, None)
    return version_id


def _champion_served(gateway: GatewayProcess) -> str:
    """The champion version a gateway answers with (its response header)."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(model=SLOT, messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content
    return raw.headers["x-shadowzoo-version"]


def _all_serve(hosts: Hosts, version_id: str) -> bool:
    return all(_champion_served(gateway) == version_id for gateway in hosts.gateways.values())


def test_a_promotion_through_one_admin_reaches_both_gateway_hosts(up: Hosts, cli) -> None:
    wait_until(lambda: _all_serve(up, up.variants["baseline"]), timeout_s=30)
    promoted = _promote(up, "careful-mini")

    wait_until(lambda: _all_serve(up, promoted), timeout_s=30)
    config = load_workspace(up.admin).config.distributed
    with connect_control(config) as connection:
        published = latest_published(connection)
        assert RouteTable.model_validate_json(published.document).slots[SLOT].version_id == promoted
        wait_until(lambda: {(f.host, f.version) for f in route_followers(connection)}
                   == {("host-a", published.version), ("host-b", published.version)}, timeout_s=30)
    assert read_routes(load_workspace(up.other).routes_path).version == published.version
    report = json.loads(cli("status", "--json", cwd=up.admin).out)["gateway_routes"]
    assert report["published_version"] == published.version
    assert [(h["host"], h["version"], h["behind"]) for h in report["hosts"]] == [
        ("host-a", published.version, False), ("host-b", published.version, False)]
    shown = cli("status", cwd=up.admin)
    assert f"gateway hosts' routes (published version {published.version})" in shown.out and "host-b" in shown.out


def test_a_publication_built_before_a_promotion_never_replaces_it(up: Hosts) -> None:
    workspace = load_workspace(up.admin)
    registry = Registry.open(workspace)
    built, publish_stale = threading.Event(), threading.Event()

    def slow_build() -> RouteTable:
        table = registry.route_table()  # the champions as they are now, before the promotion below
        built.set()
        publish_stale.wait(30)
        return table

    try:
        stale = threading.Thread(target=publish_routes, args=(workspace.config.distributed, slow_build, "admin-1"))
        stale.start()
        assert built.wait(30)
        promoted = up.variants["cheap-mini"]
        promotion = threading.Thread(target=registry.promote, args=(SLOT, promoted, "admin-2", None, None))
        promotion.start()
        wait_until(lambda: not promotion.is_alive() or _publication_waiting(up), timeout_s=30)
        publish_stale.set()
        stale.join(30)
        promotion.join(30)
    finally:
        publish_stale.set()
        registry.close()
    with connect_control(workspace.config.distributed) as connection:
        newest = RouteTable.model_validate_json(latest_published(connection).document)
    assert newest.slots[SLOT].version_id == promoted
    wait_until(lambda: _all_serve(up, promoted), timeout_s=30)


def _publication_waiting(hosts: Hosts) -> bool:
    """Some session waits for a lock (the second publisher, queued behind the first)."""
    with connect_control(load_workspace(hosts.admin).config.distributed) as connection:
        return connection.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] > 0


def test_gateways_serve_their_local_copy_while_postgres_is_down_and_follow_again_after(up: Hosts, cli) -> None:
    champion = _champion_served(up.gateways[up.admin])
    wait_until(lambda: _all_serve(up, champion), timeout_s=30)
    up.control.kill()

    for gateway in up.gateways.values():
        wait_until(lambda: "control plane unreachable" in gateway.output(), timeout_s=30)
    assert all(_champion_served(gateway) == champion for gateway in up.gateways.values() for _ in range(3))
    up.gateways[up.other].stop()
    restarted = up.gateways[up.other] = GatewayProcess(up.other, env=GATEWAY_ENV)
    assert _champion_served(restarted) == champion  # from the local copy: PostgreSQL is still down
    wait_until(lambda: "control plane unreachable" in restarted.output(), timeout_s=30)
    for command in (("status",), ("promote", SLOT, up.variants["careful-large"], "--force", "--reason", "drill")):
        refused = cli(*command, cwd=up.admin)  # the registry and the lake's catalog are in PostgreSQL too
        assert refused.code == 1 and "distributed.postgres_url: cannot connect" in refused.err, command

    up.control.start()
    promoted = _promote(up, "flash")
    wait_until(lambda: _all_serve(up, promoted), timeout_s=30)
    for gateway in up.gateways.values():
        wait_until(lambda: "control plane reachable again" in gateway.output(), timeout_s=30)  # logged after the write
        assert gateway.output().count("control plane unreachable") == 1  # logged once per outage, not per retry


def test_a_new_gateway_host_is_ready_with_the_published_routes_it_never_had(up: Hosts, tmp_path: Path) -> None:
    fresh = _host(tmp_path / "host-c", "host-c", up.control, "http://127.0.0.1:9/v1", up.object_store, up.lake_extensions)
    gateway = GatewayProcess(fresh, env=GATEWAY_ENV)
    try:
        with connect_control(load_workspace(fresh).config.distributed) as connection:
            published = RouteTable.model_validate_json(latest_published(connection).document)
        ready = wait_until(lambda: (answer := _ready(gateway)).get("routes_version") == published.version and answer,
                           timeout_s=30)
        assert ready["status"] == "ready" and ready["slots"] == [SLOT]
        local = read_routes(load_workspace(fresh).routes_path)  # the host's own last good copy
        assert local.version == published.version and local.slots[SLOT].version_id == published.slots[SLOT].version_id
    finally:
        gateway.stop()


def _ready(gateway: GatewayProcess) -> dict:
    """The gateway's /readyz answer (503 before it has routes)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/readyz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        return json.loads(error.read())
