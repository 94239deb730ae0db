"""`shadowzoo status | stop`: how a running service is doing, and stopping it.

`status` asks the daemon when one runs; when none does, it reads the stored state itself
(champions, budgets, pauses, spool, routes drift) and says so. It prints aligned sections
of plain text (`--json`: the same data as JSON) and exits 1 when a job keeps failing: its
last `FAILING_RUNS` runs all failed.
"""

import os
import signal
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ops.output import print_fields, print_json, print_table, say, warn
from ops.session import Session, session
from ops.state import DaemonInfo, forget_dead_gateways, running_daemon, running_roles
from registry.errors import ConfigError, ShadowzooError

if TYPE_CHECKING:
    from registry import Workspace

FAILING_RUNS = 3
"""A job whose last this many runs failed keeps failing: `status` exits 1."""
STOP_WAIT_S = 90.0


def status(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Daemon health, config reloads, spool lag, queue depth, budgets left, pauses, last job runs, routes drift.

    Without a running daemon it shows the stored state. Exits 1 when a job's last 3 runs failed.

    Example: shadowzoo status
    """
    current = session(ctx)
    remote = current.remote(_workspace(current))
    if remote is not None:
        report = remote.status()
    else:
        with current.operations() as operations:  # an invalid file is an error, now that no daemon runs on it
            report = operations.status()
    failing = failing_jobs(report)
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if failing:
        raise ShadowzooError("; ".join(f"job {name} keeps failing (its last {FAILING_RUNS} runs): {error}"
                                       for name, error in failing.items()))


def _workspace(current: Session) -> "Workspace":
    """The workspace; when its file does not load, enough of it (state_dir, the admin token's variable)
    to find a daemon still running on an earlier version of the file: its `status` says why the edit
    was refused."""
    import yaml
    from pydantic import ValidationError

    from registry import Workspace
    from registry.workspace_config import CONFIG_FILE, DaemonConfig, WorkspaceConfig

    try:
        return current.workspace()
    except ConfigError:
        try:
            raw = yaml.safe_load((current.workspace_dir / CONFIG_FILE).read_text())
            token_env = (raw.get("daemon") or {}).get("admin_token_env", DaemonConfig().admin_token_env)
            return Workspace(current.workspace_dir, WorkspaceConfig(
                state_dir=raw.get("state_dir", ".shadowzoo"), daemon=DaemonConfig(admin_token_env=token_env)))
        except (OSError, ValueError, AttributeError, ValidationError, yaml.YAMLError):
            return current.workspace()  # raises the file's own error again


def failing_jobs(report: dict[str, Any]) -> dict[str, str]:
    """The jobs whose last `FAILING_RUNS` runs all failed, with their last error."""
    return {name: run.get("error", "") for name, run in sorted(report.get("last_runs", {}).items())
            if run.get("failures_in_a_row", 0) >= FAILING_RUNS}


def _print_report(report: dict[str, Any]) -> None:
    if report.get("pid") is None:
        print_fields("daemon", [("state", "not running: stored state from the database"), ("database", report["database"])])
    else:
        print_fields("daemon", [("state", "running"), ("pid", report["pid"]), ("up", _duration(report["uptime_s"])),
                                ("roles", report.get("roles", ""))])
        _print_config(report["config"])
    say("")
    print_fields("spool and queue", [
        ("spool", f"{report['spool_segments']} segment(s) waiting, oldest {report['spool_lag_s']:g} s"),
        ("quarantined", f"{report['spool_quarantined_records']} record(s)"),
        ("shadow queue", "unknown (no daemon)" if report["queue_depth"] is None else f"{report['queue_depth']:.0f} pair(s) pending"),
    ])
    budgets = report["budgets_left_usd"]
    say("")
    print_table("slots", ["slot", "champion", "shadow budget left today"],
                [[slot, champion or "(none)", f"${budgets.get(slot, 0):.2f}"] for slot, champion in report["champions"].items()])
    _print_judges(report.get("judges", {}))
    if report["pauses"]:
        say("")
        print_table("pauses", ["paused", "by", "since", "reason"],
                    [[p["target"] if p["scope"] == "version" else "all shadow spend", p["actor"], p["since"], p["reason"]]
                     for p in report["pauses"]])
    if report.get("last_runs"):
        say("")
        print_table("last job runs", ["job", "outcome", "at", "duration s", "failed in a row", "counts"],
                    [[name, run["outcome"], run["at"], run["duration_s"], run.get("failures_in_a_row", 0), _counts(run)]
                     for name, run in sorted(report["last_runs"].items())])
    _print_gateway_routes(report.get("gateway_routes"))
    _print_gateway_shipping(report.get("gateway_shipping"))
    _print_warnings(report)


def _gateway_section(section: dict[str, Any] | None, what: str) -> bool:
    """Whether a section about the gateway hosts has rows to print (then after a blank line); it has
    none on the embedded backend, and when the control plane could not be read, which is warned about."""
    if section is None:
        return False
    if "error" in section:
        warn(f"{what} unknown: {section['error']}")
        return False
    say("")
    return True


def _print_gateway_routes(routes: dict[str, Any] | None) -> None:
    """`backend: distributed`: the route version each gateway host serves; a host behind or unreachable is warned about."""
    if not _gateway_section(routes, "gateway hosts' routes"):
        return
    print_table(f"gateway hosts' routes (published version {routes['published_version']})",
                ["host", "serves version", "table age s", "last report s ago"],
                [[h["host"], h["version"], h["routes_age_s"], h["reported_s_ago"]] for h in routes["hosts"]])
    for host in routes["hosts"]:
        if host["behind"]:
            warn(f"gateway host {host['host']} serves routes version {host['version']}, not the published "
                 f"{routes['published_version']} (last report {host['reported_s_ago']:g} s ago)")


def _print_gateway_shipping(shipping: dict[str, Any] | None) -> None:
    """`backend: distributed`: per gateway host its shipping lag as its shipper last reported it to the
    control plane, and what of it waits in the bucket for ingest; a host silent for a while is warned about."""
    if shipping is None:
        return
    for key in ("error", "bucket_error"):
        if key in shipping:
            warn(f"gateway hosts' spool shipping partly unknown: {shipping[key]}")
    if not shipping["hosts"]:
        return
    say("")
    print_table("gateway hosts' spool shipping", ["host", "shipping lag", "segments shipped", "last shipped",
                                                  "waiting for ingest", "last report s ago"],
                [[h["host"], _seconds(h["shipping_lag_s"]), h["segments_shipped"], h["last_shipped_at"] or "never",
                  _waiting(h), _seconds(h["reported_s_ago"], "never")] for h in shipping["hosts"]])
    for host in shipping["hosts"]:
        if host["silent"]:
            last = ("has never reported" if host["reported_s_ago"] is None
                    else f"has not reported for {host['reported_s_ago']:g} s (its shipping lag then: "
                         f"{host['shipping_lag_s']:g} s)")
            warn(f"gateway host {host['host']} {last}: its shipper is stopped or cannot reach PostgreSQL, "
                 f"or the host is down (taken out of service? `shadowzoo forget-host {host['host']}`)")


def _waiting(host: dict[str, Any]) -> str:
    """A host's segments in the bucket not yet ingested, and the age of the oldest."""
    if not host["waiting_segments"]:
        return "none"
    return f"{host['waiting_segments']} segment(s), oldest {host['oldest_waiting_s']:g} s"


def _seconds(value: float | None, none: str = "unknown") -> str:
    return none if value is None else f"{value:g} s"


def _print_config(config: dict[str, Any]) -> None:
    say("")
    print_fields("config", [("file", config["path"]), ("loaded", config["loaded_at"])])
    if config["error"]:
        warn(f"the last edit of shadowzoo.yaml was refused; the daemon runs the config loaded before: {config['error']}")
    if config["needs_restart"]:
        say("")
        print_table("needs restart (edited, still running the old value)", ["setting", "running", "edited"],
                    [[p["key"], p["running"], p["edited"]] for p in config["needs_restart"]])


def _print_judges(judges: dict[str, list[dict[str, Any]]]) -> None:
    rows = [[slot, j["metric_key"], f"${j['spent_today_usd']:.4f} of ${j['daily_budget_usd']:.2f}",
             "reached" if j["budget_reached"] else "", j["unjudged"]]
            for slot, slot_judges in judges.items() for j in slot_judges]
    if rows:
        say("")
        print_table("judges", ["slot", "judge", "spent today", "budget", "answers waiting"], rows)


def _print_warnings(report: dict[str, Any]) -> None:
    if report["spool_quarantined_records"]:
        warn(f"{report['spool_quarantined_records']} spool record(s) could not be stored: see the spool's "
             "quarantine/ (each has a .reason note; fix and move back into the spool to ingest)")
    for drift in report["routes_drift"]:
        warn(f"routes drift: {drift}")
    for provider, variable in report["missing_api_keys"].items():
        warn(f"provider {provider!r}: {variable} is not set in the daemon's environment; its calls fail upstream")


def _counts(run: dict[str, Any]) -> str:
    """A job run's counts as `key=value`, lists joined by commas."""
    shown = []
    for key, value in run.items():
        if key in ("job", "outcome", "at", "duration_s", "failures_in_a_row"):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) or "none"
        shown.append(f"{key}={value}")
    return "; ".join(shown)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def forget_host(
    ctx: typer.Context,
    host: Annotated[str, typer.Argument(help="The gateway host's name (its distributed.host), as `status` lists it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Forget a gateway host taken out of service, so that `status` stops warning that it is silent.

    backend: distributed only. A host silent for under 30 s is refused: it still runs, and would
    report again. Its segments already in the bucket are left to ingest (`status` shows them).

    Example: shadowzoo forget-host gw-3
    """
    with session(ctx).operations() as operations:
        forgotten = operations.forget_host(host)
    if as_json:
        print_json(forgotten)
    else:
        say(f"forgot gateway host {forgotten.host} (silent for {forgotten.silent_s:g} s)")


def stop(
    ctx: typer.Context,
    wait_s: Annotated[float, typer.Option("--wait", min=0, help="Seconds to wait for it to stop.")] = STOP_WAIT_S,
) -> None:
    """Stop the `shadowzoo serve` (or lone gateways and daemon) running for this workspace.

    Sends SIGTERM: the gateways flush their captures, then the daemon ingests them. Waits
    up to --wait seconds for each and says whether it stopped; nothing running is not an error.

    Example: shadowzoo stop
    """
    workspace = session(ctx).workspace()
    stopped = False
    for role in running_roles(workspace):
        info = running_daemon(workspace, role)
        if info is not None:
            _stop(workspace, role.split("-")[0], role, info, wait_s)
            stopped = True
    for pid in forget_dead_gateways(workspace):
        say(f"removed the files of shadowzoo gateway (pid {pid}), which died without removing them")
    if not stopped:
        say(f"no shadowzoo serve, gateway or daemon runs for {workspace.root}: nothing to stop")


def _stop(workspace: "Workspace", name: str, role: str, info: DaemonInfo, wait_s: float) -> None:
    """SIGTERM to the process of `role` (`name`: what it is), and wait until its lock is free."""
    say(f"stopping shadowzoo {name} (pid {info.pid}) for {workspace.root} ...")
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise ShadowzooError(f"not allowed to signal pid {info.pid}: run `shadowzoo stop` as the user "
                             "that started it (or `systemctl stop shadowzoo`)") from None
    deadline = time.monotonic() + wait_s
    while running_daemon(workspace, role) is not None:
        if time.monotonic() > deadline:
            raise ShadowzooError(f"shadowzoo {name} (pid {info.pid}) still runs {wait_s:g} s after SIGTERM; "
                                 f"look at its log, or `kill -9 {info.pid}`")
        time.sleep(0.2)
    say(f"stopped shadowzoo {name} (pid {info.pid})")
