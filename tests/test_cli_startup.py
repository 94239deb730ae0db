"""`shadowzoo --help` and `variants list` answer at once: they load none of the heavy libraries.

Each check runs in a fresh interpreter (this test process has imported everything already),
renders the command's output through the real entry point, then lists what got imported.
`-P` keeps the working directory off sys.path, as for the console script: a workspace's
`zoo/` directory must not shadow the `zoo` package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from ops.cli import app, command_for

HEAVY = ("scipy", "polars", "numpy", "pyarrow", "openai", "aiohttp", "apscheduler", "prometheus_client", "jsonschema",
         "scorer.sequential", "scorer.service", "shadow.runner", "ops.daemon", "ops.supervise", "rich.progress")
"""Modules only a command that computes, serves, calls a model or draws a progress bar needs."""
NOT_FOR_HELP = ("duckdb",)
"""Help opens no database either."""

PROBE = """
import contextlib, io, json, sys
from ops.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    for argv in json.loads(sys.argv[1]):
        try:
            main(argv)
        except SystemExit:
            pass
print(json.dumps(sorted(sys.modules)))
"""


def imported_after(commands: list[list[str]], cwd: Path) -> set[str]:
    done = subprocess.run([sys.executable, "-P", "-c", PROBE, json.dumps(commands)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return [name for name in names if name in modules]


HELP_COMMANDS = [
    [], ["--help"], ["leaderboard", "--help"], ["report", "--help"], ["replay", "--help"], ["export", "--help"],
    ["requests", "--help"], ["serve", "--help"], ["daemon", "--help"], ["zoo", "train", "--help"],
    ["zoo", "runs", "--help"], ["variants", "--help"], ["ingest", "traffic", "--help"], ["demo", "--help"],
    ["migrate", "--help"],
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "(none)")
def test_help_loads_no_heavy_library_and_no_database(command: list[str], tmp_path: Path) -> None:
    assert loaded(imported_after([command], tmp_path), HEAVY + NOT_FOR_HELP) == []


def test_listing_variants_loads_no_heavy_library(cli, workspace_dir: Path) -> None:
    assert cli("zoo", "register", "--all-active").code == 0
    modules = imported_after([["variants", "list"], ["variants", "list", "--json"]], workspace_dir)
    assert "duckdb" in modules  # it did read the registry
    assert loaded(modules, HEAVY) == []


def _callbacks(group: typer.Typer):
    if group.registered_callback is not None:
        yield group.registered_callback.callback
    yield from (command.callback for command in group.registered_commands)
    for sub in group.registered_groups:
        yield from _callbacks(sub.typer_instance)


def test_no_command_leaves_typer_annotations_to_evaluate_from_strings_on_every_run() -> None:
    postponed = [f"{callback.__module__}.{callback.__qualname__}: {name}" for callback in _callbacks(app)
                 for name, annotation in callback.__annotations__.items() if isinstance(annotation, str)]
    assert postponed == []


@pytest.mark.parametrize(("argv", "converted"), [
    (["variants", "list"], {"variants"}), (["-w", "ws", "promote", "a", "b"], {"promote"}),
    (["--workspace=ws", "zoo", "list", "--help"], {"zoo"}), (["-wws", "leaderboard", "-h"], {"leaderboard"}),
])
def test_a_run_that_names_its_command_converts_only_that_command(argv: list[str], converted: set[str]) -> None:
    assert set(command_for(argv).commands) == converted


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h", "leaderboard"], ["-w", "variants"], ["varients", "list"]],
                         ids=str)
def test_help_and_an_unknown_command_get_every_command(argv: list[str]) -> None:
    every = ({info.name or typer.main.get_command_name(info.callback.__name__) for info in app.registered_commands}
             | {g.name for g in app.registered_groups})
    assert set(command_for(argv).commands) == every and len(every) > 20


FREEZE_PROBE = """
import contextlib, gc, io, sys
from ops.cli import main
in_process = sys.argv[1] == "in-process"
sys.argv[1:] = ["--help"]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"]) if in_process else main()
    except SystemExit:
        pass
print(gc.get_freeze_count())
"""


@pytest.mark.parametrize(("how", "frozen"), [("console-script", True), ("in-process", False)])
def test_only_the_console_script_freezes_what_it_loaded_before_the_command_runs(
        how: str, frozen: bool, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-P", "-c", FREEZE_PROBE, how], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (int(done.stdout.splitlines()[-1]) > 10_000) is frozen
