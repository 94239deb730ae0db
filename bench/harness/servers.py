"""Server subprocesses for a benchmark: pinned with taskset, on free loopback ports, logging to a file,
started healthy or not at all, and stopped by the `ExitStack` that started them."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.harness import BenchError
from bench.harness.figures import emit
from bench.harness.procfs import children, cpu_seconds, process_tree
from bench.harness.scenario import GATEWAY_KEY, GATEWAY_KEYS_ENV, LOOPBACK, SIMULATOR_YAML

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRATCH = Path(os.environ.get("SHADOWZOO_BENCH_DIR", "/tmp/shadowzoo-bench"))
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def scratch_dir(prefix: str) -> Path:
    """A fresh directory under the bench scratch area (outside the repository)."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def run_in_scratch(parser: argparse.ArgumentParser, prefix: str,
                   run: Callable[[Path, argparse.Namespace], dict[str, Any]]) -> None:
    """Parse a benchmark's options (adding `--keep`), run it in a fresh scratch directory, print
    its one JSON object, and delete the directory (also on failure) unless `--keep` is given."""
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    args = parser.parse_args()
    scratch = scratch_dir(prefix)
    try:
        emit(run(scratch, args))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


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
        return sum(cpu_seconds(pid) for pid in process_tree(self.process.pid))

    def worker_cpu_seconds(self) -> dict[int, float]:
        """CPU time by pid of each direct child (the gateway's workers), or of the process itself without any."""
        assert self.process is not None
        pids = children(self.process.pid) or [self.process.pid]
        return {pid: cpu_seconds(pid) for pid in pids}

    def log_tail(self, chars: int = 1500) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


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
    return python_server(name, ["bench.harness.responder", "--port", str(port)], port, log_dir, cores)


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
