"""Starting real servers for tests: the simulator in a thread; the gateway and `serve` as their own processes."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import yaml

from ops.roles import ADMIN, GATEWAY, parse_roles
from ops.workspace_init import init_workspace
from registry import Registry, load_workspace, utcnow
from shadow.ingest import ingest_spool
from shadow.simulator import load_simulator_config, start_in_thread
from shadow.simulator.simulator_config import ErrorConfig, LatencyConfig
from shadow.spool import spool_dir, write_segment
from shadow.spool_records import TrafficRecord
from tests.conftest import SHADOWZOO
from zoo import load_zoo, register_specs

ADMIN_TOKEN = "test-admin-token"
DEMO_SIM = Path(__file__).resolve().parent.parent / "examples" / "demo" / "simulator.yaml"
TICKET_INPUTS = [json.loads(line)["input"] for line in (DEMO_SIM.parent / "tickets.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout_s: float = 15.0, interval_s: float = 0.05) -> Any:
    """Poll until `predicate` returns something truthy; fail after a bounded wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"condition not met within {timeout_s}s")


def wait_while_progressing(predicate: Callable[[], Any], progress: Callable[[], Any], stall_s: float = 60.0,
                           limit_s: float = 600.0, interval_s: float = 0.5) -> Any:
    """Poll until `predicate` returns something truthy, for as long as `progress` keeps changing: fail
    once it has stood still for `stall_s` (the work stopped), or after `limit_s` whatever it does. A
    loaded machine slows work that a fixed timeout would call stuck; this waits on it, boundedly."""
    deadline = time.monotonic() + limit_s
    last, moved = progress(), time.monotonic()
    while time.monotonic() < min(deadline, moved + stall_s):
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
        if (now := progress()) != last:
            last, moved = now, time.monotonic()
    raise AssertionError(f"condition not met: no progress for {stall_s}s (or {limit_s}s in all)")


def post_json(url: str, body: Any) -> int:
    """POST `body` as JSON; returns the status (an HTTP error status raises, as urllib does)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def start_simulator(config_path: Path = DEMO_SIM, fast: bool = False):
    """The bundled simulator on an ephemeral loopback port (stop it with `.stop()`)."""
    return start_in_thread(load_simulator_config(config_path), port=0, fast=fast)


def start_steady_simulator(latency_ms: float):
    """The demo's models at a fixed latency per call, without injected errors or rate limits (work
    spread over several runners, benchmarks of throughput against latency)."""
    config = load_simulator_config(DEMO_SIM)
    steady = LatencyConfig(base_ms=latency_ms, jitter_ms=0, per_output_token_ms=0)
    models = {name: model.model_copy(update={"latency": steady, "errors": ErrorConfig(),
                                             "limits": model.limits.model_copy(update={"rpm": None, "tpm": None})})
              for name, model in config.models.items()}
    return start_in_thread(config.model_copy(update={"models": models}), port=0)


def edit_config(workspace_dir: Path, change: Callable[[dict], None]) -> None:
    """Rewrite the workspace's shadowzoo.yaml through `change(config_dict)`."""
    path = workspace_dir / "shadowzoo.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def champion_workspace(directory: Path, simulator_url: str, gateway: dict | None = None,
                       daemon: dict | None = None, settings: dict | None = None) -> Path:
    """The demo workspace on the simulator and free ports, its specs registered and `baseline`
    the champion of support-triage; `gateway` and `daemon` update those config sections,
    `settings` the top level (e.g. `backend`)."""
    workspace_dir = init_workspace(directory)

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator_url
        config["gateway"].update(port=free_port(), **(gateway or {}))
        config["daemon"].update(admin_port=free_port(), **(daemon or {}))
        config.update(settings or {})

    edit_config(workspace_dir, configure)
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        zoo = load_zoo(workspace.specs_dir)
        ids = {o.spec_file.spec.name: o.registration.variant.version_id
               for o in register_specs(zoo.specs, zoo, workspace, registry)}
        registry.promote("support-triage", ids["baseline"], "tester", "first", None)
    return workspace_dir


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class GatewayProcess:
    """`shadowzoo gateway` run by its console script, as an operator runs it."""

    def __init__(self, workspace_dir: Path, env: dict[str, str] | None = None, workers: int = 1,
                 host: str = "127.0.0.1", file_size_limit: int | None = None, start_timeout_s: float = 60.0,
                 port: int | None = None) -> None:
        """`file_size_limit` (bytes) makes writing any larger file fail, as a nearly full disk does;
        `start_timeout_s` is generous: a loaded machine can take long to import and spawn a worker."""
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        # its output goes to a file: a pipe nobody reads fills up and blocks whoever logs next
        self.log_path = workspace_dir / f"gateway-{self.port}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SHADOWZOO), "gateway", "--port", str(self.port), "--workers", str(workers), "--host", host],
                cwd=workspace_dir, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=None if file_size_limit is None else lambda: resource.setrlimit(
                    resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit)),
            )
        try:
            wait_until(lambda: self.process.poll() is not None or healthy(f"http://127.0.0.1:{self.port}/healthz"),
                       timeout_s=start_timeout_s)
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited: {self.output()}")

    def output(self) -> str:
        """Everything it has printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20) -> str:
        """SIGTERM, wait, and return everything it printed."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=timeout_s)
        return self.output()


