"""Shared helpers for `bench/gateway.py` and `bench/isolation.py`.

Servers run as subprocesses on free loopback ports, each pinned with `taskset`, logged to
a file and stopped by the `ExitStack` that started them. Load generators use keep-alive
connections and are bounded in count and in time. Every bench prints one JSON object.

Placement on two cores: the server under test (gateway or LiteLLM) runs on the first core;
the upstream and the load generator share the second, so the process measured never
competes with the process measuring it. With fewer cores nothing is pinned, and the
placement printed says so.

`python -m bench._harness responder --port P` runs the minimal upstream: an aiohttp server
that answers every chat completion with one fixed chat.completion body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRATCH = Path(os.environ.get("SHADOWZOO_BENCH_DIR", "/tmp/shadowzoo-bench"))
LITELLM_BIN = SCRATCH / "litellm-venv" / "bin" / "litellm"
LOOPBACK = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
GATEWAY_KEY = "bench-client-key"
GATEWAY_KEYS_ENV = "SHADOWZOO_BENCH_CLIENT_KEYS"

SLOT = "bench-slot"
UPSTREAM_MODEL = "bench-model"
SKILL = "Route the support ticket to exactly one of: billing, technical, account, shipping, other."
PARAMS: dict[str, Any] = {"temperature": 0}
CLIENT_REQUEST: dict[str, Any] = {
    "model": SLOT,
    "messages": [{"role": "user", "content": "I was charged twice for my March invoice, please refund one."}],
    "max_tokens": 16,
}
FIXED_COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": UPSTREAM_MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop",
                 "logprobs": None}],
    "usage": {"prompt_tokens": 42, "completion_tokens": 1, "total_tokens": 43},
}).encode()
SIMULATOR_YAML = f"""
seed: 1
models:
  {UPSTREAM_MODEL}: {{output_tokens: 8}}
"""
START_TIMEOUT_S = 90.0
QUIET_CORES = 0.25
STOP_TIMEOUT_S = 20.0


class BenchError(RuntimeError):
    """A benchmark cannot produce its figure (a server did not start, a request failed)."""


# ---------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Which cores the server under test and the measuring side (client + upstream) use."""

    server_cores: str | None
    client_cores: str | None
    every_core: str | None
    cpus: int

    def describe(self) -> dict[str, Any]:
        return {
            "cpus_available": self.cpus,
            "server_under_test_cores": self.server_cores or "unpinned",
            "upstream_and_load_generator_cores": self.client_cores or "unpinned",
        }


