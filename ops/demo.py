"""`shadowzoo demo`: the walkthrough of the README, run for real in a fresh workspace.

Each step is the very CLI command a user would type, printed before it runs. The demo
grows with shadowzoo: it always runs the most complete offline loop that exists.
"""

from __future__ import annotations

import json
import shlex
import shutil
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

from ops.output import say
from ops.workspace_init import init_workspace
from registry import ShadowzooError

DEMO_MARKER = ".shadowzoo-demo"


def run_demo(directory: Path) -> None:
    """Create the demo workspace at `directory` (replacing an earlier demo's) and walk through it."""
    _fresh(directory)
    init_workspace(directory)
    (directory / DEMO_MARKER).write_text("created by `shadowzoo demo`; safe to delete\n")
    ws = ["-w", str(directory)]
    _step(ws, "zoo", "list")
    _step(ws, "zoo", "validate")
    _step(ws, "zoo", "register", "--all-active")
    ids = {v["label"]: v["version_id"] for v in json.loads(_quiet(ws, "variants", "list", "--json"))}
    _step(ws, "variants", "list", "--slot", "support-triage")
    _step(ws, "variants", "diff", ids["baseline"], ids["careful-large"])
    _step(ws, "promote", "support-triage", ids["baseline"], "--reason", "initial champion")
    _step(ws, "promote", "support-triage", ids["careful-large"], "--force", "--reason", "try the careful skill")
    _step(ws, "rollback", "support-triage", "--reason", "demo: back to the baseline")
    _step(ws, "retire", ids["flash"], "--reason", "demo: too error-prone")
    _step(ws, "history", "support-triage")
    say(f"\n[bold]Done.[/bold] The workspace is in {directory}; try `shadowzoo -w {directory} variants list`.")


def _fresh(directory: Path) -> None:
    """Remove an earlier demo workspace; never touch a directory the demo did not create."""
    if not directory.exists():
        return
    if not (directory / DEMO_MARKER).exists():
        raise ShadowzooError(f"{directory} exists and was not created by `shadowzoo demo`; pass --dir elsewhere")
    shutil.rmtree(directory)


def _step(ws: list[str], *args: str) -> None:
    say(f"\n[bold cyan]$ shadowzoo {shlex.join(args)}[/bold cyan]")
    _run([*ws, *args])


def _quiet(ws: list[str], *args: str) -> str:
    buffer = StringIO()
    with redirect_stdout(buffer):
        _run([*ws, *args])
    return buffer.getvalue()


def _run(argv: list[str]) -> None:
    """Run one CLI command in this process; a failing step fails the demo."""
    from ops.cli import main  # the CLI imports this module: import at call time

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code:
        raise ShadowzooError(f"demo step failed (exit {code}): shadowzoo {shlex.join(argv)}")
