"""The console's pages, each a function of a visit: it calls the operations and renders what they return.

Pages never compute evidence themselves, and never write: the leaderboard is the one the
daemon last scored and stored (`operations.leaderboard`), drawn by the report's own
sections and charts, history is the audit log as stored, status is the
daemon's `status()` answer.
"""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any

from ops.cli_champion import evidence_summary
from ops.cli_variants import config_changes
from ops.console import html
from ops.console.visit import View, Visit
from ops.protocol import JobStatus
from registry import Move, NotFound, Variant
from scorer.report.page import leaderboard_sections
from scorer.report.text import fmt_time, usd

REFRESH_S = 30


def _when(moment: datetime | None) -> str:
    return escape(fmt_time(moment)) if moment else "–"


async def leaderboard(visit: Visit) -> View:
    """The slot's leaderboard as the daemon last scored it, with its intervals and the report's charts; reloads itself."""
    slot = visit.slot()
    if not slot:
        return View("Leaderboard", '<p class="empty">No slot is configured in shadowzoo.yaml.</p>')
    try:
        board = await visit.call(visit.api.operations.leaderboard, slot)
    except NotFound as exc:
        return View(f"{slot} leaderboard", f'<h1>{escape(slot)} · leaderboard</h1><p class="empty">{escape(str(exc))}</p>',
                    REFRESH_S)
    history = await visit.call(visit.api.operations.evidence_history, slot)
    links = "".join(f"<li>{html.link(f'/ui/variants/{row.version_id}', f'{row.label} · {row.display_status}')}"
                    + (f" · {html.link('/ui/requests', 'requests where it disagrees', slot=slot, disagree=row.version_id)}"
                       if row.role != "champion" else "") + "</li>"
                    for row in board.rows)
    body = (f"<h1>{escape(slot)} · leaderboard</h1>{leaderboard_sections(board, history)}"
            f"<h2>Variants on this board</h2><p class='note'>Open one for its config, skill, diff to the champion "
            f"and the promote form.</p><ul>{links}</ul>")
    return View(f"{slot} leaderboard", body, REFRESH_S)


async def variants(visit: Visit) -> View:
    """Every registered variant of the slot, champion marked, each linked to its page."""
    slot = visit.slot()
    found: list[Variant] = await visit.call(visit.api.operations.variants, slot, None)
    champion = await visit.call(visit.api.operations.champion, slot)
    rows = [[html.link(f"/ui/variants/{v.version_id}", v.label) + f"<span class='sub mono'>{escape(v.version_id)}</span>",
             "champion" if champion and v.version_id == champion.version_id else escape(v.status),
             escape(v.kind), escape(str(v.config.get("model", v.config.get("entrypoint", "")))),
             escape(v.source), _when(v.created_at)]
            for v in reversed(found)]
    body = (f"<h1>{escape(slot)} · variants</h1>"
            + html.table(["variant", "status", "kind", "model / entrypoint", "source", "registered"], rows,
                         "No variant is registered in this slot yet."))
    return View(f"{slot} variants", body)


async def variant(visit: Visit) -> View:
    """One variant: identity, config and skill, their differences from the champion, and the promote form."""
    version_id = visit.request.match_info["version_id"]
    found: Variant = await visit.call(visit.api.operations.variant, version_id)
    champion: Variant | None = await visit.call(visit.api.operations.champion, found.slot)
    skill = await _skill(visit, found)
    facts = "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in [
        ("slot", html.link("/ui/leaderboard", found.slot, slot=found.slot)), ("version", html.mono(found.version_id)),
        ("status", escape(found.status)), ("kind", escape(found.kind)), ("fingerprint", html.mono(found.fingerprint)),
        ("parent", html.mono(found.parent or "–")), ("source", escape(found.source)),
        ("spec", html.mono(found.spec_path or "–")), ("registered", _when(found.created_at))])
    body = (f"<h1>{escape(found.label)}</h1><dl>{facts}</dl>"
            f"{await _champion_diff(visit, found, champion, skill)}"
            f"{_promote_form(visit, found, champion)}"
            f"<h2>Config</h2>{html.pretty_json(found.config)}"
            f"<h2>Skill</h2>{f'<pre>{escape(skill)}</pre>' if skill else '<p class=empty>No skill document.</p>'}"
            + (f"<h2>Provenance</h2>{html.pretty_json(found.meta)}" if found.meta else ""))
    return View(found.label, body)


