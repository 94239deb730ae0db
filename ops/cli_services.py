"""`shadowzoo gateway` and `shadowzoo sim`: the long-running servers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ops.session import session
from registry import ShadowzooError


def gateway(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to bind (default: gateway.port).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes sharing the port.")] = 1,
) -> None:
    """Serve each slot's champion on an OpenAI-compatible API and capture the traffic.

    Point any OpenAI SDK at http://HOST:PORT/v1 and name a slot as the model. Workers read
    only routes.json (never the database), so they keep serving while the daemon restarts.

    Example: shadowzoo gateway --workers 2 --port 8800
    """
    from shadow.gateway import run_gateway

    workspace = session(ctx).workspace()
    config = workspace.config.gateway
    try:
        run_gateway(workspace, host or config.host, config.port if port is None else port, workers)
    except (OSError, ValueError) as exc:
        raise ShadowzooError(f"gateway: {exc}") from None


def sim(
    config: Annotated[Path, typer.Option("--config", help="Simulator YAML (models, task, errors).")] = Path(
        "simulator.yaml"
    ),
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to bind.")] = 8700,
    fast: Annotated[bool, typer.Option("--fast", help="No latency, no injected errors (for benchmarks).")] = False,
) -> None:
    """Run the bundled OpenAI-compatible SIMULATOR (not a real LLM) for demos, tests and load tests.

    Its models have configurable latency, errors, rate limits and prices, and answer the
    demo task deterministically.

    Example: shadowzoo sim --config simulator.yaml --port 8700
    """
    from shadow.simulator import load_simulator_config, serve
    from shadow.simulator.config import SimulatorConfigError

    try:
        serve(load_simulator_config(config), host=host, port=port, fast=fast)
    except SimulatorConfigError as exc:
        raise ShadowzooError(str(exc)) from None
    except OSError as exc:
        raise ShadowzooError(f"simulator: cannot listen on {host}:{port}: {exc}") from None
