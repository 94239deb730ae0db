"""The `shadowzoo` command line: the operator's surface.

Exit codes: 0 on success, 1 on failure (the message says what and why), 2 on a usage
error. No command prints a traceback for bad input; set SHADOWZOO_DEBUG=1 to see one for
an unexpected failure.

The command modules (`ops/cli*.py`) do not postpone annotations (no `from __future__ import
annotations`): typer reads every command's parameters each time it builds the command tree,
on every run, and evaluating them from strings was most of that cost. A name imported only
for type checking is quoted where a helper's annotation uses it.
"""

import gc
import inspect
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from ops import (
    cli_champion, cli_export, cli_ingest, cli_inspect, cli_migrate, cli_scorer, cli_services, cli_shadow, cli_status,
    cli_train, cli_variants, cli_zoo,
)
from ops.output import fail, say
from ops.session import Session
from registry.errors import ShadowzooError

app = typer.Typer(
    name="shadowzoo",
    help=(
        "Champion/challenger evaluation for LLM skills and model variants.\n\n"
        "Start with `shadowzoo init my-ws && cd my-ws`, then `shadowzoo zoo list`."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
cli_zoo.app.command("train")(cli_train.train)
cli_zoo.app.command("runs")(cli_train.runs)
app.add_typer(cli_zoo.app, name="zoo")
cli_variants.app.command("reactivate")(cli_champion.reactivate)
app.add_typer(cli_variants.app, name="variants")
app.add_typer(cli_ingest.app, name="ingest")
for command in (
    cli_champion.promote, cli_champion.rollback, cli_champion.retire, cli_champion.history, cli_inspect.trace,
    cli_inspect.requests,
    cli_scorer.leaderboard, cli_scorer.report, cli_services.serve, cli_services.daemon, cli_services.gateway,
    cli_status.status, cli_status.stop, cli_status.forget_host, cli_services.sim, cli_shadow.replay, cli_shadow.pause, cli_shadow.resume,
    cli_export.export, cli_migrate.migrate,
):
    app.command()(command)


@app.callback()
def root(
    ctx: typer.Context,
    workspace: Annotated[
        Path,
        typer.Option(
            "--workspace", "-w", envvar="SHADOWZOO_WORKSPACE", help="Workspace directory (holds shadowzoo.yaml).",
            file_okay=False,
        ),
    ] = Path("."),
) -> None:
    """Champion/challenger evaluation for LLM skills and model variants."""
    ctx.obj = Session(workspace_dir=workspace)


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="New or empty directory for the workspace.")]) -> None:
    """Create a workspace: config, example specs and skills for the `support-triage` slot.

    Example: shadowzoo init demo-ws && cd demo-ws && shadowzoo zoo list
    """
    from ops.workspace_init import init_workspace

    root_dir = init_workspace(directory)
    say(f"created workspace {root_dir}")
    say(f"next: cd {directory} && shadowzoo zoo validate && shadowzoo zoo register --all-active")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the demo workspace.")] = Path("demo-ws"),
    requests: Annotated[int, typer.Option("--requests", min=50, help="Requests to send through the gateway.")] = 2000,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="Leave the simulator and serve running.")] = False,
) -> None:
    """Run the whole loop offline in a fresh demo workspace (what `make demo` runs).

    Starts the bundled simulator and `serve`, registers a champion and four challengers,
    sends traffic through the gateway with the openai client, posts delayed labels, waits
    for replay and scoring, prints the leaderboard, writes report.html, and prints the
    promote command the evidence supports.

    Example: shadowzoo demo --dir /tmp/demo-ws --keep-running
    """
    from ops.demo import run_demo

    run_demo(directory, requests, keep_running)


def reflow_help(app: typer.Typer) -> None:
    """Join each help paragraph's lines, so the terminal wraps the text once.

    Docstrings are wrapped for the source; typer keeps their line breaks and rich then
    wraps every line again, leaving ragged half-lines at any width. Paragraphs (blank-line
    separated) stay apart; one starting with \\b is kept verbatim, as click does.
    """
    for info in app.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = _reflowed(inspect.getdoc(info.callback) or "")
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def _reflowed(text: str) -> str:
    return "\n\n".join(
        paragraph if paragraph.startswith("\b") else " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in text.split("\n\n")
    )


reflow_help(app)


WORKSPACE_OPTIONS = ("-w", "--workspace")
"""The root's one option with a value; any other root option (help, completion) needs the whole tree."""


def command_for(argv: list[str]) -> typer.core.TyperGroup:
    """The click command tree that runs `argv`: with only the top-level command `argv` names, when it names one.

    typer converts every command it is given on every run (its parameters, types and help),
    so a run that names its command converts only that one, or that group. Anything else
    (help, no command, an unknown name) gets the whole tree, with its listing and suggestions.
    """
    name = _requested_command(argv)
    commands, groups = app.registered_commands, app.registered_groups
    chosen = [c for c in commands if _command_name(c) == name], [g for g in groups if g.name == name]
    if any(chosen):
        app.registered_commands, app.registered_groups = chosen
    try:
        return typer.main.get_command(app)
    finally:
        app.registered_commands, app.registered_groups = commands, groups


def _requested_command(argv: list[str]) -> str | None:
    """The command `argv` names after nothing but workspace options, else None."""
    tokens = iter(argv)
    for token in tokens:
        if token in WORKSPACE_OPTIONS:
            next(tokens, None)
        elif not token.startswith("-"):
            return token
        elif not token.startswith(("-w", "--workspace=")):
            return None
    return None


def _command_name(info: typer.models.CommandInfo) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors exit 2 (typer's own handling), failures exit 1 with a message.

    Started as the console script (no `argv`), it first freezes what is loaded so far: the
    modules and the command definitions live as long as the process, so the collections
    that the command's own imports set off need not walk them again and again. A caller
    in process keeps its collector as it was.
    """
    if argv is None:
        gc.freeze()
    args = sys.argv[1:] if argv is None else argv
    try:
        command_for(args).main(args=args, prog_name="shadowzoo")
    except ShadowzooError as exc:
        fail(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - last resort: a message, not a traceback
        if os.environ.get("SHADOWZOO_DEBUG"):
            traceback.print_exc()
        fail(f"unexpected {type(exc).__name__}: {exc} (set SHADOWZOO_DEBUG=1 for a traceback)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
