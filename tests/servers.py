"""Starting real servers for tests: the simulator in a thread, the gateway as its own process."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import yaml

from shadow.simulator import load_simulator_config, start_in_thread
from tests.conftest import SHADOWZOO

DEMO_SIM = Path(__file__).resolve().parent.parent / "examples" / "demo" / "simulator.yaml"


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


def start_simulator(config_path: Path = DEMO_SIM, fast: bool = False):
    """The bundled simulator on an ephemeral loopback port (stop it with `.stop()`)."""
    return start_in_thread(load_simulator_config(config_path), port=0, fast=fast)


def edit_config(workspace_dir: Path, change: Callable[[dict], None]) -> None:
    """Rewrite the workspace's shadowzoo.yaml through `change(config_dict)`."""
    path = workspace_dir / "shadowzoo.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class GatewayProcess:
    """`shadowzoo gateway` run by its console script, as an operator runs it."""

    def __init__(self, workspace_dir: Path, env: dict[str, str] | None = None, workers: int = 1,
                 host: str = "127.0.0.1", port: int | None = None) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = subprocess.Popen(
            [str(SHADOWZOO), "gateway", "--port", str(self.port), "--workers", str(workers), "--host", host],
            cwd=workspace_dir, env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        wait_until(lambda: self.process.poll() is not None or _healthy(f"http://127.0.0.1:{self.port}/healthz"))
        if self.process.poll() is not None:
            raise AssertionError(f"gateway exited: {self.process.stdout.read()}")

    def stop(self, timeout_s: float = 20) -> str:
        """SIGTERM, wait, and return everything it printed."""
        if self.process.poll() is None:
            self.process.terminate()
        out, _ = self.process.communicate(timeout=timeout_s)
        return out
