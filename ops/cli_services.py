"""`shadowzoo serve | daemon | gateway | sim`: the long-running processes.

The servers' modules (aiohttp, the daemon, the providers) are imported by the command
that starts them, so `shadowzoo --help` does not load them.
"""

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.affinity import parse_cpus
from ops.output import warn
from ops.roles import ADMIN, DAEMON_ROLES, GATEWAY, ROLES, check_backend, parse_roles
from ops.session import session
from ops.state import SERVE, DaemonInfo, DaemonLock, gateway_role
from registry import ShadowzooError

if TYPE_CHECKING:
    from ops.supervise import Child


def gateway(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("--host", help="Address to bind (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to bind (default: gateway.port).")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes sharing the port.")] = 1,
) -> None:
    """Serve each slot's champion on an OpenAI-compatible API and capture the traffic.

    Point any OpenAI SDK at http://HOST:PORT/v1 and name a slot as the model. Workers read
    only routes.json (never the database), so they keep serving while the daemon restarts.
    On backend: distributed one more process keeps routes.json equal to the routes the
    control plane publishes, and the workers serve that local copy while PostgreSQL is down.

    Example: shadowzoo gateway --workers 2 --port 8800
    """
    workspace = session(ctx).workspace()
    host, port = _gateway_address(workspace, host, port, workers)
    _check_api_keys(workspace)
    _supervise_as(workspace, _gateways(workspace, host, port, workers), gateway_role(os.getpid()), DaemonInfo(
        pid=os.getpid(), admin_url="", metrics_url=f"http://{host}:{port}/metrics", started_at=datetime.now(UTC).isoformat()))


AdminPortOption = Annotated[int | None, typer.Option(
    "--admin-port", help="The daemon's admin API and /metrics port (default: daemon.admin_port).")]


def daemon(
    ctx: typer.Context,
    admin_port: AdminPortOption = None,
    port: Annotated[int | None, typer.Option("--port", hidden=True, help="Deprecated: --admin-port.")] = None,
) -> None:
    """Run the daemon alone: ingest, shadow runner, scoring, watch, retention, admin API, /metrics.

    It is the only process that opens the database. Its admin API needs the token named by
    daemon.admin_token_env (default SHADOWZOO_ADMIN_TOKEN). Usually started by `serve`.

    Example: shadowzoo daemon --admin-port 8900   (with SHADOWZOO_ADMIN_TOKEN set)
    """
    from ops.daemon import run_daemon

    if port is not None:
        if admin_port is not None:
            raise typer.BadParameter("give --admin-port only (--port is its old name)", param_hint="--port")
        warn("daemon --port is deprecated: it is called --admin-port, as in `serve`")
        admin_port = port
    workspace = session(ctx).workspace()
    shown = workspace.config.daemon.admin_port if admin_port is None else admin_port
    _serving(lambda: run_daemon(workspace.root, admin_port), f"daemon admin API on port {shown}")


def serve(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Gateway worker processes sharing the port.")] = 1,
    host: Annotated[str | None, typer.Option("--host", help="Gateway address (default: gateway.host).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Gateway port (default: gateway.port).")] = None,
    admin_port: AdminPortOption = None,
    gateway_cpus: Annotated[str | None, typer.Option(
        "--gateway-cpus", help="CPUs the gateway workers run on, e.g. 0 or 0-1,3 (default: all).")] = None,
    daemon_cpus: Annotated[str | None, typer.Option(
        "--daemon-cpus", help="CPUs the daemon (shadow calls, scoring) runs on, e.g. 1 (default: all).")] = None,
    role: Annotated[list[str] | None, typer.Option(
        "--role", metavar="ROLE", help=f"Run only these roles ({', '.join(ROLES)}; repeat or comma-separate; default: all).")] = None,
) -> None:
    """Run shadowzoo as a service: gateway workers and the daemon, each restarted if it dies.

    The gateways serve champions from routes.json and never wait for the daemon, so a
    daemon restart never interrupts champion traffic. SIGTERM stops the gateways first
    (they flush their captures), then the daemon (it ingests them); `shadowzoo stop` sends
    it. SIGHUP, or editing shadowzoo.yaml, reloads the config (see `status`).
    --gateway-cpus and --daemon-cpus keep the shadow side off the champion's cores.
    --role runs only some of shadowzoo's parts here, e.g. `--role ingest,scorer` on one host
    of a distributed deployment (see README, "Roles"); the embedded backend runs everything,
    `gateway` alone, or the daemon's roles together.

    Example: shadowzoo serve --workers 2 --gateway-cpus 0 --daemon-cpus 1   (with SHADOWZOO_ADMIN_TOKEN set)
    """
    workspace = session(ctx).workspace()
    roles = parse_roles(role)
    check_backend(roles, workspace.config.backend)
    gateway_set = parse_cpus(gateway_cpus, "--gateway-cpus") if gateway_cpus else None
    daemon_set = parse_cpus(daemon_cpus, "--daemon-cpus") if daemon_cpus else None
    daemon_roles = roles & DAEMON_ROLES
    daemon_config = workspace.config.daemon
    if ADMIN in roles and not os.environ.get(daemon_config.admin_token_env):
        raise ShadowzooError(f"set {daemon_config.admin_token_env}: the daemon's admin API needs a token")
    if daemon_roles:
        from ops.state import running_daemon

        running = running_daemon(workspace)
        if running is not None:
            raise ShadowzooError(f"a daemon already runs for {workspace.root} (pid {running.pid}, {running.admin_url})")
    if ADMIN in roles:
        _check_free(daemon_config.admin_host, daemon_config.admin_port if admin_port is None else admin_port, "daemon")
    children, metrics_url = [], ""
    if GATEWAY in roles:
        host, port = _gateway_address(workspace, host, port, workers)
        _check_api_keys(workspace)
        children = _gateways(workspace, host, port, workers)
        for child in children:
            child.cpus = gateway_set
        metrics_url = f"http://{host}:{port}/metrics"
    if daemon_roles:
        from ops.supervise import Child

        children.append(Child("daemon", "ops.daemon:run_daemon", (workspace.root, admin_port, daemon_roles),
                              cpus=daemon_set, reloads=True))
    admin_url = f"http://{daemon_config.admin_host}:{admin_port or daemon_config.admin_port}" if ADMIN in roles else ""
    _supervise_as(workspace, children, SERVE, DaemonInfo(pid=os.getpid(), admin_url=admin_url, metrics_url=metrics_url,
                                                         started_at=datetime.now(UTC).isoformat()))


