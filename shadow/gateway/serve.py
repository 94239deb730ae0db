"""Running a gateway worker: one process each, several sharing a port (see `ops.supervise`).

Each worker reads `shadowzoo.yaml` once at start and `routes.json` continuously (champions,
and every slot's redaction rules once the file is rewritten); it never opens the database.
With no client keys configured the gateway is not an open proxy: it binds to loopback only,
and says so. On SIGTERM or SIGINT a worker stops accepting,
finishes the requests in flight, and flushes every accepted capture to the spool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from functools import partial
from pathlib import Path

from aiohttp import web

from registry import RouteTable, Workspace, load_workspace
from shadow.gateway.address import client_keys
from shadow.gateway.app import GatewayState, build_app
from shadow.gateway.capture import SpoolBuffer
from shadow.gateway.connection import GatewayRunner
from shadow.gateway.loglines import process_log
from shadow.redaction import Redactor
from shadow.gateway.routing import RouteWatcher
from shadow.spool import spool_dir

log = logging.getLogger("shadowzoo.gateway")
SHUTDOWN_GRACE_S = 10.0


def gateway_state(workspace: Workspace) -> GatewayState:
    """A worker's state, built from the workspace config."""
    config = workspace.config
    captures = SpoolBuffer(spool_dir(workspace.state_dir), Redactor.for_workspace(workspace),
                           config.gateway.capture_buffer_records, config.gateway.flush_interval_s,
                           max_bytes=config.gateway.capture_buffer_bytes,
                           flush_max_records=config.gateway.flush_max_records)
    return GatewayState(routes=RouteWatcher(workspace.routes_path, partial(_follow_redaction, captures)),
                        captures=captures, upstream=None,
                        client_keys=client_keys(workspace), max_body_bytes=config.gateway.max_body_bytes,
                        body_timeout_s=config.gateway.body_timeout_s)


def _follow_redaction(captures: SpoolBuffer, table: RouteTable) -> None:
    """Redact captures with the rules `routes.json` carries: a config reload reaches the gateways."""
    if table.redact is not None:
        captures.redactor = Redactor(table.redact)


async def serve_worker(workspace: Workspace, host: str, port: int, reuse_port: bool) -> None:
    """Serve until SIGTERM/SIGINT, then shut down gracefully."""
    runner = GatewayRunner(build_app(gateway_state(workspace)), header_timeout_s=workspace.config.gateway.header_timeout_s,
                           access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
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


def worker_main(workspace_dir: str, host: str, port: int, reuse_port: bool) -> None:
    """Entry point of a gateway worker process: its log holds one line per event, rate-limited."""
    with process_log():
        asyncio.run(serve_worker(load_workspace(Path(workspace_dir)), host, port, reuse_port))