class Served:
    """`shadowzoo serve` on free ports, with its gateway and admin URLs."""

    def __init__(self, workspace_dir: Path, workers: int = 1, env: dict[str, str] | None = None,
                 args: list[str] | None = None, roles: str | None = None) -> None:
        """`args`: more options of `serve`; `roles`: its `--role` (all when None). It is started once
        what its roles serve answers (the gateway's and the admin API's /healthz), or, with neither,
        once its daemon says it runs."""
        self.workspace_dir = workspace_dir
        config = load_workspace(workspace_dir).config
        self.gateway = f"http://127.0.0.1:{config.gateway.port}"
        self.admin = f"http://127.0.0.1:{config.daemon.admin_port}"
        self.roles = parse_roles([roles] if roles else None)
        # its output goes to a file: a pipe nobody reads fills up and blocks whoever logs next
        self.log_path = workspace_dir / "serve.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SHADOWZOO), "serve", "--workers", str(workers), *(["--role", roles] if roles else []), *(args or [])],
                cwd=workspace_dir, env={**os.environ, "SHADOWZOO_ADMIN_TOKEN": ADMIN_TOKEN, "SIM_API_KEY": "sim", **(env or {})},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self.process.poll() is not None or self.ready(), timeout_s=60)
        assert self.process.poll() is None, self.output()

    def ready(self) -> bool:
        """What its roles serve answers; without a port, its daemon has said it runs."""
        if not self.roles & {GATEWAY, ADMIN}:
            return "no admin API" in self.output()
        return ((GATEWAY not in self.roles or healthy(f"{self.gateway}/healthz"))
                and (ADMIN not in self.roles or healthy(f"{self.admin}/healthz")))

    def output(self) -> str:
        """What it has printed so far."""
        return self.log_path.read_text(errors="replace")

    def call(self, path: str, body: dict | None = None, token: str | None = ADMIN_TOKEN) -> tuple[int, dict]:
        """One admin API call: GET, or POST with a JSON `body`; returns the status and the JSON answer."""
        request = urllib.request.Request(f"{self.admin}{path}", data=json.dumps(body).encode() if body is not None else None,
                                         method="POST" if body is not None else "GET",
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def daemon_pid(self) -> int:
        return json.loads((self.workspace_dir / ".shadowzoo" / "daemon.json").read_text())["pid"]

    def stop(self) -> str:
        """SIGTERM, wait, and return what it printed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=90)
        return self.output()

    def kill(self) -> None:
        """`kill -9` of `serve` and every process it started, as when its host dies."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def ingest_answered(workspace_dir: Path, prefix: str, count: int, slot: str = "support-triage") -> set[tuple[str, str]]:
    """`count` requests (ids `<prefix>-NNN`) answered by the slot's champion, ingested; the (request,
    challenger) pairs they make."""
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        champion = registry.champion(slot).version_id
        challengers = [v.version_id for v in registry.variants(slot=slot, status="active") if v.version_id != champion]
        now = utcnow()
        records = [TrafficRecord(
            request_id=f"{prefix}-{index:03d}", slot=slot, received_at=now + timedelta(milliseconds=index),
            champion_version=champion, status=200,
            request={"messages": [{"role": "user", "content": TICKET_INPUTS[index % len(TICKET_INPUTS)]}]},
            output="billing",
            usage={"prompt_tokens": 40, "completion_tokens": 2}, latency_ms=300.0)
            for index in range(count)]
        ingest_spool(registry.database, write_segment(spool_dir(workspace.state_dir),
                                                      [r.model_dump_json().encode() for r in records]).parent)
    return {(record.request_id, version) for record in records for version in challengers}