def _supervise_as(workspace, children: "list[Child]", role: str, info: DaemonInfo) -> None:
    """Supervise the children holding the workspace's lock of `role` (`serve`, or this lone gateway's),
    so that `shadowzoo stop` finds this process; a child that did not stop cleanly is an error naming it."""
    from ops.supervise import supervise

    lock = DaemonLock(workspace, role)
    lock.acquire()
    try:
        lock.publish(info)
        problems = supervise(children)
    finally:
        lock.release()
    if problems:
        raise ShadowzooError("stopped, but not cleanly: " + "; ".join(problems) + " (its log above says why)")


def _gateways(workspace, host: str, port: int, workers: int) -> "list[Child]":
    """Gateway worker processes (spawned, so each starts in Prometheus multiprocess mode), and on
    `backend: distributed` the host's one route follower, which keeps routes.json equal to the control plane's,
    and its one spool shipper (after the workers, so it is stopped after them and ships their last
    captures; its series are on the gateway's /metrics)."""
    from ops.supervise import Child
    from shadow.gateway.prometheus_metrics import multiprocess_env

    env = multiprocess_env(workspace.state_dir)
    worker = (str(workspace.root), host, port, workers > 1)
    children = [Child(f"gateway-{i}", "shadow.gateway.serve:worker_main", worker, env=env) for i in range(workers)]
    if workspace.config.backend == "distributed":
        from registry.distributed import object_store_credentials
        from shadow.shipper import shipping_host

        shipping_host(workspace.config.distributed)  # a bad host name or missing credentials stop the start
        object_store_credentials(workspace.config.distributed.object_store)
        children.append(Child("routes", "shadow.gateway.route_follower:follower_main", (str(workspace.root),)))
        children.append(Child("shipper", "shadow.shipper:shipper_main", (str(workspace.root),), env=env))
    return children


def _gateway_address(workspace, host: str | None, port: int | None, workers: int) -> tuple[str, int]:
    from shadow.gateway.address import bind_host, client_keys

    config = workspace.config.gateway
    host = bind_host(host or config.host, client_keys(workspace))
    port = config.port if port is None else port
    if workers > 1 and port == 0:
        raise typer.BadParameter("several workers share one port: give a fixed --port", param_hint="--port")
    _check_free(host, port, "gateway")
    return host, port


def _check_api_keys(workspace) -> None:
    """A champion's provider without its key stops the start; any other is warned about, once.

    Without the key every user request would get the upstream's 401 while only a log line
    deep in the daemon said why.
    """
    from registry.routes import read_routes
    from registry.workspace_config import missing_api_keys

    try:
        served = read_routes(workspace.routes_path).slots
    except (OSError, ValueError):
        served = {}
    for provider, variable in missing_api_keys(workspace.config.providers).items():
        slots = sorted(slot for slot, route in served.items() if route.provider == provider)
        if slots:
            raise ShadowzooError(f"set {variable}: provider {provider!r} serves the champion of {', '.join(slots)}, "
                                 "and without its key the upstream refuses every request")
        warn(f"provider {provider!r}: {variable} is not set, so calls to it will fail upstream until it is")


def _check_free(host: str, port: int, what: str) -> None:
    """Fail now, clearly, rather than in a child process restarted forever.

    The probe binds as the servers do, with SO_REUSEADDR: connections of a stopped server
    left in TIME_WAIT must not keep its restart out for a minute.
    """
    if port == 0:
        return
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ShadowzooError(f"cannot start the {what} on {host}:{port}: {exc.strerror}; "
                                 f"stop what uses it or choose another port") from None


def _serving(run, what: str) -> None:
    """Run a server in this process; a port in use is a clear error, not a traceback."""
    try:
        run()
    except OSError as exc:
        raise ShadowzooError(f"cannot start the {what}: {exc.strerror or exc}") from None


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
    from shadow.simulator.simulator_config import SimulatorConfigError

    try:
        serve(load_simulator_config(config), host=host, port=port, fast=fast)
    except SimulatorConfigError as exc:
        raise ShadowzooError(str(exc)) from None
    except OSError as exc:
        raise ShadowzooError(f"simulator: cannot listen on {host}:{port}: {exc}") from None
