"""`shadowzoo trace` and `shadowzoo requests`: looking inside single requests."""

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from ops.cli_options import JsonOption, since_option, version_id as named_version
from ops.output import print_json, print_table, say
from ops.session import session

if TYPE_CHECKING:
    from scorer.browse import RequestPage
    from scorer.trace import AnswerTrace, RequestTrace
SHOWN_CHARS = 60
"""How much of an answer a table cell shows (the JSON has all of it)."""


def trace(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="shadowzoo's request id, or the client's own request id.")],
    slot: Annotated[str | None, typer.Option("--slot", help="The slot, when a client request id names several requests.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show one request: what it asked, what every variant answered, and how each answer scored.

    The request as stored (after redaction); the champion's answer and each challenger's (or
    why it was not run); tool calls; each metric's value; the labels; cost, latency cost and
    net value; the evaluation period; and whether each challenger's answer entered the pairs,
    with its differences, or why not.

    Example: shadowzoo trace szr_0123456789ab --json
    """
    with session(ctx).operations() as operations:
        traced = operations.trace(request_id, slot)
    if as_json:
        print_json(traced)
    else:
        _print_trace(traced)


def requests(
    ctx: typer.Context,
    slot: Annotated[str, typer.Option("--slot", help="The slot whose requests to list.")],
    since: since_option("Only requests received from then on") = None,
    version: Annotated[str | None, typer.Option("--version", help="Only requests this challenger was called on.")] = None,
    disagree: Annotated[str | None, typer.Option("--disagree", help="Only requests where this challenger's answer differs from the champion's.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="Only requests where the variant (else the champion or any challenger) errored.")] = False,
    worst: Annotated[str | None, typer.Option("--worst", help="Order by this challenger's paired net difference, biggest loss first.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", metavar="KEY=VALUE", help="Only requests with this tag (repeat to require several), as `leaderboard --where`.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Requests per page.")] = 20,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Start after the page that printed this cursor.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List a slot's requests, newest first: where a challenger disagrees, errs, or loses most.

    --worst orders by the paired net difference in the current evaluation period; --tag
    keeps the requests of a leaderboard slice (`leaderboard --where`). A page
    ends with the cursor of the next one; `shadowzoo trace` shows any request in full.

    Example: shadowzoo requests --slot support-triage --disagree concise-20261121-1a2b3c4d --limit 10
    """
    from shadow.tags import parse_where

    try:
        tags = parse_where(tag or [], option="--tag")
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tag") from None
    from scorer.browse import MAX_LIMIT, RequestFilter

    if limit > MAX_LIMIT:
        raise typer.BadParameter(f"{limit} is more than {MAX_LIMIT} requests a page", param_hint="--limit")
    with session(ctx).operations() as operations:
        named = {key: value and named_version(operations, value, slot, f"--{key}")
                 for key, value in (("version", version), ("disagree", disagree), ("worst", worst))}
        request = RequestFilter(slot=slot, since=since, errors=errors, tags=tags, limit=limit, cursor=cursor, **named)
        page = operations.requests(request)
    if as_json:
        print_json(page)
    else:
        _print_page(page)


def _print_trace(traced: "RequestTrace") -> None:
    client = f" (client id {traced.client_request_id})" if traced.client_request_id else ""
    say(f"[bold]{traced.request_id}[/bold]{client} · {traced.slot} · received {traced.received_at:%Y-%m-%d %H:%M:%S} UTC "
        f"· {traced.source}")
    if traced.period is not None:
        say(f"evaluation period {traced.period.period_id} (champion {traced.period.champion_version}, "
            f"since {traced.period.started_at:%Y-%m-%d %H:%M}: {traced.period.reason})")
    say(f"request: {escape(json.dumps(traced.request, ensure_ascii=False))}")
    for outcome in traced.outcomes:
        say(f"{outcome.kind}: {escape(json.dumps(outcome.value))} at {outcome.received_at:%Y-%m-%d %H:%M:%S}"
            f"{' (scored against)' if outcome.used else ''}")
    answers = [traced.champion, *traced.challengers]
    metric_names = max(([m.metric for m in a.metrics] for a in answers), key=len)
    print_table(None, ["version", "role", "status", "answer", *metric_names, "quality", "cost $", "latency ms", "net $",
                       "pair"],
                [[a.version_id, a.role, a.status, _answer_text(a), *[_metric(a, i) for i in range(len(metric_names))],
                  _number(a.quality), _number(a.cost_usd, 6), _number(a.latency_ms, 0), _number(a.net, 6), _pair(a)]
                 for a in answers])


def _answer_text(answer: "AnswerTrace") -> str:
    text = answer.output if answer.output is not None else (answer.reason or "")
    if answer.tool_calls:
        text += " " + json.dumps(answer.tool_calls, ensure_ascii=False)
    text = " ".join(text.split())
    return escape(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 1] + "…")


def _metric(answer: "AnswerTrace", index: int) -> str:
    """The answer's value of the slot's `index`-th metric (an answer that was not scored has none)."""
    if index >= len(answer.metrics):
        return "-"
    value = answer.metrics[index]
    if not value.counted:
        return "not sampled"
    return _number(value.value)


def _pair(answer: "AnswerTrace") -> str:
    if answer.pair is None:
        return "-"
    if answer.pair.entered:
        return f"Δnet {answer.pair.d_net:+.6f} (period {answer.pair.period_id})"
    return answer.pair.reason


def _print_page(page: "RequestPage") -> None:
    focused = any(row.version_id for row in page.requests)
    columns = ["request", "received (UTC)", "champion"] + (["challenger", "status", "Δnet $"] if focused else [])
    print_table(None, columns, [
        [row.request_id, f"{row.received_at:%Y-%m-%d %H:%M:%S}", _cell(row.champion_output, row.champion_status)]
        + ([_cell(row.output or row.error, row.status or "missing"), row.status, _number(row.d_net, 6)] if focused else [])
        for row in page.requests])
    if not page.requests:
        say("no requests match")
    if page.next_cursor:
        say(f"next page: --cursor {page.next_cursor}")


def _cell(text: str | None, status: str) -> str:
    shown = " ".join((text or "").split())
    shown = shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS - 1] + "…"
    return escape(shown if status == "ok" else f"({status}) {shown}")


def _number(value: float | None, places: int = 3) -> str:
    return "-" if value is None else f"{value:.{places}f}"
