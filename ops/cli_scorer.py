"""`shadowzoo leaderboard` and `shadowzoo report`: what the evidence says, for people and for PRs."""

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.cli_options import since_option
from ops.output import console, print_json, print_table, say, warn
from ops.session import session

if TYPE_CHECKING:
    from scorer.leaderboard_model import Leaderboard

STATUS_STYLE = {"ready": "green", "worse": "red", "guardrail": "yellow", "champion": "bold"}
"""Rich styles of the statuses an operator should notice (keys are `scorer.leaderboard_model.Status` values)."""


class Format(StrEnum):
    table = "table"
    json = "json"
    md = "md"
    html = "html"


SlotOption = Annotated[str, typer.Option("--slot", help="The slot to score.")]
SinceOption = since_option("Descriptive columns from then on (readiness always uses the current period)")
WhereOption = Annotated[
    list[str] | None,
    typer.Option("--where", metavar="KEY=VALUE", help="Only requests with this tag (repeat to require several): "
                 "a slice, paired on its own α share; e.g. --where user=u-17 --where metadata.team=billing."),
]


def leaderboard(
    ctx: typer.Context,
    slot: SlotOption,
    output_format: Annotated[Format, typer.Option("--format", help="table, json, md or html.")] = Format.table,
    since: SinceOption = None,
    where: WhereOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (the same as --format json).")] = False,
) -> None:
    """Rank every variant of a slot, net of cost, with paired always-valid intervals.

    Per variant, champion first: n, mean quality, cost per 1k requests, p50/p95 latency,
    error rate, net value per 1k, the paired net difference per request against the
    champion with its interval, and a status (ready, ready (shadow only) for python
    variants, collecting, worse, guardrail, price unknown, paused). Ready is advice:
    `shadowzoo promote` acts on it. Below the table: whether the p95 latency guardrail
    was applied, and why not. With --where, every number covers the slice: the requests
    carrying those tags (explicit ones, `user`, `metadata.<key>`), paired at the slice's
    own α share; a slice view is never stored and recommends nothing.

    Example: shadowzoo leaderboard --slot support-triage --format md
    """
    from scorer.report import render_html, render_markdown

    if as_json and output_format not in (Format.table, Format.json):
        raise typer.BadParameter(f"--json prints JSON; it cannot go with --format {output_format}", param_hint="--json")
    output_format = Format.json if as_json else output_format
    with session(ctx).operations() as operations:
        board = operations.score(slot, since=since, where=_where(where))
        history = operations.evidence_history(slot) if output_format == Format.html else []
    if output_format == Format.json:
        print_json(board)
    elif output_format == Format.md:
        console.print(render_markdown(board), markup=False, highlight=False)
    elif output_format == Format.html:
        print(render_html(board, history))
    else:
        _print_board(board)


def report(
    ctx: typer.Context,
    slot: SlotOption,
    out: Annotated[Path, typer.Option("--out", help="File to write: .html or .htm for the page, .md for Markdown.",
                                      dir_okay=False)] = Path("report.html"),
    since: SinceOption = None,
    where: WhereOption = None,
) -> None:
    """Write a self-contained report: leaderboard, quality vs cost with the Pareto frontier,
    net differences with interval bars, and cumulative evidence inside its confidence band.

    Example: shadowzoo report --slot support-triage --out report.html
    """
    from registry.errors import ConfigError
    from scorer.report.files import report_format, write_report

    try:
        chosen = report_format(out)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    with session(ctx).operations() as operations:
        report = operations.report(slot, chosen, since, _where(where))
    write_report(out, report.text)
    say(f"wrote {out.resolve()}")


def _where(items: list[str] | None) -> dict[str, str] | None:
    """The --where conditions, or a usage error naming the one that is not KEY=VALUE."""
    from shadow.tags import parse_where

    try:
        return parse_where(items or []) or None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--where") from None


def _print_board(board: "Leaderboard") -> None:
    from scorer.report import format_interval, judge_note, usd
    from shadow.tags import where_text

    since = f"{board.period_started_at:%Y-%m-%d %H:%M} UTC" if board.period_started_at else "-"
    title = f"{board.slot}: evaluation period {board.period_id or '-'}, since {since}"
    if board.slice is not None:
        title += f", slice {where_text(board.slice.where)}"
    print_table(
        title,
        ["version", "status", "n", "not run", "quality", "cost/1k", "p50/p95 ms", "errors", "net/1k",
         "Δ net per request [interval]", "pairs"],
        [
            [r.version_id, f"[{STATUS_STYLE.get(r.status, '')}]{r.display_status}[/]" if r.status in STATUS_STYLE else r.display_status,
             r.n, r.not_run if r.role == "challenger" else "-", _number(r.mean_quality, 3), usd(r.cost_per_1k_usd), _latency(r), _percent(r.error_rate),
             usd(r.net_per_1k_usd), format_interval(r.comparison.net) if r.comparison else "-",
             r.comparison.pairs if r.comparison else "-"]
            for r in board.rows
        ],
    )
    if board.slice is not None:
        console.print(board.slice.note, markup=False, highlight=False)
    else:
        say(f"recommendation: [bold]{board.recommendation}[/bold]" if board.recommendation
            else "recommendation: none yet (no promotable challenger is ready)")
    if board.latency_guardrail:
        say(board.latency_guardrail)
    for judge in board.judges:
        if judge.budget_reached or judge.unjudged:
            warn(judge_note(judge))


def _number(value: float | None, places: int) -> str:
    return "-" if value is None else f"{value:.{places}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _latency(row) -> str:
    if row.p50_latency_ms is None:
        return "-"
    return f"{row.p50_latency_ms:.0f}/{row.p95_latency_ms:.0f}"