def placement() -> Placement:
    """Server under test on the first core, the measuring side on the second (unpinned below 2 cores).

    Call it before `pin_self`: `every_core` is the set this process may use at that moment.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return Placement(None, None, None, len(cores))
    return Placement(str(cores[0]), str(cores[1]), ",".join(str(core) for core in cores), len(cores))


def pin_self(cores: str | None) -> None:
    """Move the load generator (this process) onto `cores`; no-op when unpinned."""
    if cores:
        os.sched_setaffinity(0, {int(core) for core in cores.split(",")})


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under the bench scratch area (outside the repository)."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


@dataclass
class Server:
    """One server subprocess: pinned with taskset, run under `wrapper` (e.g. nice), logging to a file."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    cores: str | None = None
    cwd: Path = REPO
    env: dict[str, str] = field(default_factory=dict)
    health_path: str | None = "/healthz"
    ready_marker: str | None = None
    ready_count: int = 1
    wrapper: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/v1"

    def start(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        """Start, then wait (bounded) until healthy; raise with the log's tail if it never is."""
        prefix = [*self.wrapper, *(["taskset", "-c", self.cores] if self.cores else [])]
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(prefix + self.argv, cwd=self.cwd, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            if self._ready():
                return self
            time.sleep(0.1)
        raise BenchError(f"{self.name} was not healthy within {timeout_s:g}s: {self.log_tail()}")

    def _ready(self) -> bool:
        """Every marker line printed (one per gateway worker), and the health URL answering 200."""
        if self.ready_marker and self.log_path.read_text(errors="replace").count(self.ready_marker) < self.ready_count:
            return False
        if self.health_path is None:
            return True
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}{self.health_path}", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM, a bounded wait, then SIGKILL to the process group this server started."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and all its live descendants (e.g. gateway workers)."""
        assert self.process is not None
        return sum(_cpu_seconds(pid) for pid in _process_tree(self.process.pid))

    def worker_cpu_seconds(self) -> dict[int, float]:
        """CPU time by pid of each direct child (the gateway's workers), or of the process itself without any."""
        assert self.process is not None
        pids = _children(self.process.pid) or [self.process.pid]
        return {pid: _cpu_seconds(pid) for pid in pids}

    def log_tail(self, chars: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(child) for child in (task / "children").read_text().split())
    return children


def _process_tree(pid: int) -> list[int]:
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in _children(parent)]
        tree.extend(frontier)
    return tree


def _cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/PID/stat (0 once the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def started(stack: contextlib.ExitStack, server: Server) -> Server:
    """Start `server` and register its stop on `stack` before waiting, so a failed start is cleaned up too."""
    stack.callback(server.stop)
    return server.start()


def python_server(name: str, module_args: list[str], port: int, log_dir: Path, cores: str | None,
                  **options: Any) -> Server:
    """A server run as `python -m ...` with this interpreter."""
    return Server(name, [sys.executable, "-m", *module_args], port, log_dir / f"{name}.log", cores, **options)


def responder(log_dir: Path, cores: str | None, name: str = "responder") -> Server:
    """The minimal upstream: one fixed chat.completion for every request."""
    port = free_port()
    return python_server(name, ["bench._harness", "responder", "--port", str(port)], port, log_dir, cores)


def simulator(log_dir: Path, cores: str | None, config_yaml: str = SIMULATOR_YAML, fast: bool = True,
              name: str = "simulator") -> Server:
    """The bundled simulator (`--fast`: no latency, no injected errors) serving `config_yaml`."""
    config = log_dir / f"{name}.yaml"
    config.write_text(config_yaml)
    port = free_port()
    args = ["shadow.simulator", "--config", str(config), "--port", str(port)] + (["--fast"] if fast else [])
    return python_server(name, args, port, log_dir, cores)


def gateway(workspace: Path, log_dir: Path, cores: str | None, workers: int = 1) -> Server:
    """`shadowzoo gateway` run from the workspace, ready once every worker listens."""
    port = free_port()
    argv = [str(BIN / "shadowzoo"), "gateway", "--port", str(port), "--workers", str(workers)]
    return Server(f"gateway-{workers}w", argv, port, log_dir / f"gateway-{workers}w-{port}.log", cores,
                  cwd=workspace, env={GATEWAY_KEYS_ENV: GATEWAY_KEY, "SIM_API_KEY": "bench"},
                  ready_marker="listening on", ready_count=workers)


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no price-map download at start
    "LITELLM_TELEMETRY": "False",
    "NO_PROXY": "127.0.0.1,localhost",
    # A safety net: any call that is not to loopback goes to a closed local port and fails.
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
}


def find_litellm(explicit: str | None) -> tuple[Path | None, str | None]:
    """The `litellm` executable to use (the flag's, else the bench venv's), or None and why not."""
    candidate = Path(explicit) if explicit else LITELLM_BIN
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate, None
    how = "the --litellm path" if explicit else f"no {LITELLM_BIN}"
    return None, (f"LiteLLM not installed ({how}); install it with: python3 -m venv {LITELLM_BIN.parent.parent} "
                  f"&& {LITELLM_BIN.parent / 'pip'} install 'litellm[proxy]'")


def litellm_version(executable: Path) -> str | None:
    """The installed litellm version, read from the metadata of the venv the executable belongs to."""
    for metadata in executable.parent.parent.glob("lib/python*/site-packages/litellm-*.dist-info/METADATA"):
        for line in metadata.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def litellm_proxy(executable: Path, upstream_base_url: str, log_dir: Path, cores: str | None,
                  master_key: str) -> Server:
    """LiteLLM's proxy, one uvicorn worker, mapping `SLOT` to `openai/UPSTREAM_MODEL` on the upstream.

    It refuses to start without a master key, so it gets one, as the gateway gets a client key.
    """
    config = log_dir / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": SLOT, "litellm_params": {
            "model": f"openai/{UPSTREAM_MODEL}", "api_base": upstream_base_url, "api_key": "bench-dummy-key"}}],
        "litellm_settings": {"telemetry": False},
    }))
    port = free_port()
    argv = [str(executable), "--config", str(config), "--host", LOOPBACK, "--port", str(port), "--num_workers", "1"]
    return Server("litellm", argv, port, log_dir / "litellm.log", cores, cwd=log_dir,
                  env={**LITELLM_ENV, "LITELLM_MASTER_KEY": master_key}, health_path="/health/liveliness")


