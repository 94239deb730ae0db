"""The console's request pages: a slot's requests filtered like `shadowzoo requests`, and one request traced.

Both only draw what the operations return (`requests` and `trace`), so a page shows exactly
what the CLI and the admin API show. The filters are a GET form: a page of requests is a
link that can be shared, and paging on is the same query with the page's `cursor`.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from ops.console import html
from ops.console.visit import View, Visit
from scorer.browse import RequestPage, RequestRow, filter_of_query
from scorer.report.text import fmt_time, usd
from scorer.trace import AnswerTrace, RequestTrace

FILTERS = ("version", "disagree", "worst", "tag", "since", "limit")
SHOWN_CHARS = 80
"""How much of an answer a row of the list shows (the trace has all of it)."""


async def requests(visit: Visit) -> View:
    """The slot's requests, newest first (or by the worst paired loss), with the filters and the next page's link."""
    slot = visit.slot()
    if not slot:
        return View("Requests", '<p class="empty">No slot is configured in shadowzoo.yaml.</p>')
    asked = {name: value.strip() for name, value in visit.request.query.items() if value.strip()}
    tags = [item for item in asked.get("tag", "").split(",") if item.strip()]  # a tag value holds no comma
    query = {name: value for name, value in asked.items() if name not in ("tag", "errors")}
    page: RequestPage = await visit.call(visit.api.operations.requests, filter_of_query(
        {**query, "slot": slot, "errors": "errors" in asked}, tags))
    focused = any(row.version_id for row in page.requests)
    rows = [_row(row, slot, focused) for row in page.requests]
    headers = ["request", "received", "champion"] + (["challenger", "status", "Δnet $"] if focused else [])
    more = ""
    if page.next_cursor:
        kept = {name: value for name, value in asked.items() if name != "cursor"}
        more = f"<p>{html.link('/ui/requests', 'Next page →', cursor=page.next_cursor, **kept)}</p>"
    body = (f"<h1>{escape(slot)} · requests</h1>{_filter_form(slot, asked)}"
            + html.table(headers, rows, "No request matches.") + more)
    return View(f"{slot} requests", body)


def _filter_form(slot: str, asked: dict[str, str]) -> str:
    labels = {"version": "Called on variant", "disagree": "Disagrees with the champion", "worst": "Worst Δnet of",
              "tag": "Tags (k=v,k2=v2)", "since": "Since (UTC, ISO)", "limit": "Per page"}
    fields = "".join(f"<div>{html.text_field(name, labels[name], value=asked.get(name, ''))}</div>" for name in FILTERS)
    return html.filters("/ui/requests", html.hidden("slot", slot) + fields
                        + html.checkbox("errors", "Errors only", "errors" in asked))


def _row(row: RequestRow, slot: str, focused: bool) -> list[str]:
    cells = [html.link(f"/ui/requests/{row.request_id}", row.request_id, slot=slot)
             + (f"<span class='sub'>client id {escape(row.client_request_id)}</span>" if row.client_request_id else ""),
             escape(fmt_time(row.received_at)), _clip(row.champion_output, row.champion_status)]
    if focused:
        cells += [_clip(row.output or row.error, row.status)
                  + f"<span class='sub'>{html.link(f'/ui/variants/{row.version_id}', row.version_id or '')}</span>",
                  escape(row.status or "missing"), _number(row.d_net, 6)]
    return cells


def _clip(text: str | None, status: str | None) -> str:
    shown = " ".join((text or "").split())
    shown = shown if len(shown) <= SHOWN_CHARS else shown[:SHOWN_CHARS - 1] + "…"
    return escape(shown if status == "ok" else f"({status or 'missing'}) {shown}")


async def trace(visit: Visit) -> View:
    """One request: its messages, every answer side by side with its differences from the champion's and its
    scores, the pairs, the labels, and why a challenger was not run."""
    key = visit.request.match_info["request_id"]
    traced: RequestTrace = await visit.call(visit.api.operations.trace, key, visit.request.query.get("slot") or None)
    champion = traced.champion
    answers = "".join(_answer(answer, champion) for answer in [champion, *traced.challengers])
    body = (f"<h1>Request {escape(traced.request_id)}</h1>{_facts(traced)}"
            f"<h2>Request</h2>{_messages(traced.request)}"
            f"<h2>Answers</h2><p class='note'>Each challenger's answer with its line differences from the "
            f"champion's (text and tool calls), its metrics, cost, latency and net value, and its pair.</p>"
            f"<div class='answers'>{answers}</div><h2>Labels and reactions</h2>{_outcomes(traced)}")
    return View(f"request {traced.request_id}", body)


def _facts(traced: RequestTrace) -> str:
    period = "–"
    if traced.period is not None:
        period = (f"{traced.period.period_id} (champion {html.mono(traced.period.champion_version)}, since "
                  f"{escape(fmt_time(traced.period.started_at))}: {escape(traced.period.reason)})")
    facts = [("slot", html.link("/ui/requests", traced.slot, slot=traced.slot)),
             ("client request id", html.mono(traced.client_request_id or "–")),
             ("received", escape(fmt_time(traced.received_at))), ("source", escape(traced.source)),
             ("evaluation period", period)]
    return "<dl>" + "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>"


def _messages(request: Any) -> str:
    """The request's messages, one block each; the whole stored request (tools, settings) folded below."""
    messages = request.get("messages") if isinstance(request, dict) else None
    blocks = "".join(f"<h3>{escape(str(m.get('role', '?')))}</h3><pre>{escape(_content(m.get('content')))}</pre>"
                     for m in messages or [] if isinstance(m, dict))
    return (blocks or "<p class='empty'>The request has no messages.</p>") + \
        f"<details><summary>The whole request as stored</summary>{html.pretty_json(request)}</details>"


