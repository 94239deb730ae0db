"""`shadowzoo serve`: the daemon, its admin API, and the champion path around its restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import openai
import pytest

from ops.workspace_init import init_workspace
from registry import NewVariant, Registry, load_workspace
from tests.servers import ADMIN_TOKEN as TOKEN, Served, edit_config, free_port, healthy, start_simulator, wait_until
from zoo import load_zoo, register_specs

SLOT = "support-triage"
FAST_SIM = Path(__file__).resolve().parent.parent / "examples" / "demo" / "simulator.yaml"


def _admin(served: Served, path: str, body: dict | None = None, token: str | None = TOKEN) -> tuple[int, dict]:
    return served.call(path, body, token)


def _served_workspace(directory: Path, simulator_url: str) -> tuple[Path, dict[str, str]]:
    """The demo workspace on the simulator, free ports, fast jobs; specs registered, baseline champion."""
    ws = init_workspace(directory)

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator_url
        config["gateway"]["port"] = free_port()
        config["daemon"].update(admin_port=free_port(), score_interval_s=1, ingest_interval_s=0.3)
        config["slots"][SLOT]["scoring"]["min_samples"] = 20

    edit_config(ws, configure)
    workspace = load_workspace(ws)
    with Registry.open(workspace) as registry:
        zoo = load_zoo(workspace.specs_dir)
        ids = {o.spec_file.spec.name: o.registration.variant.version_id for o in register_specs(zoo.specs, zoo, workspace, registry)}
        registry.promote(SLOT, ids["baseline"], "tester", "first", None)
    return ws, ids


@pytest.fixture
def workspace(tmp_path: Path):
    """A served workspace of the test's own, on a simulator of its own (not started)."""
    simulator = start_simulator(FAST_SIM, fast=True)
    yield _served_workspace(tmp_path / "served-ws", simulator.base_url)
    simulator.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """One `serve` for the tests that send traffic and read, but neither stop it, promote nor register.

    Two tests change it, so they come after the others that use it (tests run in file order,
    on one worker under xdist): one kills the daemon and waits until `serve` has restarted
    it, the last trains a new spec."""
    simulator = start_simulator(FAST_SIM, fast=True)
    ws, ids = _served_workspace(tmp_path_factory.mktemp("shared") / "served-ws", simulator.base_url)
    served = Served(ws)
    yield served, ids
    served.stop()
    simulator.stop()


def _send(served: Served, count: int, start: int = 0, label: bool = True) -> list[str]:
    """`count` requests through the gateway; returns shadowzoo's request ids; posts their labels."""
    tickets = [json.loads(line) for line in FAST_SIM.with_name("tickets.jsonl").read_text().splitlines()]
    client = openai.OpenAI(base_url=f"{served.gateway}/v1", api_key="x", max_retries=0, timeout=30)

    def one(i: int) -> str:
        ticket = tickets[i % len(tickets)]
        raw = client.chat.completions.with_raw_response.create(
            model=SLOT, messages=[{"role": "user", "content": ticket["input"]}],
            extra_headers={"x-shadowzoo-request-id": f"c{i}"})
        if label:
            body = json.dumps({"request_id": f"c{i}", "label": ticket["expected"]}).encode()
            urllib.request.urlopen(urllib.request.Request(f"{served.gateway}/v1/feedback", data=body)).read()
        return raw.headers["x-shadowzoo-request-id"]

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(start, start + count)))


def _rows(workspace_dir: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(workspace_dir / ".shadowzoo" / "shadowzoo.duckdb"), read_only=True) as db:
        return db.execute(query).fetchall()


@pytest.mark.slow
def test_traffic_flows_to_a_scored_leaderboard_and_the_cli_goes_through_the_daemon(shared, cli) -> None:
    served, ids = shared
    ws = served.workspace_dir
    _send(served, 60)

    def paired() -> bool:
        status, board = _admin(served, f"/admin/leaderboard?slot={SLOT}")
        return status == 200 and all(r["comparison"]["pairs"] >= 50 for r in board["rows"] if r["comparison"])

    wait_until(paired, timeout_s=60, interval_s=0.5)
    env = {"SHADOWZOO_ADMIN_TOKEN": TOKEN}
    listing = cli("variants", "list", "--json", cwd=ws, env=env)
    assert listing.code == 0 and {v["label"] for v in listing.json()} >= {"baseline", "careful-mini"}
    board = cli("leaderboard", "--slot", SLOT, "--format", "json", cwd=ws, env=env).json()
    assert board["champion"] == ids["baseline"] and len(board["rows"]) == 5
    status = cli("status", "--json", cwd=ws, env=env).json()
    assert status["champions"][SLOT] == ids["baseline"] and status["routes_drift"] == []
    assert {"ingest", "score", "watch", "retention"} <= set(status["last_runs"])
    metrics = urllib.request.urlopen(f"{served.admin}/metrics").read().decode()
    assert f'shadowzoo_champion_info{{slot="{SLOT}",version="{ids["baseline"]}"}} 1.0' in metrics
    assert "shadowzoo_shadow_calls_total{" in metrics and "shadowzoo_job_runs_total{" in metrics
    gateway_metrics = urllib.request.urlopen(f"{served.gateway}/metrics").read().decode()
    assert f'shadowzoo_gateway_requests_total{{code="200",slot="{SLOT}"}}' in gateway_metrics