async def _skill(visit: Visit, found: Variant) -> str:
    if not found.skill_sha:
        return ""
    try:
        return await visit.call(visit.api.operations.skill_text, found.skill_sha)
    except NotFound:
        return ""


async def _champion_diff(visit: Visit, found: Variant, champion: Variant | None, skill: str) -> str:
    if champion is None:
        return "<h2>Diff to the champion</h2><p class='empty'>The slot has no champion yet.</p>"
    if champion.version_id == found.version_id:
        return "<h2>Diff to the champion</h2><p class='empty'>This variant is the champion.</p>"
    champion_skill = await _skill(visit, champion)
    return (f"<h2>Diff to the champion</h2><p class='note'>Against {html.link(f'/ui/variants/{champion.version_id}', champion.label)}"
            f" {html.mono(champion.version_id)}.</p>"
            f"{config_diff(champion.config, found.config)}<h3>Skill</h3>{skill_diff(champion_skill, skill)}")


def config_diff(champion: dict[str, Any], challenger: dict[str, Any]) -> str:
    """The settings that differ (as `shadowzoo variants diff` lists them), highlighted."""
    changes = config_changes(champion, challenger)
    rows = [[html.mono(key), html.mono(left), html.mono(right)] for key, left, right in changes]
    return html.table(["setting", "champion", "this variant"], rows, "Same settings, apart from the skill.",
                      ["changed"] * len(rows))


def skill_diff(champion: str, challenger: str) -> str:
    """A unified diff of the two skill documents, added and removed lines highlighted."""
    return html.line_diff(champion, challenger, "champion", "this variant", "Same skill document.")


def _promote_form(visit: Visit, found: Variant, champion: Variant | None) -> str:
    if champion is not None and champion.version_id == found.version_id:
        return ""
    fields = (html.hidden("slot", found.slot) + html.hidden("version_id", found.version_id)
              + html.text_field("reason", "Reason (for the audit log)", multiline=True)
              + html.checkbox("force", "Force: promote without evidence of readiness (needs a reason)"))
    return html.form("/ui/promote", visit.session.csrf, fields, "Promote", title=f"Promote to champion of {found.slot}")


async def history(visit: Visit) -> View:
    """The slot's audit log, newest first, each move with the evidence it was decided on; the rollback form."""
    slot = visit.slot()
    moves: list[Move] = await visit.call(visit.api.operations.history, slot)
    rows = [[str(m.id), _when(m.at), escape(m.action), _version(m.from_version), _version(m.to_version),
             escape(m.actor), escape(m.reason or "–"), _evidence(m)] for m in reversed(moves)]
    fields = html.hidden("slot", slot) + html.text_field("reason", "Reason (for the audit log)", multiline=True)
    body = (f"<h1>{escape(slot)} · promotion history</h1>"
            + html.table(["#", "at", "action", "from", "to", "actor", "reason", "evidence"], rows,
                         "No promotion, rollback or retirement yet.")
            + html.form("/ui/rollback", visit.session.csrf, fields, "Roll back",
                        title="Roll back one promotion"))
    return View(f"{slot} history", body)


def _version(version_id: str | None) -> str:
    return html.link(f"/ui/variants/{version_id}", version_id) if version_id else "–"


def _evidence(move: Move) -> str:
    summary = escape(evidence_summary(move) or "–")
    if not move.evidence:
        return summary
    return f"<details><summary>{summary}</summary>{html.pretty_json(move.evidence)}</details>"