# ---------------------------------------------------------------- workspace


def make_workspace(root: Path, upstream_base_url: str, extra_providers: dict[str, str] | None = None) -> Path:
    """A workspace whose slot `SLOT` is served by a champion on `upstream_base_url`.

    Built as the tests build theirs: `init_workspace`, the provider pointed at the
    upstream, one chat variant registered and promoted (which writes routes.json).
    `extra_providers` adds more providers by name (challenger upstreams).
    """
    from ops.workspace_init import init_workspace
    from registry import NewVariant, Registry, load_workspace

    workspace = init_workspace(root / "ws")
    path = workspace / "shadowzoo.yaml"
    config = yaml.safe_load(path.read_text())
    config["providers"]["sim"]["base_url"] = upstream_base_url
    for name, base_url in (extra_providers or {}).items():
        config["providers"][name] = {"base_url": base_url, "timeout_s": 30}
    config["slots"][SLOT] = {"defaults": {"provider": "sim", "model": UPSTREAM_MODEL}}
    config["gateway"] = {"client_keys_env": GATEWAY_KEYS_ENV}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Registry.open(load_workspace(workspace)) as registry:
        variant = registry.register(NewVariant(
            slot=SLOT, label="champ", kind="chat", skill_text=SKILL,
            config={"kind": "chat", "provider": "sim", "model": UPSTREAM_MODEL, "params": PARAMS},
        )).variant
        registry.promote(SLOT, variant.version_id, "bench", None, None)
    return workspace


def upstream_request() -> dict[str, Any]:
    """What the gateway sends upstream for `CLIENT_REQUEST`: the champion applied by the shared function."""
    from shadow.apply import apply_variant

    return apply_variant(UPSTREAM_MODEL, PARAMS, SKILL, CLIENT_REQUEST)


# ---------------------------------------------------------------- load


@dataclass(frozen=True)
class Target:
    """One endpoint and the exact bytes to POST to it."""

    name: str
    port: int
    body: bytes
    key: str = GATEWAY_KEY
    path: str = CHAT_PATH

    @staticmethod
    def of(name: str, port: int, payload: dict[str, Any], key: str = GATEWAY_KEY) -> Target:
        return Target(name, port, json.dumps(payload).encode(), key)

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"}


def sequential_latencies(targets: list[Target], rounds: int, warmup: int, max_seconds: float) -> dict[str, list[float]]:
    """Latency (ms) of requests sent one at a time over one keep-alive http.client connection per target.

    Each round sends one request to every target, alternating the order, so that drift
    (frequency scaling, a noisy neighbour) hits all targets alike. Stops after `rounds`
    measured rounds or `max_seconds`, whichever comes first; any non-200 is an error.
    """
    connections = {t.name: http.client.HTTPConnection(LOOPBACK, t.port, timeout=30) for t in targets}
    latencies: dict[str, list[float]] = {t.name: [] for t in targets}
    deadline = time.monotonic() + max_seconds
    try:
        for number in range(warmup + rounds):
            if time.monotonic() > deadline:
                break
            for target in targets if number % 2 == 0 else reversed(targets):
                elapsed = _timed_post(connections[target.name], target)
                if number >= warmup:
                    latencies[target.name].append(elapsed)
    finally:
        for connection in connections.values():
            connection.close()
    return latencies


