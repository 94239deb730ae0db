"""`shadowzoo export`: a slot's requests, answers, metric values and labels, as a file.

Without a daemon the command opens the database and writes the file itself; while the
daemon runs, the same operation is a daemon job that writes the file, only inside the
workspace (the daemon writes nowhere else), and the command follows its progress.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.cli_options import since_option, version_id as named_version
from ops.output import console, print_json, say
from ops.session import session
from scorer.exportformat import ExportFormat

if TYPE_CHECKING:
    from scorer.export import ExportOptions, ExportProgress


def export(
    ctx: typer.Context,
    slot: Annotated[str, typer.Option("--slot", help="The slot whose answers to export.")],
    out: Annotated[Path, typer.Option("--out", help="The file to write (replaced when complete).", dir_okay=False)],
    output_format: Annotated[ExportFormat, typer.Option(
        "--format", help="jsonl, parquet or csv (one row per answer), or openai-chat (fine-tuning examples).")
    ] = ExportFormat.jsonl,
    since: since_option("Only requests received since then") = None,
    version: Annotated[str | None, typer.Option(
        "--version", help="Only this version's answers, by id or unique label (openai-chat: the answers to train on).")
    ] = None,
    labelled: Annotated[bool, typer.Option("--labelled", help="Only requests with a label.")] = False,
    answer: Annotated[str, typer.Option(
        "--answer", help="openai-chat: the assistant's turn is the version's answer (version) or the label (label).")
    ] = "version",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of text.")] = False,
) -> None:
    """Export a slot's answers for offline evaluation, analysis and fine-tuning.

    One row per (request, answer): the champion's live answer and every replayed one, with
    the request as captured (redacted), its latest label, each metric's value, and the
    answer's quality, cost_usd, latency_cost and net as the leaderboard scores them.
    openai-chat writes one chat fine-tuning example per request: the request's messages
    and, as the assistant's turn, the --version's successful answer (text and tool calls)
    or, with --answer label, the label. Rows stream, so memory stays bounded at any size.
    While the daemon runs, it writes the file, which must then lie inside the workspace.

    Example: shadowzoo export --slot support-triage --since 14d --labelled --format parquet --out answers.parquet
    """
    with session(ctx).operations() as operations, _progress_bar(not as_json) as update:
        options = _options(slot=slot, format=output_format, since=since, labelled=labelled, answer=answer,
                           version=version and named_version(operations, version, slot, "--version"))
        summary = operations.export(options, str(out.resolve()), progress=update)
    if as_json:
        print_json(summary)
    else:
        say(f"wrote {summary.rows:,} rows of {summary.requests_total:,} requests to {Path(summary.path).resolve()} "
            f"({summary.format}, {summary.bytes:,} bytes)")


def _options(**fields: object) -> "ExportOptions":
    """The options, or a usage error naming the option at fault."""
    from pydantic import ValidationError

    from registry.errors import first_problem
    from scorer.export import ExportOptions

    if fields["answer"] not in ("version", "label"):
        raise typer.BadParameter(f"{fields['answer']!r}: expected version or label", param_hint="--answer")
    try:
        return ExportOptions(**fields)
    except ValidationError as exc:
        raise typer.BadParameter(first_problem(exc).expected) from None


@contextmanager
def _progress_bar(show: bool) -> "Iterator[Callable[[ExportProgress], None]]":
    """A bar of requests exported / all, with the rows so far (a no-op when hidden)."""
    if not show:
        yield lambda progress: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TextColumn("requests, {task.fields[rows]} rows"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("export", total=None, rows="0")
        yield lambda p: bar.update(task, total=p.requests_total, completed=p.requests_done, rows=f"{p.rows:,}")
