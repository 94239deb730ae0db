"""Hostile specs and configs given to the real `shadowzoo` console script.

Each is refused with an error naming the file and key, runs nothing, and never stops the
other specs.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHADOWZOO
from tests.servers import GatewayProcess, edit_config, free_port, healthy

SLOT, OTHER = "support-triage", "refund-triage"
MEMORY_LIMIT_BYTES = 2 * 1024**3  # what the CLI needs with room to spare; a bomb that explodes hits it


def _python_spec(workspace_dir: Path, name: str, entrypoint: str) -> Path:
    path = workspace_dir / "zoo" / f"{name}.yaml"
    path.write_text(f"slot: {SLOT}\nname: {name}\nkind: python\noverrides:\n  entrypoint: {entrypoint}\n")
    return path


@pytest.mark.parametrize("entrypoint", ["subprocess:run", "json:loads"])
def test_a_python_spec_naming_an_installed_module_is_invalid_and_never_registered(
        cli, workspace_dir: Path, entrypoint: str) -> None:
    path = _python_spec(workspace_dir, "shell", entrypoint)
    (workspace_dir / "json.py").write_text("def loads(request):\n    return 'x'\n")  # shadows nothing: refused too
    validated = cli("zoo", "validate")
    assert validated.code == 1
    assert f"{path}: overrides.entrypoint: '{entrypoint}'" in validated.err
    registered = cli("zoo", "register", "shell")
    assert registered.code == 1 and "overrides.entrypoint" in registered.err
    assert "shell" not in {v["label"] for v in cli("variants", "list", "--json").json()}


def test_a_python_spec_naming_a_module_of_the_workspace_registers(cli, workspace_dir: Path) -> None:
    (workspace_dir / "rules").mkdir()
    (workspace_dir / "rules" / "__init__.py").write_text("")
    (workspace_dir / "rules" / "triage.py").write_text("def answer(request):\n    return 'billing'\n")
    _python_spec(workspace_dir, "rules", "rules.triage:answer")
    assert cli("zoo", "validate").code == 0
    assert cli("zoo", "register", "rules").code == 0


def test_a_python_path_entry_admits_the_modules_of_that_directory(cli, workspace_dir: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "house_rules.py").write_text("def answer(request):\n    return 'other'\n")
    _python_spec(workspace_dir, "house", "house_rules:answer")
    assert cli("zoo", "validate").code == 1
    edit_config(workspace_dir, lambda c: c.update(python_path=[str(shared)]))
    assert cli("zoo", "validate").code == 0


def test_an_external_trainer_outside_the_workspace_is_invalid(cli, workspace_dir: Path) -> None:
    path = workspace_dir / "zoo" / "trained.yaml"
    path.write_text(f"slot: {SLOT}\nname: trained\nbase: baseline\ntrain:\n  entrypoint: subprocess:call\n")
    validated = cli("zoo", "validate")
    assert validated.code == 1 and f"{path}: train.entrypoint: 'subprocess:call'" in validated.err


def test_a_python_metric_outside_the_workspace_is_a_config_error(cli, workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].update(metrics=[{"type": "python", "entrypoint": "os:system"}]))
    result = cli("zoo", "list")
    assert result.code == 1
    assert "shadowzoo.yaml: slots.support-triage.metrics[0].entrypoint: 'os:system'" in result.err


def test_register_all_active_registers_one_label_and_config_in_two_slots(cli, workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["slots"].update({OTHER: c["slots"][SLOT]}))
    for spec in sorted((workspace_dir / "zoo").glob("*.yaml"))[:1]:
        (spec.parent / f"{OTHER}-{spec.name}").write_text(spec.read_text().replace(f"slot: {SLOT}", f"slot: {OTHER}"))
    result = cli("zoo", "register", "--all-active", "--json")
    assert result.code == 0, result.err
    outcomes = result.json()["outcomes"]
    assert len(outcomes) == 6 and all(o["created"] for o in outcomes)
    assert len({o["version_id"] for o in outcomes}) == 6


def test_register_all_active_goes_past_a_failing_spec_and_exits_1(cli, workspace_dir: Path) -> None:
    _python_spec(workspace_dir, "aaa-shell", "subprocess:run")
    result = cli("zoo", "register", "--all-active", "--json")
    assert result.code == 1
    outcomes = result.json()["outcomes"]
    assert [o["name"] for o in outcomes if o["error"]] == ["aaa-shell"]
    assert sum(1 for o in outcomes if o["created"]) == 5


def test_a_yaml_alias_bomb_in_a_spec_is_refused_naming_the_file(workspace_dir: Path) -> None:
    levels = ["a: &a [" + ", ".join(["lol"] * 9) + "]"]
    for previous, name in zip("abcde", "bcdef"):
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{previous}"] * 9) + "]")
    bomb = workspace_dir / "zoo" / "lol.yaml"
    bomb.write_text(f"slot: {SLOT}\nname: lol\n" + "\n".join(levels) + "\n")
    assert bomb.stat().st_size < 500
    done = subprocess.run(  # bounded even if the bomb goes off: a memory limit and a timeout
        [str(SHADOWZOO), "zoo", "validate"], cwd=workspace_dir, env={**os.environ, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES)))
    assert done.returncode == 1
    assert f"{bomb}: invalid YAML: its aliases expand it to 672,614 nodes" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("skill", ["../../etc/passwd", "skills/triage"])
def test_a_skill_that_looks_like_a_path_but_is_no_file_of_the_workspace_is_an_error(
        cli, workspace_dir: Path, skill: str) -> None:
    path = workspace_dir / "zoo" / "leaky.yaml"
    path.write_text(f"slot: {SLOT}\nname: leaky\nbase: baseline\noverrides:\n  skill: {skill}\n")
    validated = cli("zoo", "validate")
    assert validated.code == 1 and f"{path}: overrides.skill: skill file '{skill}'" in validated.err


def _leave_time_wait(port: int) -> None:
    """A server on `port` that closed a connection first: the port is left in TIME_WAIT."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            connection, _ = server.accept()
            connection.close()
            client.recv(1)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what a probe without SO_REUSEADDR meets


def test_the_gateway_restarts_at_once_on_a_port_left_in_time_wait(workspace_dir: Path) -> None:
    port = free_port()
    _leave_time_wait(port)
    gateway = GatewayProcess(workspace_dir, port=port)
    try:
        assert gateway.process.poll() is None and healthy(f"http://127.0.0.1:{port}/healthz")
    finally:
        gateway.stop()


def test_the_gateway_refuses_to_start_when_its_champion_s_provider_key_is_unset(cli, cli_script) -> None:
    registered = cli("zoo", "register", "baseline", "--json").json()["outcomes"][0]["version_id"]
    assert cli("promote", SLOT, registered, "--force", "--reason", "first").code == 0
    done = cli_script("gateway", "--port", str(free_port()), env={"SIM_API_KEY": None})
    assert done.code == 1
    assert f"set SIM_API_KEY: provider 'sim' serves the champion of {SLOT}" in done.err