@pytest.mark.slow
def test_a_replay_after_a_promotion_pays_for_nothing_that_cannot_pair_and_says_so(workspace, cli) -> None:
    ws, ids = workspace
    env = {"SHADOWZOO_ADMIN_TOKEN": TOKEN}
    served = Served(ws)
    try:
        _send(served, 30)
        wait_until(lambda: _result_count(ws, served) >= 30 * 4, timeout_s=90, interval_s=0.5)
        promoted = cli("promote", SLOT, ids["careful-large"], "--force", "--reason", "a new champion", cwd=ws, env=env)
        assert promoted.code == 0, promoted.err
        (ws / "zoo" / "late.yaml").write_text(f"slot: {SLOT}\nname: late\nbase: cheap-mini\noverrides:\n  temperature: 0.5\n")
        registered = cli("zoo", "register", "late", cwd=ws, env=env)
        assert registered.code == 0, registered.err
        replayed = cli("replay", "--slot", SLOT, "--since", "1h", "--json", cwd=ws, env=env)
        told = cli("replay", "--slot", SLOT, "--since", "1h", cwd=ws, env=env)
        everything = cli("replay", "--slot", SLOT, "--since", "1h", "--include-old", "--json", cwd=ws, env=env)
    finally:
        served.stop()
    assert replayed.code == told.code == everything.code == 0, (replayed.err, told.err, everything.err)
    report = replayed.json()
    assert (report["total"], report["cost_usd"], report["skipped"]) == (0, 0.0, {"other_champion": 30})
    assert "30 requests were answered by another champion" in told.out + told.err
    assert everything.json()["total"] == 30


@pytest.mark.slow
def test_admin_calls_need_the_token_and_promotion_needs_evidence(shared) -> None:
    served, ids = shared
    assert _admin(served, "/admin/status", token=None)[0] == 401
    assert _admin(served, "/admin/status", token="wrong")[0] == 401
    status, body = _admin(served, "/admin/promote", {"slot": SLOT, "version_id": ids["flash"], "actor": "t"})
    assert status == 409 and "not ready to promote" in body["error"]["message"]
    assert "openapi" in json.loads(urllib.request.urlopen(f"{served.admin}/openapi.json").read())


