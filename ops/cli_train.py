"""`shadowzoo zoo train` and `shadowzoo zoo runs`: train specs' skills, and list training runs.

Specs train one at a time; a failing spec never stops the rest, and the command exits 1 if
any failed. A trained skill is registered as a challenger: the champion never changes here.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from ops.cli_options import JsonOption
from ops.output import fail, print_json, print_table, say
from ops.session import session
from registry import ShadowzooError

if TYPE_CHECKING:
    from zoo import SpecFile, Zoo
    from ops.client import RemoteOperations

SpecOption = Annotated[str | None, typer.Option("--spec", help="The spec to train, by name.")]


def train(
    ctx: typer.Context,
    spec: SpecOption = None,
    all_active: Annotated[bool, typer.Option("--all-active", help="Train every active spec with a train: block.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="With --all-active: at most this many specs.")] = None,
) -> None:
    """Train a spec's skill and register the best one as a challenger; resumes an interrupted run.

    Example: shadowzoo zoo train --spec careful-mini
    """
    if (spec is None) == (not all_active):
        raise typer.BadParameter("pass --spec NAME or --all-active (one of them)")
    from ops.client import RemoteOperations
    from ops.jobs import JobRequest
    from zoo.train.outcome import Register
    from zoo import load_zoo
    from zoo.train.run import train_spec

    workspace = session(ctx).workspace()
    zoo = load_zoo(workspace.specs_dir)
    chosen = _trainable(zoo)[:limit] if all_active else _named(zoo, spec or "")
    with session(ctx).operations() as store:
        if isinstance(store, RemoteOperations):
            _train_in_daemon(store, JobRequest(kind="train", spec=spec, all_active=all_active, limit=limit))
            return
        registry = Register(store, store.register)
        results = [train_spec(spec_file, zoo, workspace, registry, store.registry.database, say) for spec_file in chosen]
    _report([f"{r.spec}: {r.status}" + (f", registered {r.version_id}" if r.version_id else "") for r in results if r.ok],
            [f"{r.spec}: {r.reason}" for r in results if not r.ok])


def _train_in_daemon(store: RemoteOperations, request: JobRequest) -> None:
    """The daemon owns the database: it trains, and this follows the job's progress lines."""
    shown: list[str] = []

    def follow(job) -> None:
        line = job.progress.get("last")
        if line and (not shown or shown[-1] != line):
            shown.append(line)
            say(line)

    job = store.run_job(request, progress=follow)
    if job.state == "failed":
        raise ShadowzooError(f"training failed in the daemon: {job.error}")
    _report(job.result["trained"], job.result["failed"])


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


def _trainable(zoo: Zoo) -> list[SpecFile]:
    return [s for s in zoo.specs if s.spec.status == "active" and s.spec.train is not None]


def _named(zoo: Zoo, name: str) -> list[SpecFile]:
    matches = zoo.named(name)
    if not matches:
        known = ", ".join(sorted(s.spec.name for s in zoo.specs)) or "none"
        raise ShadowzooError(f"no spec named {name!r} in the zoo (specs: {known})")
    return matches


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