def _content(content: Any) -> str:
    return content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False)


def _answer_text(answer: AnswerTrace) -> str:
    """What the answer said: its text, then its tool calls (the lines the diff compares)."""
    calls = f"\ntool calls:\n{json.dumps(answer.tool_calls, indent=2, sort_keys=True, ensure_ascii=False)}" \
        if answer.tool_calls else ""
    return (answer.output or "") + calls


def _answer(answer: AnswerTrace, champion: AnswerTrace) -> str:
    said = _answer_text(answer)
    is_champion = answer is champion
    differs = not is_champion and answer.status == "ok" and said != _answer_text(champion)
    head = (f"<h3>{html.link(f'/ui/variants/{answer.version_id}', answer.version_id)}</h3>"
            f"<p class='note'>{escape(answer.role)} · {escape(answer.status)}</p>")
    text = f"<pre>{escape(said) or ' '}</pre>" if said or answer.status == "ok" else ""
    reason = f"<p class='msg error'>{escape(answer.reason)}</p>" if answer.reason else ""
    diff = ""
    if not is_champion and answer.status == "ok":
        diff = "<h4>Diff to the champion</h4>" + html.line_diff(_answer_text(champion), said, "champion", answer.version_id,
                                                               "Same answer as the champion.")
    return (f"<div class='answer{' differs' if differs else ''}'>{head}{reason}{text}{diff}{_scores(answer)}"
            f"{_pair(answer)}</div>")


def _scores(answer: AnswerTrace) -> str:
    metrics = [[escape(m.metric), _number(m.value) if m.counted else "not sampled", _number(m.weight)]
               for m in answer.metrics]
    figures = [["quality", _number(answer.quality)], ["cost", usd(answer.cost_usd) if answer.cost_usd is not None else "–"],
               ["latency", f"{answer.latency_ms:.0f} ms" if answer.latency_ms is not None else "–"],
               ["latency cost", _number(answer.latency_cost_usd, 6)], ["net", _number(answer.net, 6)],
               ["tokens", f"{answer.prompt_tokens or 0} in, {answer.completion_tokens or 0} out"]]
    return (html.table(["metric", "value", "weight"], metrics, "Not scored.")
            + "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in figures) + "</dl>")


def _pair(answer: AnswerTrace) -> str:
    if answer.pair is None:
        return ""
    pair = answer.pair
    if not pair.entered:
        return f"<p class='note'>pair: not entered — {escape(pair.reason)}</p>"
    return (f"<p class='note'>pair (period {pair.period_id}): Δnet {_number(pair.d_net, 6)} · "
            f"Δquality {_number(pair.d_quality)} · Δcost {_number(pair.d_cost, 6)} — {escape(pair.reason)}</p>")


def _outcomes(traced: RequestTrace) -> str:
    rows = [[escape(o.kind), html.mono(json.dumps(o.value, ensure_ascii=False)), escape(fmt_time(o.received_at)),
             "scored against" if o.used else ""] for o in traced.outcomes]
    return html.table(["kind", "value", "received", ""], rows, "No label or reaction for this request.")


def _number(value: float | None, places: int = 3) -> str:
    return "–" if value is None else f"{value:.{places}f}"
