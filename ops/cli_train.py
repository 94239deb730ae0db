"""`shadowzoo zoo train` and `shadowzoo zoo runs`: train specs' skills, and list training runs.

Specs train one at a time; a failing spec never stops the rest, and the command exits 1 if
any failed. A trained skill is registered as a challenger: the champion never changes here.
"""

import json
from collections.abc import Callable
from typing import Annotated

import typer

from ops.cli_options import JsonOption
from ops.output import fail, print_json, print_table, say
from ops.session import session

SpecOption = Annotated[str | None, typer.Option("--spec", help="The spec to train, by name.")]


def train(
    ctx: typer.Context,
    spec: SpecOption = None,
    all_active: Annotated[bool, typer.Option("--all-active", help="Train every active spec with a train: block.")] = False,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="With --all-active: at most this many specs, the least recently trained first.")] = None,
) -> None:
    """Train a spec's skill and register the best one as a challenger; resumes an interrupted run.

    Example: shadowzoo zoo train --spec careful-mini
    """
    if (spec is None) == (not all_active):
        raise typer.BadParameter("pass --spec NAME or --all-active (one of them)")
    with session(ctx).operations() as operations:
        result = operations.train(spec, all_active, limit, progress=_new_lines())
    _report(result.trained, result.failed)


def _new_lines() -> Callable[[str], None]:
    """Say each progress line once (a followed daemon job reports its latest line at every look)."""
    last: list[str] = []

    def show(line: str) -> None:
        if line and last != [line]:
            last[:] = [line]
            say(line)

    return show


RUN_FIELDS = {"spec": "spec", "run": "run", "status": "status", "units": "done", "base": "base_score",
              "best": "best_score", "registered": "version_id", "reason": "reason"}
"""`zoo runs` columns (and --json keys), and the run state's key each shows."""


def runs(ctx: typer.Context, spec: SpecOption = None, as_json: JsonOption = False) -> None:
    """List training runs, newest first, with their status and result.

    With --json: a list of {"spec", "run", "status", "units", "base", "best", "registered", "reason"}.

    Example: shadowzoo zoo runs --spec careful-mini
    """
    root = session(ctx).workspace().state_dir / "train"
    rows = []
    for state_path in sorted(root.glob("*/*/state.json"), key=lambda p: p.parent.name, reverse=True):
        if spec is not None and state_path.parent.parent.name != spec:
            continue
        state = {**json.loads(state_path.read_text()), "spec": state_path.parent.parent.name, "run": state_path.parent.name}
        rows.append({column: state.get(key) for column, key in RUN_FIELDS.items()} | {"reason": state.get("reason") or None})
    if as_json:
        print_json(rows)
    else:
        print_table(None, list(RUN_FIELDS), [list(row.values()) for row in rows])


def _report(trained: list[str], failed: list[str]) -> None:
    """One line per spec, a summary, and exit 1 if any failed."""
    for line in trained:
        say(line)
    for line in failed:
        fail(line)
    names = ", ".join(line.split(":", 1)[0] for line in failed)
    say(f"{len(trained)} succeeded, {len(failed)} failed" + (f" ({names})" if failed else ""))
    if failed:
        raise typer.Exit(1)
