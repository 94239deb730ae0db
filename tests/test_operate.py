"""Operating a running `serve` for months: live config, `stop`, `status`, quiet logs, CPU pinning."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import openai
import pytest

from ops.affinity import format_cpus
from tests.servers import ADMIN_TOKEN, GatewayProcess, Served, champion_workspace, edit_config, start_simulator, wait_until

SLOT = "support-triage"


@pytest.fixture
def simulator():
    sim = start_simulator(fast=True)
    yield sim
    sim.stop()


@pytest.fixture
def served_ws(tmp_path: Path, simulator) -> Path:
    return champion_workspace(tmp_path / "served", simulator.base_url,
                              daemon={"ingest_interval_s": 0.3, "score_interval_s": 1})


@pytest.fixture
def ws_cli(cli, served_ws: Path):
    """The CLI, run in the served workspace, with the admin token of `Served`."""
    return lambda *args, env=None: cli(*args, cwd=served_ws, env={"SHADOWZOO_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})})


def _ask(served: Served, client_id: str) -> None:
    client = openai.OpenAI(base_url=f"{served.gateway}/v1", api_key="x", max_retries=0, timeout=30)
    client.chat.completions.create(model=SLOT, messages=[{"role": "user", "content": "I was charged twice"}],
                                   extra_headers={"x-shadowzoo-request-id": client_id})


def _answered(served: Served, client_id: str) -> bool:
    try:
        _ask(served, client_id)
    except openai.APIError:
        return False
    return True


def _challenger_answers(served: Served, client_id: str) -> list[dict]:
    """The challengers' answers to one request, once every challenger has one."""
    status, traced = served.call(f"/admin/requests/{client_id}")
    answers = traced.get("challengers", []) if status == 200 else []
    return answers if answers and all(a["status"] != "missing" for a in answers) else []


def _config_status(served: Served) -> dict:
    """The config part of the daemon's status (from the admin API: polling it with the CLI costs a process a look)."""
    return served.call("/admin/status")[1]["config"]


@pytest.mark.slow
def test_an_edited_provider_url_is_used_after_sighup_without_a_restart(served_ws: Path, simulator) -> None:
    served = Served(served_ws)
    second = start_simulator(fast=True)
    try:
        _ask(served, "before")
        assert all(a["status"] == "ok" for a in wait_until(lambda: _challenger_answers(served, "before"), 60))
        loaded = _config_status(served)["loaded_at"]
        edit_config(served_ws, lambda c: c["providers"]["sim"].update(base_url=second.base_url))
        daemon = served.daemon_pid()
        os.kill(served.process.pid, signal.SIGHUP)  # to `serve`, as `systemctl reload` does: it passes it on
        wait_until(lambda: _config_status(served)["loaded_at"] != loaded, 30)
        simulator.stop()  # the first upstream is gone: only the second can answer now
        wait_until(lambda: _answered(served, "probe"), 10)  # the champion too, once the gateway reads routes.json
        _ask(served, "after")
        answers = wait_until(lambda: _challenger_answers(served, "after"), 60)
        assert [a["reason"] for a in answers if a["status"] != "ok"] == []
        assert served.daemon_pid() == daemon and served.process.poll() is None  # applied live, nothing restarted
    finally:
        log = served.stop()
        second.stop()
    assert '"config": "reloaded", "changed": ["providers"]' in log
    batches = [line.split("shadow run: ", 1)[1] for line in log.splitlines() if "shadow run:" in line]
    calls = sum(int(batch.split()[0]) for batch in batches)
    assert batches and calls >= 4 * len(batches) and "HTTP Request" not in log  # a line per batch, never per call


