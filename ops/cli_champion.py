"""`shadowzoo promote | rollback | retire | history` and `variants reactivate`: moves, with an audit trail."""

from typing import TYPE_CHECKING, Annotated

import typer

from ops.cli_options import JsonOption, ReasonOption, version_id as named_version
from ops.output import print_json, print_table, say
from ops.session import actor_name, session

if TYPE_CHECKING:
    from registry import Move

ActorOption = Annotated[
    str | None, typer.Option("--actor", help="Who is acting, for the audit log (default: $USER).")
]
VersionArgument = Annotated[str, typer.Argument(help="A version id, or a label only one variant has.")]


def promote(
    ctx: typer.Context,
    slot: Annotated[str, typer.Argument(help="The slot whose champion changes.")],
    version_id: Annotated[str, typer.Argument(help="An active chat variant of that slot: version id or unique label.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the audit log.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote without evidence of readiness (needs --reason).")] = False,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a variant the champion of its slot; gateways serve it within a second.

    The first champion of a slot needs no evidence. After that the target must be `ready`
    on the leaderboard (or forced, with a reason). The move is written to the audit log
    with the leaderboard it was decided on and the actor.

    Example: shadowzoo promote support-triage baseline-20261121-1a2b3c4d --reason "initial champion"
    """
    if force and not reason:
        raise typer.BadParameter("--force needs --reason, so the audit log says why", param_hint="--force")
    with session(ctx).operations() as operations:
        move = operations.promote(slot, named_version(operations, version_id, slot), actor_name(actor), reason, force)
    _report(move, as_json)


def rollback(
    ctx: typer.Context,
    slot: Annotated[str, typer.Argument(help="The slot to roll back.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move the champion back to the one before it (each rollback steps one promotion back).

    Example: shadowzoo rollback support-triage --reason "complaints about tone"
    """
    with session(ctx).operations() as operations:
        move = operations.rollback(slot, actor_name(actor), reason)
    _report(move, as_json)


def retire(ctx: typer.Context, version_id: VersionArgument, reason: ReasonOption, actor: ActorOption = None,
           as_json: JsonOption = False) -> None:
    """Stop a challenger from receiving shadow traffic. The champion cannot be retired.

    `shadowzoo variants reactivate` undoes it.

    Example: shadowzoo retire flash-20261121-9c8d7e6f --reason "too many errors"
    """
    _version_move(ctx, "retire", version_id, reason, actor, as_json)


def reactivate(ctx: typer.Context, version_id: VersionArgument, reason: ReasonOption, actor: ActorOption = None,
               as_json: JsonOption = False) -> None:
    """Make a retired variant a challenger again; it receives shadow traffic from now on.

    Only a retired variant can be reactivated. The move is written to the slot's history.

    Example: shadowzoo variants reactivate flash-20261121-9c8d7e6f --reason "provider fixed"
    """
    _version_move(ctx, "reactivate", version_id, reason, actor, as_json)


def _version_move(ctx: typer.Context, action: str, version_id: str, reason: str, actor: str | None,
                  as_json: bool) -> None:
    """Retire or reactivate the variant `version_id` names, and say so."""
    with session(ctx).operations() as operations:
        move = getattr(operations, action)(named_version(operations, version_id), actor_name(actor), reason)
    _report(move, as_json)


def history(
    ctx: typer.Context,
    slot: Annotated[str, typer.Argument(help="The slot whose audit log to show.")],
    as_json: JsonOption = False,
) -> None:
    """Every champion move, retirement and reactivation of a slot: when, who, why, from what to what, evidence.

    Example: shadowzoo history support-triage
    """
    with session(ctx).operations() as operations:
        moves = operations.history(slot)
    if as_json:
        print_json(moves)
        return
    if not moves:
        say(f"slot {slot!r} has no history yet")
        return
    print_table(
        None,
        ["#", "at (UTC)", "action", "from", "to", "actor", "reason", "evidence"],
        [
            [m.id, f"{m.at:%Y-%m-%d %H:%M:%S}", m.action, m.from_version, m.to_version, m.actor, m.reason,
             evidence_summary(m)]
            for m in moves
        ],
    )


def evidence_summary(move: "Move") -> str | None:
    """One phrase for the audit table: forced, first champion, or the target's status then."""
    evidence = move.evidence
    if evidence is None:
        return None
    if evidence.get("forced"):
        return "forced"
    if evidence.get("first_champion"):
        return "first champion"
    rows = (evidence.get("leaderboard") or {}).get("rows", [])
    row = next((r for r in rows if r.get("version_id") == move.to_version), None)
    if row is None:
        return "none recorded"
    pairs = (row.get("comparison") or {}).get("pairs", 0)
    return f"{row.get('status_detail') or row.get('status')} ({pairs} pairs)"


def _report(move: "Move", as_json: bool) -> None:
    if as_json:
        print_json(move)
        return
    if move.action in ("retire", "reactivate"):
        say(f"{move.action}d {move.to_version}")
    else:
        say(f"{move.action}: {move.slot} champion {move.from_version or '(none)'} -> {move.to_version}")
