"""Running gateway workers: one process each, sharing the port, supervised by a parent.

Each worker reads `shadowzoo.yaml` once at start and `routes.json` continuously; it never
opens the database. With no client keys configured the gateway is not an open proxy: it
binds to loopback only, and says so. On SIGTERM or SIGINT a worker stops accepting,
finishes the requests in flight, and flushes every accepted capture to the spool.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web

from registry import Workspace, load_workspace
from shadow.gateway.app import GatewayState, build_app
from shadow.gateway.capture import CaptureBuffer, Redactor
from shadow.gateway.routing import RouteWatcher
from shadow.spool import spool_dir

log = logging.getLogger("shadowzoo.gateway")
SHUTDOWN_GRACE_S = 10.0
RESTART_BACKOFF_S = 1.0


def client_keys(workspace: Workspace) -> tuple[str, ...]:
    """The accepted client keys, from the environment variable the config names."""
    name = workspace.config.gateway.client_keys_env
    raw = os.environ.get(name, "") if name else ""
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def bind_host(requested: str, keys: tuple[str, ...]) -> str:
    """The address to bind: loopback only while no client keys are configured."""
    if keys or _is_loopback(requested):
        return requested
    print(f"shadowzoo gateway: no client keys configured, so binding 127.0.0.1 instead of {requested} "
          "(set gateway.client_keys_env to serve other hosts)", file=sys.stderr, flush=True)
    return "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def gateway_state(workspace: Workspace) -> GatewayState:
    """A worker's state, built from the workspace config."""
    config = workspace.config
    redactor = Redactor({slot: s.redact for slot, s in config.slots.items()})
    captures = CaptureBuffer(spool_dir(workspace.state_dir), redactor, config.gateway.capture_buffer_records,
                             config.gateway.flush_interval_s)
    return GatewayState(routes=RouteWatcher(workspace.routes_path), captures=captures, upstream=None,
                        client_keys=client_keys(workspace), max_body_bytes=config.gateway.max_body_bytes)


async def serve_worker(workspace: Workspace, host: str, port: int, reuse_port: bool) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    runner = web.AppRunner(build_app(gateway_state(workspace)), access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"shadowzoo gateway worker {os.getpid()} listening on http://{host}:{port}/v1", flush=True)
    await stop.wait()
    await runner.cleanup()


def _worker_main(workspace_dir: str, host: str, port: int, reuse_port: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve_worker(load_workspace(Path(workspace_dir)), host, port, reuse_port))


def run_gateway(workspace: Workspace, host: str, port: int, workers: int) -> None:
    """Run `workers` gateway processes on one port; restart any that dies; stop all on a signal."""
    keys = client_keys(workspace)
    host = bind_host(host, keys)
    if workers == 1:
        _worker_main(str(workspace.root), host, port, reuse_port=False)
        return
    if port == 0:
        raise ValueError("several workers need a fixed port (they share it)")
    _supervise(str(workspace.root), host, port, workers)


def _supervise(workspace_dir: str, host: str, port: int, workers: int) -> None:
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.Process:
        process = context.Process(target=_worker_main, args=(workspace_dir, host, port, True), daemon=False)
        process.start()
        return process

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    processes = [start() for _ in range(workers)]
    while not stopping:
        time.sleep(0.2)
        for index, process in enumerate(processes):
            if not process.is_alive() and not stopping:
                print(f"shadowzoo gateway worker {process.pid} exited with {process.exitcode}; restarting",
                      file=sys.stderr, flush=True)
                time.sleep(RESTART_BACKOFF_S)
                processes[index] = start()
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(SHUTDOWN_GRACE_S + 5)