def _timed_post(connection: http.client.HTTPConnection, target: Target) -> float:
    started_at = time.perf_counter()
    connection.request("POST", target.path, body=target.body, headers=target.headers)
    answer = connection.getresponse()
    body = answer.read()
    elapsed = (time.perf_counter() - started_at) * 1000
    if answer.status != 200:
        raise BenchError(f"{target.name} answered {answer.status}: {body[:300]!r}")
    return elapsed


@dataclass
class LoadResult:
    """What a load run did: completed requests, errors, wall time, latencies and this process's CPU."""

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    client_cpu_seconds: float
    late_ms: list[float] = field(default_factory=list)
    control_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def closed_loop(target: Target, concurrency: int, seconds: float, max_requests: int) -> LoadResult:
    """`concurrency` workers, each sending its next request when the last one is answered.

    Runs for `seconds` or until `max_requests` have been sent, whichever comes first.
    """
    latencies: list[float] = []
    errors = 0
    sent = 0
    url = f"http://{LOOPBACK}:{target.port}{target.path}"
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started_at = time.perf_counter()
        deadline = started_at + seconds

        async def worker() -> None:
            nonlocal errors, sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                took = await _timed_async_post(session, url, target)
                if took is None:
                    errors += 1
                else:
                    latencies.append(took)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started_at
    return LoadResult(len(latencies), errors, elapsed, latencies, time.process_time() - cpu_before)


async def _timed_async_post(session: aiohttp.ClientSession, url: str, target: Target) -> float | None:
    """One request's latency in ms, or None when it failed (connection error or a non-200)."""
    began = time.perf_counter()
    try:
        async with session.post(url, data=target.body, headers=target.headers) as answer:
            await answer.read()
            if answer.status != 200:
                return None
    except aiohttp.ClientError:
        return None
    return (time.perf_counter() - began) * 1000