async def status(visit: Visit) -> View:
    """The daemon's status: spend and budgets, judges, pauses, champions, spool and queue, last task runs."""
    state: dict[str, Any] = await visit.call(visit.api.operations.status)
    slots = visit.api.operations.registry.workspace.config.slots
    budgets = [[escape(slot), usd(slots[slot].shadow.daily_budget_usd), usd(slots[slot].shadow.daily_budget_usd - left),
                usd(left)] for slot, left in state["budgets_left_usd"].items() if slot in slots]
    judges = [[escape(slot), html.mono(j["metric_key"]), usd(j["spent_today_usd"]), usd(j["daily_budget_usd"]),
               "budget reached" if j["budget_reached"] else "judging", str(j["unjudged"])]
              for slot, listed in state["judges"].items() for j in listed]
    pauses = [["all shadow spend" if p["scope"] == "all" else _version(p["target"]), escape(p["actor"]),
               escape(p["reason"] or "–"), escape(p["since"])] for p in state["pauses"]]
    daemon = [["pid", str(state["pid"])], ["uptime", f"{state['uptime_s']:.0f} s"],
              ["spool", f"{state['spool_segments']} segments, lag {state['spool_lag_s']} s, "
                        f"{state['spool_quarantined_records']} quarantined records"],
              ["shadow queue", escape(str(state["queue_depth"]))],
              ["champions", "<br>".join(f"{escape(s)}: {_version(v)}" for s, v in state["champions"].items())],
              ["routes drift", escape("; ".join(state["routes_drift"]) or "none")],
              ["missing API keys", escape(", ".join(map(str, state["missing_api_keys"])) or "none")],
              ["checked", escape(state["checked_at"])]]
    config = state.get("config")
    if config:
        daemon += [["config", escape(f"edit refused, running the earlier config: {config['error']}" if config["error"]
                                     else f"loaded {config['loaded_at']}")],
                   ["needs restart", escape("; ".join(f"{p['key']}: {p['running']} → {p['edited']}"
                                                      for p in config["needs_restart"]) or "nothing")]]
    runs = [[escape(name), html.mono(json.dumps(run, sort_keys=True, default=str))]
            for name, run in state["last_runs"].items()]
    body = ("<h1>Status</h1>"
            "<h2>Shadow spend today (UTC)</h2>" + html.table(["slot", "daily budget", "spent", "left"], budgets, "No slot.")
            + "<h2>Judges</h2>" + html.table(["slot", "metric", "spent today", "daily budget", "state", "unjudged"], judges, "No judge has run yet.")
            + "<h2>Pauses</h2>" + html.table(["paused", "by", "reason", "since"], pauses, "Nothing is paused.")
            + "<h2>Daemon</h2>" + html.table(["", ""], daemon, "")
            + "<h2>Last task runs</h2>" + html.table(["task", "result"], runs, "No task has run yet."))
    return View("Status", body, REFRESH_S)


async def jobs(visit: Visit) -> View:
    """Jobs started in this daemon's life (replays, reports, training), newest first; reloads itself."""
    rows = [[html.mono(job.id), escape(job.operation), escape(_subject(job)),
             escape(job.state), _when(job.started_at), _when(job.finished_at),
             html.mono(json.dumps(job.progress, default=str)) if job.progress else "–",
             escape(job.error) if job.error else html.mono(json.dumps(job.result, default=str)) if job.result else "–"]
            for job in await visit.call(visit.api.operations.jobs)]
    body = "<h1>Jobs</h1>" + html.table(["id", "kind", "slot / spec", "state", "started", "finished", "progress",
                                         "result"], rows, "No job started since the daemon started.")
    return View("Jobs", body, REFRESH_S)


def _subject(job: JobStatus) -> str:
    """What a job works on: its slot or spec."""
    arguments = job.arguments
    return arguments.get("slot") or arguments.get("spec") or (arguments.get("options") or {}).get("slot") or "–"
