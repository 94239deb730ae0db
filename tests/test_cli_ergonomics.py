"""What operators met using the CLI for months: one --since, --json everywhere, labels for ids,
reasons for every move, retired variants brought back, help that reads well, honest report files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

SLOT = "support-triage"


def _ids(cli) -> dict[str, str]:
    result = cli("zoo", "register", "--all-active", "--json")
    assert result.code == 0, result.err
    return {o["name"]: o["version_id"] for o in result.json()["outcomes"]}


def _champion(cli) -> dict[str, str]:
    ids = _ids(cli)
    assert cli("promote", SLOT, ids["baseline"], "--reason", "first").code == 0
    return ids


SINCE_COMMANDS = [
    ["leaderboard", "--slot", SLOT], ["report", "--slot", SLOT, "--out", "r.md"], ["requests", "--slot", SLOT],
    ["replay", "--slot", SLOT], ["export", "--slot", SLOT, "--out", "a.jsonl"],
]


def test_every_since_option_takes_a_span_and_names_the_forms_when_it_cannot_read_one(cli) -> None:
    _champion(cli)
    for command, since in zip(SINCE_COMMANDS, ["14d", "6h", "30m", "2026-01-31", "2026-01-31T12:00:00+01:00"]):
        assert cli(*command, "--since", since).code == 0, (command, since)
    for command in SINCE_COMMANDS:
        refused = cli(*command, "--since", "a fortnight")
        assert refused.code == 2, command
        assert "--since" in refused.err and "14d" in refused.err and "ISO" in refused.err
        assert "pydantic" not in refused.err and "Traceback" not in refused.err


def test_leaderboard_zoo_and_variant_listings_print_json(cli, workspace_dir: Path) -> None:
    ids = _champion(cli)
    board = cli("leaderboard", "--slot", SLOT, "--json")
    assert board.code == 0 and board.json()["slot"] == SLOT
    assert cli("leaderboard", "--slot", SLOT, "--json", "--format", "md").code == 2
    assert cli("zoo", "validate", "--json").json() == {"checked": 5, "errors": []}
    diff = cli("variants", "diff", ids["baseline"], "careful-mini", "--json").json()
    assert (diff["a"], diff["b"]) == (ids["baseline"], ids["careful-mini"])
    assert {"key": "model", "a": "sim-large", "b": "sim-mini"} in diff["config"]
    assert "+Think carefully and double-check" in diff["skill_diff"]
    run = workspace_dir / ".shadowzoo" / "train" / "careful-mini" / "20261201-000000"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"status": "done", "done": 3, "base_score": 0.5, "best_score": 0.7,
                                                "version_id": "careful-mini-x", "reason": ""}))
    assert cli("zoo", "runs", "--json").json() == [{
        "spec": "careful-mini", "run": "20261201-000000", "status": "done", "units": 3, "base": 0.5, "best": 0.7,
        "registered": "careful-mini-x", "reason": None,
    }]


def test_rollback_and_retire_refuse_to_move_without_a_reason(cli) -> None:
    ids = _champion(cli)
    assert cli("promote", SLOT, ids["cheap-mini"], "--force", "--reason", "trial").code == 0
    for args in (["rollback", SLOT], ["retire", ids["flash"]]):
        missing = cli(*args)
        assert missing.code == 2 and "--reason" in missing.err
        blank = cli(*args, "--reason", "  ")
        assert blank.code == 1 and "needs a reason" in blank.err
    assert [m["action"] for m in cli("history", SLOT, "--json").json()] == ["promote", "promote"]


def test_a_unique_label_stands_for_its_version_id(cli, workspace_dir: Path) -> None:
    ids = _ids(cli)
    promoted = cli("promote", SLOT, "baseline", "--reason", "by label")
    assert promoted.code == 0 and ids["baseline"] in promoted.out
    assert cli("variants", "show", "careful-large", "--json").json()["version_id"] == ids["careful-large"]
    assert cli("retire", "flash", "--reason", "errors").out.strip() == f"retired {ids['flash']}"
    unknown = cli("promote", SLOT, "carefull-large", "--reason", "typo")
    assert unknown.code == 1 and f"slot '{SLOT}'" in unknown.err and "careful-large" in unknown.err
    spec = workspace_dir / "zoo" / "careful-large.yaml"
    spec.write_text(spec.read_text().rstrip("\n") + "\n  model: sim-flash\n")
    assert cli("zoo", "register", "careful-large").code == 0  # a second version under the same label
    ambiguous = cli("variants", "show", "careful-large")
    assert ambiguous.code == 1 and ids["careful-large"] in ambiguous.err and "careful-large-" in ambiguous.err


def test_a_retired_variant_can_be_reactivated_and_the_history_says_so(cli) -> None:
    ids = _champion(cli)
    assert cli("retire", ids["flash"], "--reason", "errors").code == 0
    back = cli("variants", "reactivate", "flash", "--reason", "provider fixed")
    assert back.code == 0 and back.out.strip() == f"reactivated {ids['flash']}"
    listed = {v["version_id"]: v["status"] for v in cli("variants", "list", "--json").json()}
    assert listed[ids["flash"]] == "active"
    last = cli("history", SLOT, "--json").json()[-1]
    assert (last["action"], last["to_version"], last["reason"]) == ("reactivate", ids["flash"], "provider fixed")
    again = cli("variants", "reactivate", ids["flash"], "--reason", "twice")
    assert again.code == 1 and "is not retired" in again.err


def test_the_daemon_names_its_port_as_serve_does(cli) -> None:
    for command in ("daemon", "serve"):
        assert "--admin-port" in cli(command, "--help").out


@pytest.mark.parametrize("command", [["leaderboard"], ["replay"], ["export"]])
def test_help_paragraphs_are_wrapped_once_at_a_narrow_terminal(cli, command) -> None:
    shown = cli(*command, "--help", env={"COLUMNS": "80"}).out.splitlines()
    description = shown[shown.index(next(line for line in shown if line.strip().startswith("Usage:"))) + 2:]
    description = description[: next(i for i, line in enumerate(description) if line.strip().startswith("Example:"))]
    lines = [line.rstrip() for line in description]
    for line, following in zip(lines, lines[1:]):
        if line.strip() and following.strip():  # a line inside a paragraph: the terminal filled it
            assert len(line) > 60, f"half-empty line inside a paragraph: {line!r}"


def test_a_report_is_written_for_others_to_read_in_the_format_its_extension_names(cli, workspace_dir: Path) -> None:
    _champion(cli)
    before = os.umask(0o022)
    try:
        assert cli("report", "--slot", SLOT, "--out", "board.md").code == 0
    finally:
        os.umask(before)
    written = workspace_dir / "board.md"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert written.read_text().startswith("#") and "<html" not in written.read_text()
    refused = cli("report", "--slot", SLOT, "--out", "board.txt")
    assert refused.code == 2 and ".html" in refused.err and ".md" in refused.err
    assert not (workspace_dir / "board.txt").exists()
