"""`shadowzoo ingest traffic|outcomes FILE`: load JSONL an application logged itself.

The file's records go into the spool as segments, exactly as captures do; then the
`ingest` operation takes the spool into the database (a running daemon's job, or here
when none runs) and the command prints what it did, the same either way.
"""

from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.output import error_console, print_json, say, warn
from ops.session import session

if TYPE_CHECKING:
    from rich.progress import Progress

    from shadow.ingest import IngestReport
    from shadow.logfile import LineProgress
    from shadow.spool_records import SpoolRecord

    Reader = Callable[[LineProgress], Iterator[SpoolRecord]]

app = typer.Typer(
    help="Load JSONL files into the spool and ingest them: request/response logs and outcomes.",
    no_args_is_help=True,
)

FileArgument = Annotated[
    Path, typer.Argument(help="A JSON Lines file.", exists=True, dir_okay=False, readable=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a summary.")]


@app.command()
def traffic(
    ctx: typer.Context,
    file: FileArgument,
    slot: Annotated[str | None, typer.Option("--slot", help="Slot of the lines that do not name one.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Load an OpenAI request/response log: one {slot, request, response, latency_ms} per line.

    Optional per line: request_id, client_request_id, received_at (ISO time), error. A bad
    line stops the load before anything is written; loading a file twice stores nothing twice.

    Example: shadowzoo ingest traffic calls.jsonl --slot support-triage
    """
    from shadow.logfile import read_traffic_log

    slots = session(ctx).workspace().config.slots
    _load(ctx, file, lambda progress: read_traffic_log(file, slot, slots, progress=progress), as_json)


@app.command()
def outcomes(ctx: typer.Context, file: FileArgument, as_json: JsonOption = False) -> None:
    """Load labels and reactions: {request_id, label} or {request_id, kind, value} per line.

    `client_request_id` may key a line instead of `request_id`. Outcomes whose request is
    not ingested yet are kept, and joined when it arrives.

    Example: shadowzoo ingest outcomes labels.jsonl
    """
    from shadow.logfile import read_outcome_log

    _load(ctx, file, lambda progress: read_outcome_log(file, progress=progress), as_json)


def _load(ctx: typer.Context, file: Path, read: "Reader", as_json: bool) -> None:
    """Spool the file's records (all or none), ingest the spool, and say what happened."""
    from shadow.logfile import spool_records
    from shadow.redaction import Redactor
    from shadow.shipper import ship_now
    from shadow.spool import spool_dir

    workspace = session(ctx).workspace()
    with _progress() as bars:
        reading = bars.add_task(f"reading {file.name}", total=file.stat().st_size)
        records = Redactor.for_workspace(workspace).apply_all(read(lambda size: bars.advance(reading, size)))
        spooled = spool_records(records, spool_dir(workspace.state_dir))
        ship_now(workspace, spooled.segments)
        bars.remove_task(reading)
        ingesting = bars.add_task("ingesting", total=None)
        with session(ctx).operations() as operations:
            report = operations.ingest(progress=lambda p: bars.update(ingesting, completed=p.done, total=p.total))
    if as_json:
        print_json({"file": str(file), "records": spooled.records, "segments_written": len(spooled.segments),
                    "ingest": asdict(report)})
    else:
        say(f"read {spooled.records} record(s) from {file} into {len(spooled.segments)} spool segment(s)")
        say(_summary(report))
    for name, reason in report.quarantined:
        warn(f"spool segment {name} quarantined: {reason}")


def _progress() -> "Progress":
    """Progress bars on stderr, shown only on a terminal and cleared when done."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn(),
        console=error_console, transient=True, disable=not error_console.is_terminal,
    )


def _summary(report: "IngestReport") -> str:
    return (
        f"ingested {report.segments} segment(s): {report.traffic_rows} traffic row(s), "
        f"{report.outcome_rows} outcome row(s), {report.duplicates} duplicate(s) ignored, "
        f"{report.joined_outcomes} outcome(s) joined to their traffic"
    )
