"""`shadowzoo replay | pause | resume`: replaying captured traffic, and stopping shadow spend."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from ops.cli_options import JsonOption, since_option, version_id as named_version
from ops.output import console, print_json, print_table, say, warn
from ops.session import actor_name, session

if TYPE_CHECKING:
    from shadow.runner import RunReport, VersionCounts

VersionArgument = Annotated[str | None, typer.Argument(help="The challenger's version id or unique label.")]
AllOption = Annotated[bool, typer.Option("--all", help="All shadow spend, every slot and challenger.")]


def replay(
    ctx: typer.Context,
    slot: Annotated[str, typer.Option("--slot", help="The slot whose traffic to replay.")],
    since: since_option("Only traffic received since then") = None,
    version: Annotated[str | None, typer.Option("--version", help="Only this challenger (version id or unique label).")] = None,
    include_old: Annotated[bool, typer.Option(
        "--include-old", help="Also replay requests that cannot count in the current evaluation period.")] = False,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="Run errored pairs (and those not run for a config reason) again, replacing them.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Replay captured traffic against the slot's challengers now: a one-shot backfill.

    Every sampled (request, challenger) pair without a result that can count in the slot's
    current evaluation period is run once, under the providers' limits and the slot's daily
    budget. Requests received before the period (or before the challenger was registered)
    and requests answered by another champion are counted and left alone, unless
    --include-old. Interrupted, it continues where it stopped when run again, and never
    answers a pair twice. Calls not made (paused challenger, budget reached, configuration)
    are recorded as not run, with the reason. --retry-errors runs errors and configuration
    not-runs again and replaces them (the scorer then rebuilds the period's evidence): use it
    once their cause is fixed; it gives a challenger's own upstream failures a second
    chance the champion never had.

    Example: shadowzoo replay --slot support-triage --since 14d --retry-errors
    """
    with session(ctx).operations() as operations, _progress_bar(not as_json) as update:
        version = version and named_version(operations, version, slot, "--version")
        try:
            report = operations.replay(slot, since, version, include_old, retry_errors, progress=update)
        except KeyboardInterrupt:
            warn("interrupted: the results so far are saved; run the same command again to continue")
            raise typer.Exit(130) from None
    if as_json:
        print_json(report)
        return
    _print_report(slot, report)


def pause(
    ctx: typer.Context,
    version_id: VersionArgument = None,
    all_: AllOption = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, recorded with the pause.")] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who is pausing (default: $USER).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Stop shadow calls to one challenger, or all shadow spend with --all; the champion is never affected.

    While paused, the challenger's work is recorded as not run, with this pause as the
    reason, and the scorer leaves it out.

    Example: shadowzoo pause flash-20261121-9c8d7e6f --reason "provider incident"
    """
    _check_target(version_id, all_)
    with session(ctx).operations() as operations:
        target = version_id and named_version(operations, version_id)
        made = operations.pause(target, actor_name(actor), reason)
    if as_json:
        print_json(made)
    else:
        say(made.describe())


def resume(
    ctx: typer.Context,
    version_id: VersionArgument = None,
    all_: Annotated[bool, typer.Option("--all", help="Lift the pause of all shadow spend.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Let shadow calls run again for one challenger, or lift the pause set with `pause --all`.

    Work recorded as not run while paused stays so; new work runs. Pauses of single
    challengers outlive `resume --all`, and are listed.

    Example: shadowzoo resume flash-20261121-9c8d7e6f
    """
    _check_target(version_id, all_)
    with session(ctx).operations() as operations:
        target = version_id and named_version(operations, version_id)
        lifted = operations.resume(target)
        remaining = operations.pauses()
    if as_json:
        print_json({"resumed": lifted, "still_paused": remaining})
        return
    what = target or "all shadow spend"
    say(f"resumed {what}" if lifted else f"{what} was not paused")
    for still in remaining:
        say(f"still paused: {still.describe()}")


@contextmanager
def _progress_bar(show: bool) -> "Iterator[Callable[[RunReport], None]]":
    """A progress callback that first says what is skipped, then draws a bar of done / total with
    the counts so far (a no-op when hidden)."""
    if not show:
        yield lambda report: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    told = False
    columns = (
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("replay", total=None, counts="")

        def update(report: "RunReport") -> None:
            nonlocal told
            if not told:
                told = True
                for line in _skipped_lines(report):
                    warn(line)
            counts = f"ok {report.ok}  error {report.error}  not run {report.not_run}"
            bar.update(task, total=report.total, completed=report.done, counts=counts)

        yield update


def _skipped_lines(report: "RunReport") -> list[str]:
    """What the replay leaves out because it cannot count, and how to replay it anyway."""
    from shadow.pending import BEFORE_PERIOD, NO_CHAMPION, OTHER_CHAMPION

    lines = []
    if before := report.skipped.get(BEFORE_PERIOD):
        lines.append(f"{before} requests predate the current evaluation period (or the challenger's registration): "
                     "not replayed, their answers cannot count (--include-old replays them anyway)")
    if other := report.skipped.get(OTHER_CHAMPION):
        lines.append(f"{other} requests were answered by another champion than the current one: not replayed, "
                     "they can never pair (--include-old replays them anyway)")
    if none := report.skipped.get(NO_CHAMPION):
        lines.append(f"{none} requests were received when the slot had no champion: not replayed, "
                     "they can never pair (--include-old replays them anyway)")
    return lines


def _print_report(slot: str, report: "RunReport") -> None:
    if not report.total:
        say(f"nothing to replay for slot {slot!r}: every sampled request that can count has a result "
            "from every challenger")
        return
    print_table(
        None,
        ["challenger", "ok", "error", "not run", "cost (USD)"],
        [[v, c.ok, c.error, c.not_run, _cost(c)] for v, c in sorted(report.versions.items())],
    )
    say(f"replayed {slot}: {report.summary()}")
    if report.not_run_reasons.get("paused"):
        warn("paused challengers were not run; see `shadowzoo resume --help`")
    if report.not_run_reasons.get("config"):
        warn(f"{report.not_run_reasons['config']} calls could not reach their variant as configured (provider, key, "
             f"model or python entrypoint); once fixed, `shadowzoo replay --slot {slot} --retry-errors` runs them again")
    if report.not_run_reasons.get("budget"):
        warn(f"the daily shadow budget of slot {slot!r} was reached (slots.{slot}.shadow.daily_budget_usd)")


def _cost(counts: "VersionCounts") -> str:
    """The known cost, and how many answers had none (an unpriced model)."""
    if counts.unpriced and counts.unpriced == counts.ok + counts.error:
        return "unpriced"
    return f"{counts.cost_usd:.4f}" + (f" (+{counts.unpriced} unpriced)" if counts.unpriced else "")


def _check_target(version_id: str | None, all_: bool) -> None:
    """Exactly one of a version and --all must be given."""
    if (version_id is None) == (not all_):
        raise typer.BadParameter("name one challenger's version id or label, or pass --all (not both)")