@pytest.mark.slow
def test_an_invalid_edit_keeps_the_running_config_and_a_port_change_waits_for_a_restart(served_ws: Path, ws_cli) -> None:
    served = Served(served_ws)
    try:
        edit_config(served_ws, lambda c: c["providers"]["sim"].update(timeout_s="soon"))
        error = wait_until(lambda: _config_status(served)["error"], 30)
        assert "shadowzoo.yaml" in error and "providers.sim.timeout_s" in error
        _ask(served, "during-refusal")  # still serving, on the config that ran before
        shown = ws_cli("status")
        assert "was refused" in shown.err and "providers.sim.timeout_s" in shown.err
        old_port = served.gateway.rsplit(":", 1)[1]
        edit_config(served_ws, lambda c: (c["providers"]["sim"].update(timeout_s=30), c["gateway"].update(port=1)))
        pending = wait_until(lambda: _config_status(served)["needs_restart"], 30)
        assert pending == [{"key": "gateway.port", "running": old_port, "edited": "1"}]
        assert _config_status(served)["error"] is None
        text = ws_cli("status").out
        assert "needs restart" in text and "gateway.port" in text and old_port in text
        _ask(served, "after-port-edit")  # the gateway still listens where it did
    finally:
        log = served.stop()
    assert log.count("shadowzoo.yaml refused") == 1  # logged once, though looked at every second


@pytest.mark.slow
def test_a_job_that_keeps_failing_makes_status_exit_non_zero(served_ws: Path, ws_cli) -> None:
    served = Served(served_ws)
    try:
        assert ws_cli("status").code == 0
        edit_config(served_ws, lambda c: c.update(prices_file="missing-prices.json"))  # ingest now fails every run
        wait_until(lambda: served.call("/admin/status")[1]["last_runs"]["ingest"]["failures_in_a_row"] >= 3, 30)
        failed = ws_cli("status")
        assert failed.code == 1
        assert "job ingest keeps failing" in failed.err and "missing-prices.json" in failed.err
        assert ws_cli("status", "--json").code == 1
    finally:
        served.stop()


@pytest.mark.slow
def test_pinned_serve_runs_each_process_on_its_cpus_logs_nothing_idle_and_stops(served_ws: Path, ws_cli) -> None:
    cpus = sorted(os.sched_getaffinity(0))  # on one CPU both share it, and the rest still holds
    served = Served(served_ws, args=["--gateway-cpus", str(cpus[0]), "--daemon-cpus", str(cpus[-1])])
    try:
        daemon = served.daemon_pid()
        gateway = int(wait_until(lambda: _gateway_pid(served.log_path), 30))
        assert _allowed(daemon) == {str(cpus[-1])} and _allowed(gateway) == {str(cpus[0])}
        size = served.log_path.stat().st_size
        time.sleep(3)  # ten ingest ticks, three score ticks, three config looks: nothing to say
        idle = served.log_path.read_text()[size:]
        stopped = ws_cli("stop")
        assert stopped.code == 0 and "stopped shadowzoo serve" in stopped.out
        assert served.process.wait(timeout=10) == 0
    finally:
        served.stop()
    assert idle == ""
    assert "nothing to stop" in ws_cli("stop").out


@pytest.mark.slow
def test_serve_whose_daemon_dies_while_stopping_exits_non_zero_and_names_it(served_ws: Path) -> None:
    served = Served(served_ws)
    try:
        daemon = served.daemon_pid()
        os.kill(served.process.pid, signal.SIGTERM)  # the gateways stop first: the daemon is killed meanwhile
        os.kill(daemon, signal.SIGKILL)
        assert served.process.wait(timeout=90) == 1
    finally:
        log = served.stop()
    assert f"stopped, but not cleanly: daemon (pid {daemon}) exited with -9 while stopping" in log


@pytest.mark.slow
def test_stop_stops_lone_gateways_and_says_so(served_ws: Path, ws_cli) -> None:
    gateways = [GatewayProcess(served_ws, env={"SIM_API_KEY": "sim"}) for _ in range(2)]  # sharing one spool
    try:
        stopped = ws_cli("stop")
        assert stopped.code == 0, stopped.err
        for gateway in gateways:
            assert gateway.process.wait(timeout=30) == 0
            assert f"stopped shadowzoo gateway (pid {gateway.process.pid})" in stopped.out
    finally:
        for gateway in gateways:
            gateway.stop()
    assert "nothing to stop" in ws_cli("stop").out
    assert list((served_ws / ".shadowzoo").glob("gateway-[0-9]*")) == []  # their lock and info files went with them


