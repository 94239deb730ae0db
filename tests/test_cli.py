"""The `shadowzoo` console script, run as a user runs it: the README walkthrough and its errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHADOWZOO

COMMANDS = [
    ["init"], ["zoo", "list"], ["zoo", "validate"], ["zoo", "register"], ["variants", "list"],
    ["variants", "show"], ["variants", "diff"], ["promote"], ["rollback"], ["retire"], ["history"],
    ["leaderboard"], ["report"], ["replay"], ["pause"], ["resume"], ["serve"], ["daemon"], ["gateway"],
    ["status"], ["sim"], ["demo"], ["ingest", "traffic"], ["ingest", "outcomes"],
    ["zoo", "train"], ["zoo", "runs"], ["export"], ["trace"], ["requests"],
]


def _ids(cli) -> dict[str, str]:
    result = cli("zoo", "register", "--all-active", "--json")
    assert result.code == 0, result.err
    return {o["name"]: o["version_id"] for o in result.json()["outcomes"]}


def test_the_readme_walkthrough_works_end_to_end(tmp_path: Path, cli) -> None:
    created = cli("init", str(tmp_path / "demo-ws"), cwd=tmp_path)
    assert created.code == 0 and "created workspace" in created.out
    ws = tmp_path / "demo-ws"
    assert cli("zoo", "list", cwd=ws).code == 0
    assert cli("zoo", "validate", cwd=ws).out.strip() == "all 5 spec(s) are valid"
    registered = cli("zoo", "register", "--all-active", cwd=ws)
    assert registered.code == 0 and registered.out.count("registered ") == 5
    listing = cli("variants", "list", "--slot", "support-triage", "--json", cwd=ws).json()
    ids = {v["label"]: v["version_id"] for v in listing}
    shown = cli("variants", "show", ids["careful-large"], cwd=ws)
    assert "Think carefully" in shown.out and '"model": "sim-large"' in shown.out
    diff = cli("variants", "diff", ids["baseline"], ids["careful-large"], cwd=ws)
    assert "+Think carefully and double-check" in diff.out
    assert cli("promote", "support-triage", ids["baseline"], "--reason", "initial champion", cwd=ws).code == 0
    refused = cli("promote", "support-triage", ids["cheap-mini"], cwd=ws)
    assert refused.code == 1 and "is not ready to promote" in refused.err
    assert cli("promote", "support-triage", ids["cheap-mini"], "--force", "--reason", "trial", cwd=ws).code == 0
    rolled = cli("rollback", "support-triage", "--reason", "too many complaints", cwd=ws)
    assert rolled.code == 0 and f"-> {ids['baseline']}" in rolled.out
    assert cli("retire", ids["flash"], "--reason", "errors", cwd=ws).code == 0
    history = cli("history", "support-triage", "--json", cwd=ws).json()
    assert [(m["action"], m["actor"]) for m in history] == [
        ("promote", "tester"), ("promote", "tester"), ("rollback", "tester"), ("retire", "tester"),
    ]
    assert history[0]["reason"] == "initial champion"
    listing = cli("variants", "list", "--json", cwd=ws).json()
    assert [v["label"] for v in listing if v["champion"]] == ["baseline"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.code == 0
    assert "Example: shadowzoo" in result.out


def test_registering_again_changes_nothing_and_says_so(cli) -> None:
    first = _ids(cli)
    again = cli("zoo", "register", "--all-active")
    assert again.code == 0
    assert f"baseline: already registered as {first['baseline']}" in again.out
    assert len(cli("variants", "list", "--json").json()) == 5


def test_zoo_list_shows_the_would_be_version_ids(cli) -> None:
    before = {s["name"]: s["version_id"] for s in cli("zoo", "list", "--json").json()["specs"]}
    assert before == _ids(cli)


def test_failures_exit_1_with_a_message_and_no_traceback(cli) -> None:
    ids = _ids(cli)
    for args in (
        ["promote", "support-triage", "no-such-version"],
        ["rollback", "support-triage", "--reason", "no previous champion"],
        ["retire", "no-such-version", "--reason", "unknown"],
        ["promote", "other-slot", ids["baseline"]],
    ):
        result = cli(*args)
        assert result.code == 1, args
        assert result.err.startswith("error: ")
        assert "Traceback" not in result.err + result.out


def test_usage_errors_exit_2(cli) -> None:
    assert cli("promote", "support-triage").code == 2
    assert cli("promote", "support-triage", "x", "--force").code == 2
    assert cli("zoo", "register").code == 2
    assert cli("variants", "list", "--status", "sleeping").code == 2
    assert cli("no-such-command").code == 2


def test_zoo_validate_exits_1_and_names_every_bad_spec(cli, workspace_dir: Path) -> None:
    (workspace_dir / "zoo" / "typo.yaml").write_text("slot: support-triage\nname: typo\noverrides:\n  modle: x\n")
    (workspace_dir / "zoo" / "orphan.yaml").write_text("slot: support-triage\nname: orphan\nbase: nobody\n")
    result = cli("zoo", "validate")
    assert result.code == 1
    assert "typo.yaml:4:3: overrides.modle: unknown key (did you mean 'model'?)" in result.err
    assert "orphan.yaml: base: 'nobody' does not resolve" in result.err


def test_register_all_active_registers_the_good_specs_and_exits_1_for_the_bad(cli, workspace_dir: Path) -> None:
    (workspace_dir / "zoo" / "orphan.yaml").write_text("slot: support-triage\nname: orphan\nbase: nobody\n")
    result = cli("zoo", "register", "--all-active")
    assert result.code == 1
    assert result.out.count("registered ") == 5 and "orphan" in result.err


def test_a_missing_config_file_says_how_to_create_one(cli, tmp_path: Path) -> None:
    result = cli("variants", "list", cwd=tmp_path)
    assert result.code == 1
    assert "no shadowzoo.yaml" in result.err and "shadowzoo init DIR" in result.err


def test_a_bad_config_file_names_file_line_and_key(cli, workspace_dir: Path) -> None:
    config = workspace_dir / "shadowzoo.yaml"
    config.write_text(config.read_text().replace("    timeout_s: 10\n", "    timeout_s: 10\n    retries: 2\n"))
    line = config.read_text().splitlines().index("    retries: 2") + 1
    result = cli("variants", "list")
    assert result.code == 1
    assert (f"shadowzoo.yaml:{line}:5: providers.sim.retries: unknown key (did you mean 'max_retries'?); "
            "allowed keys: api_key_env, base_url, max_concurrency") in result.err


def test_init_refuses_to_overwrite_a_workspace(cli, workspace_dir: Path) -> None:
    result = cli("init", str(workspace_dir))
    assert result.code == 1 and "is a workspace already" in " ".join(result.err.split())  # a long path wraps it


def test_two_concurrent_promote_processes_both_land_in_order(cli, workspace_dir: Path) -> None:
    ids = _ids(cli)
    assert cli("promote", "support-triage", ids["baseline"]).code == 0
    procs = [
        subprocess.Popen([str(SHADOWZOO), "promote", "support-triage", ids[name], "--force", "--reason", name],
                         cwd=workspace_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("cheap-mini", "careful-large")
    ]  # forced: without traffic no challenger is ready
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    moves = cli("history", "support-triage", "--json").json()
    assert len(moves) == 3
    assert moves[2]["from_version"] == moves[1]["to_version"]


def test_a_database_held_by_another_process_is_explained(cli, workspace_dir: Path) -> None:
    _ids(cli)
    holder = subprocess.Popen(
        [str(Path(SHADOWZOO).parent / "python"), "-c",
         "import duckdb, sys; c = duckdb.connect('.shadowzoo/shadowzoo.duckdb'); print('held', flush=True); sys.stdin.read()"],
        cwd=workspace_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = cli("variants", "list", env={"SHADOWZOO_LOCK_WAIT_S": "0.2"})
        assert result.code == 1
        assert f"locked by process {holder.pid}" in result.err and "Traceback" not in result.err
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