@pytest.mark.slow
def test_a_second_daemon_on_the_same_state_dir_refuses_and_names_the_first(shared, cli_script) -> None:
    served, _ = shared
    ws = served.workspace_dir
    second = cli_script("daemon", "--admin-port", str(free_port()), cwd=ws, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert second.code == 1
    assert "another shadowzoo daemon already owns" in second.err and f"pid {served.daemon_pid()}" in second.err
    again = cli_script("serve", cwd=ws, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert again.code == 1 and "a daemon already runs" in again.err


def test_a_config_error_at_start_names_file_and_key_and_starts_nothing(workspace, cli_script) -> None:
    ws, _ = workspace
    edit_config(ws, lambda c: c["daemon"].update(score_every="1m"))
    result = cli_script("serve", cwd=ws, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert result.code == 1 and "daemon.score_every: unknown key" in result.err
    assert not (ws / ".shadowzoo" / "daemon.json").exists()


def test_a_port_in_use_is_a_clear_error(workspace, cli_script) -> None:
    ws, _ = workspace
    port = load_workspace(ws).config.gateway.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = cli_script("serve", cwd=ws, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert result.code == 1 and f"cannot start the gateway on 127.0.0.1:{port}" in result.err


def test_serve_without_an_admin_token_says_which_variable_to_set(workspace, cli_script) -> None:
    ws, _ = workspace
    result = cli_script("serve", cwd=ws, env={"SHADOWZOO_ADMIN_TOKEN": None})
    assert result.code == 1 and "set SHADOWZOO_ADMIN_TOKEN" in result.err


@pytest.mark.slow
def test_the_champion_keeps_answering_while_the_daemon_is_killed(shared) -> None:
    served, _ = shared
    _send(served, 10, label=False)
    killed = served.daemon_pid()
    os.kill(killed, signal.SIGKILL)
    answered = _send(served, 40, start=10, label=False)
    assert len(answered) == 40, "every champion request must succeed while the daemon is down"
    wait_until(lambda: healthy(f"{served.admin}/healthz") and served.daemon_pid() != killed, timeout_s=60)


@pytest.mark.slow
def test_sigterm_during_a_burst_loses_no_accepted_capture(workspace) -> None:
    ws, _ = workspace
    served = Served(ws, workers=2)
    with ThreadPoolExecutor(1) as background:
        burst = background.submit(_send_until_refused, served)
        wait_until(lambda: len(list((ws / ".shadowzoo" / "spool").glob("*.jsonl"))) > 0 or _traffic_count(ws) > 0,
                   timeout_s=30)
        served.stop()
        accepted = burst.result(timeout=60)
    assert len(accepted) > 0
    with Registry.open(load_workspace(ws)) as registry:
        from shadow.ingest import ingest_spool
        ingest_spool(registry.database, ws / ".shadowzoo" / "spool")
    stored = {row[0] for row in _rows(ws, "SELECT request_id FROM traffic")}
    assert set(accepted) <= stored


def _send_until_refused(served: Served) -> list[str]:
    client = openai.OpenAI(base_url=f"{served.gateway}/v1", api_key="x", max_retries=0, timeout=10)
    accepted = []
    for i in range(2000):
        try:
            raw = client.chat.completions.with_raw_response.create(
                model=SLOT, messages=[{"role": "user", "content": f"burst {i}"}])
            accepted.append(raw.headers["x-shadowzoo-request-id"])
        except openai.APIConnectionError:
            break
    return accepted


def _traffic_count(ws: Path) -> int:
    try:
        return _rows(ws, "SELECT count(*) FROM traffic")[0][0]
    except duckdb.Error:
        return 0


REPLAYED = 24
"""Requests replayed against four challengers while the daemon is killed (after 10 of the 96 calls)."""


@pytest.mark.slow
def test_a_daemon_killed_mid_replay_resumes_without_lost_or_duplicated_results(workspace, tmp_path: Path) -> None:
    ws, ids = workspace
    slow_sim = start_simulator(FAST_SIM, fast=False)
    edit_config(ws, lambda c: c["providers"]["sim"].update(base_url=slow_sim.base_url, max_concurrency=4))
    served = Served(ws)
    try:
        _send(served, REPLAYED)
        wait_until(lambda: _result_count(ws, served) > 10, timeout_s=60, interval_s=0.2)
        os.kill(served.daemon_pid(), signal.SIGKILL)
        wait_until(lambda: healthy(f"{served.admin}/healthz"), timeout_s=60)
        wait_until(lambda: _result_count(ws, served) >= REPLAYED * 4, timeout_s=120, interval_s=0.5)
    finally:
        served.stop()
        slow_sim.stop()
    total, distinct = _rows(ws, "SELECT count(*), count(DISTINCT (request_id, version_id)) FROM shadow_results")[0]
    assert total == distinct == REPLAYED * 4  # killed after 10 of them: the rest resumed, none answered twice


def _result_count(ws: Path, served: Served) -> int:
    status, body = _admin(served, f"/admin/leaderboard?slot={SLOT}")
    if status != 200:
        return 0
    return sum(r["n"] + r["not_run"] for r in body["rows"] if r["role"] == "challenger")


@pytest.mark.slow
def test_champion_requests_succeed_while_every_challenger_upstream_is_down(workspace) -> None:
    ws, ids = workspace
    edit_config(ws, lambda c: c["providers"].update(down={"base_url": f"http://127.0.0.1:{free_port()}/v1", "timeout_s": 2}))
    with Registry.open(load_workspace(ws)) as registry:
        for name, version in ids.items():
            if name != "baseline":
                registry.retire(version, "tester", "only the unreachable challenger remains")
        down = registry.register(NewVariant(slot=SLOT, label="unreachable", kind="chat",
                                            config={"kind": "chat", "provider": "down", "model": "sim-mini", "params": {}}))
    served = Served(ws)
    try:
        answered = _send(served, 40)
        assert len(answered) == 40

        def errors_recorded() -> bool:
            # 404 until the daemon's first score job stored a board (the requests may all be answered before)
            status, board = _admin(served, f"/admin/leaderboard?slot={SLOT}")
            rows = [r for r in board["rows"] if r["version_id"] == down.variant.version_id] if status == 200 else []
            return bool(rows) and rows[0]["n"] >= 40 and rows[0]["error_rate"] == 1.0

        wait_until(errors_recorded, timeout_s=90, interval_s=0.5)
    finally:
        served.stop()


@pytest.mark.slow
def test_zoo_train_runs_as_a_daemon_job_while_serve_runs(shared, cli) -> None:
    served, _ = shared
    ws = served.workspace_dir
    (ws / "zoo" / "tuned.yaml").write_text(
        "slot: support-triage\nname: tuned\nbase: cheap-mini\ntrain:\n"
        "  optimizer_model: {provider: sim, model: sim-optimizer}\n"
        "  dataset: {from: file, path: tickets.jsonl}\n"
        "  num_epochs: 1\n  steps_per_epoch: 1\n  batch_size: 16\n  split: '1:2:1'\n")
    result = cli("zoo", "train", "--spec", "tuned", cwd=ws, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN, "SIM_API_KEY": "sim"})
    assert result.code == 0, result.err
    assert "tuned: " in result.out and "1 succeeded, 0 failed" in result.out
    assert list((ws / ".shadowzoo" / "train" / "tuned").glob("*/state.json"))