def test_stop_removes_the_files_a_gateway_killed_with_sigkill_left_and_keeps_a_running_ones(
        served_ws: Path, ws_cli) -> None:
    state = served_ws / ".shadowzoo"
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name in (f"gateway-{dead.pid}", f"gateway-{os.getpid()}"):  # a gateway gone; one alive, between its start and its lock
        (state / f"{name}.lock").touch()
        (state / f"{name}.json").write_text("{}")
    try:
        stopped = ws_cli("stop")
        left = sorted(path.name for path in state.glob("gateway-[0-9]*"))
    finally:
        for path in state.glob(f"gateway-{os.getpid()}.*"):
            path.unlink()
    assert stopped.code == 0, stopped.err
    assert f"removed the files of shadowzoo gateway (pid {dead.pid})" in stopped.out
    assert "nothing to stop" in stopped.out
    assert left == [f"gateway-{os.getpid()}.json", f"gateway-{os.getpid()}.lock"]


def _gateway_pid(log_path: Path) -> str | None:
    for line in log_path.read_text().splitlines():
        if "gateway worker" in line and "listening" in line:
            return line.split("gateway worker", 1)[1].split()[0]
    return None


def _allowed(pid: int) -> set[str]:
    """Cpus_allowed_list of every thread of the process."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split(":", 1)[1].strip())
    return lists


def test_serve_refuses_a_cpu_it_may_not_use(served_ws: Path, cli_script) -> None:
    outside = max(os.sched_getaffinity(0)) + 1
    done = cli_script("serve", "--gateway-cpus", f"0,{outside}", cwd=served_ws, env={"SHADOWZOO_ADMIN_TOKEN": "t", "SIM_API_KEY": "k"})
    assert done.code == 2 and "--gateway-cpus" in done.err and f"cpu(s) {outside} are not available" in done.err
    assert cli_script("serve", "--daemon-cpus", "1-x", cwd=served_ws, env={"SHADOWZOO_ADMIN_TOKEN": "t"}).code == 2


def test_cpu_lists_print_as_the_kernel_prints_them() -> None:
    assert format_cpus(frozenset({0, 1, 3, 5, 6, 7})) == "0-1,3,5-7"


def test_status_without_a_daemon_shows_the_stored_state_as_plain_text(served_ws: Path, ws_cli) -> None:
    done = ws_cli("status")
    assert done.code == 0, done.err
    assert "not running: stored state from the database" in done.out
    assert SLOT in done.out and "baseline-" in done.out
    assert not any(mark in done.out for mark in ("{'", "['", "{\"", "None"))
    report = ws_cli("status", "--json").json()
    assert report["champions"][SLOT].startswith("baseline-") and report["queue_depth"] is None


def test_stop_says_so_when_nothing_runs(cli) -> None:
    done = cli("stop")
    assert done.code == 0 and "nothing to stop" in done.out



def test_an_edited_redaction_rule_reaches_a_running_gateway_through_routes_json(served_ws: Path) -> None:
    from ops.liveconfig import LiveConfig
    from registry import Registry, load_workspace, utcnow
    from shadow.gateway.serve import gateway_state
    from shadow.spool_records import TrafficRecord

    workspace = load_workspace(served_ws)
    gateway = gateway_state(load_workspace(served_ws))  # a worker's state, read at its start
    live = LiveConfig(workspace)
    edit_config(served_ws, lambda c: c["slots"][SLOT].update(redact=[{"pattern": r"\d{16}", "replacement": "[CARD]"}]))
    reload = live.check(force=True)
    assert reload is not None and reload.changed == ["slots"] and live.pending == []
    workspace.config = reload.config
    with Registry.open(workspace) as registry:
        registry.write_routes()  # as the daemon does after a reload
    gateway.routes.reload()
    record = TrafficRecord(request_id="szr_1", slot=SLOT, received_at=utcnow(),
                           request={"messages": [{"role": "user", "content": "card 4111111111111111"}]}, status=200)
    assert "[CARD]" in gateway.captures.line(record).decode()