async def open_loop(target: Target, rate: float, seconds: float, control: Target | None = None,
                    max_in_flight: int = 256) -> LoadResult:
    """Requests started on a fixed schedule (`rate` per second for `seconds`), whatever the answers do.

    An open loop keeps the offered load identical across scenarios, so latency changes are
    the server's. `late_ms` records how late each request left against its schedule: a
    large value means the load generator itself fell behind. With `control`, a second
    request to it leaves at each tick too (its latencies in `control_ms`): what the same
    client sees from a server that is not the one measured, under the same conditions.
    """
    latencies: list[float] = []
    controls: list[float] = []
    late: list[float] = []
    errors = 0
    total = int(rate * seconds)
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight)) as session:

        async def one(to: Target, scheduled: float, into: list[float]) -> None:
            nonlocal errors
            late.append((time.perf_counter() - scheduled) * 1000)
            took = await _timed_async_post(session, f"http://{LOOPBACK}:{to.port}{to.path}", to)
            if took is None:
                errors += 1
            else:
                into.append(took)

        started_at = time.perf_counter()
        tasks = []
        for number in range(total):
            scheduled = started_at + number / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(target, scheduled, latencies)))
            if control is not None:
                tasks.append(asyncio.create_task(one(control, scheduled, controls)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
        elapsed = time.perf_counter() - started_at
    return LoadResult(len(latencies), errors, elapsed, latencies, time.process_time() - cpu_before, late, controls)


# ---------------------------------------------------------------- figures


def summary(latencies_ms: list[float]) -> dict[str, float | int | None]:
    """n, p50, p90, p99, mean and max of a latency sample, in ms."""
    if not latencies_ms:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    values = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"n": len(values), "p50": round3(p50), "p90": round3(p90), "p99": round3(p99),
            "mean": round3(values.mean()), "max": round3(values.max())}


def round3(value: float) -> float:
    return round(float(value), 3)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator to 3 decimals; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round3(numerator / denominator)


def target_check(value: float | None, limit: float, at_most: bool) -> dict[str, Any]:
    """A figure beside its target, and whether it is met."""
    met = None if value is None else (value <= limit if at_most else value >= limit)
    return {"value": value, "target": f"{'<=' if at_most else '>='} {limit:g}", "met": met}


def emit(result: dict[str, Any]) -> None:
    """Print the benchmark's one JSON object."""
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


@dataclass
class CpuUse:
    """CPU spent during a window: per server and per worker (seconds), per core (busy fraction)."""

    seconds: float = 0.0
    servers: dict[str, float] = field(default_factory=dict)
    workers: dict[str, list[float]] = field(default_factory=dict)
    cores_busy: dict[str, float] = field(default_factory=dict)

    def describe(self, client_cpu_seconds: float) -> dict[str, Any]:
        """Fractions of one core: each server, the load generator, each core's busy time, and the rest.

        `unaccounted` is machine busy time that none of these processes used: other
        processes on the machine (or kernel work on their behalf) competing with the run.
        """
        servers = {name: round3(used / self.seconds) for name, used in self.servers.items()}
        client = round3(client_cpu_seconds / self.seconds)
        unaccounted = sum(self.cores_busy.values()) - sum(servers.values()) - client
        described: dict[str, Any] = {"server_core_fraction": servers, "load_generator_core_fraction": client,
                                     "core_busy_fraction": self.cores_busy,
                                     "unaccounted_core_fraction": round3(unaccounted)}
        for name, parts in self.workers.items():
            busy = [used for used in parts if used > 0.01 * sum(parts)]
            if len(busy) > 1:
                described.setdefault("worker_cpu_share", {})[name] = [round3(used / sum(busy)) for used in busy]
        return described


@contextlib.contextmanager
def cpu_window(servers: list[Server]) -> Iterator[CpuUse]:
    """Measure, over the block, each server's CPU time and how busy each core was (filled in on exit).

    Core busy time includes every process on the machine, so a core that is busy while
    the servers on it are not points at a neighbour's load, not at the server measured.
    """
    before = {server.name: server.cpu_seconds() for server in servers}
    workers_before = {server.name: server.worker_cpu_seconds() for server in servers}
    cores_before, began = _core_busy_ticks(), time.perf_counter()
    use = CpuUse()
    yield use
    use.seconds = time.perf_counter() - began
    use.servers = {server.name: server.cpu_seconds() - before[server.name] for server in servers}
    use.workers = {server.name: sorted((used - workers_before[server.name].get(pid, 0.0)
                                        for pid, used in server.worker_cpu_seconds().items()), reverse=True)
                   for server in servers}
    ticks = os.sysconf("SC_CLK_TCK")
    use.cores_busy = {core: round3((busy - cores_before.get(core, 0)) / ticks / use.seconds)
                      for core, busy in _core_busy_ticks().items()}


def background_load(servers: list[Server], seconds: float = 1.0) -> float:
    """Cores' worth of CPU that processes other than this one and `servers` used over `seconds`."""
    with cpu_window(servers) as use:
        before = time.process_time()
        time.sleep(seconds)
        mine = time.process_time() - before
    return use.describe(mine)["unaccounted_core_fraction"]


def wait_for_quiet(servers: list[Server], max_wait_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait, at most `max_wait_s`, until other processes use under `threshold` of a core; the last reading.

    On a shared machine other work comes and goes; starting a measurement in a quiet
    moment makes its figures about the system measured. The reading goes in the output.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        load = background_load(servers)
        if load <= threshold or time.monotonic() >= deadline:
            return round3(load)


def _core_busy_ticks() -> dict[str, int]:
    """Non-idle ticks per core since boot, from /proc/stat (steal included: time the VM did not get)."""
    busy: dict[str, int] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            numbers = [int(v) for v in values[:8]]
            busy[name[3:]] = sum(numbers) - numbers[3] - numbers[4]
    return busy


# ---------------------------------------------------------------- the minimal upstream


def _serve_responder(port: int) -> None:
    """Answer every POST /v1/chat/completions with `FIXED_COMPLETION`; /healthz for readiness."""

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=FIXED_COMPLETION, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(CHAT_PATH, chat)
    app.router.add_get("/healthz", health)
    web.run_app(app, host=LOOPBACK, port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> None:
    """`python -m bench._harness responder --port P`: the minimal upstream, until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench._harness")
    parser.add_argument("command", choices=["responder"])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _serve_responder(args.port)


if __name__ == "__main__":
    main()
