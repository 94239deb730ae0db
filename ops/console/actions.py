"""The console's POST actions: promote and rollback call the same operations as the CLI.

A refusal (not ready, no previous champion, unknown variant) is the operation's own
message, shown on the page the form came from; success is shown on the slot's history.
"""

from __future__ import annotations

from urllib.parse import quote

from multidict import MultiDictProxy

from ops.console.visit import Visit
from registry import Move, ShadowzooError

FORCE_NEEDS_REASON = "force needs a reason, so the audit log says why"  # the CLI's --force refusal, in form words


async def promote(visit: Visit, form: MultiDictProxy) -> str:
    """Promote the form's variant; where to go next."""
    slot, version_id = visit.slot(form.get("slot")), form.get("version_id", "")
    reason, force = (form.get("reason") or "").strip() or None, form.get("force") == "1"
    back = f"/ui/variants/{quote(version_id, safe='')}" if version_id else "/ui/variants"
    if force and not reason:
        visit.session.say("error", f"Refused: {FORCE_NEEDS_REASON}.")
        return back
    try:
        move = await visit.call(visit.api.operations.promote, slot, version_id, visit.session.actor, reason, force)
    except ShadowzooError as exc:
        visit.session.say("error", f"Refused: {exc}")
        return back
    return _done(visit, move)


async def rollback(visit: Visit, form: MultiDictProxy) -> str:
    """Roll the form's slot back one promotion; where to go next."""
    slot = visit.slot(form.get("slot"))
    reason = (form.get("reason") or "").strip() or None
    try:
        move = await visit.call(visit.api.operations.rollback, slot, visit.session.actor, reason)
    except ShadowzooError as exc:
        visit.session.say("error", f"Refused: {exc}")
        return f"/ui/history?slot={slot}"
    return _done(visit, move)


def _done(visit: Visit, move: Move) -> str:
    visit.session.say("ok", f"{move.action}: {move.slot} champion {move.from_version or '(none)'} -> {move.to_version}")
    return f"/ui/history?slot={move.slot}"
