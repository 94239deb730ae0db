"""`shadowzoo variants …`: what is registered, what a variant is, how two variants differ."""

import difflib
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ops.cli_options import JsonOption, version_id as named_version
from ops.output import console, print_json, print_table, say
from ops.session import session

if TYPE_CHECKING:
    from ops.protocol import Operations
    from registry import Variant

app = typer.Typer(help="Registered variants: immutable, versioned configurations of a slot.", no_args_is_help=True)

VersionArgument = Annotated[str, typer.Argument(help="A version id, or a label only one variant has.")]


@app.command("list")
def list_variants(
    ctx: typer.Context,
    slot: Annotated[str | None, typer.Option("--slot", help="Only variants of this slot.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="active or retired.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List registered variants, oldest first; the champion is marked.

    Example: shadowzoo variants list --slot support-triage
    """
    if status not in (None, "active", "retired"):
        raise typer.BadParameter("expected 'active' or 'retired'", param_hint="--status")
    with session(ctx).operations() as operations:
        variants = operations.variants(slot=slot, status=status)
        champions = {s: operations.champion(s) for s in {v.slot for v in variants}}
    champion_ids = {c.version_id for c in champions.values() if c}
    if as_json:
        print_json([{**v.model_dump(mode="json"), "champion": v.version_id in champion_ids} for v in variants])
        return
    print_table(
        None,
        ["version id", "slot", "kind", "model", "status", "role", "source", "created (UTC)"],
        [
            [v.version_id, v.slot, v.kind, v.config.get("model") or v.config.get("entrypoint"), v.status,
             "champion" if v.version_id in champion_ids else "challenger" if v.status == "active" else "-",
             v.source, f"{v.created_at:%Y-%m-%d %H:%M}"]
            for v in variants
        ],
    )


@app.command()
def show(ctx: typer.Context, version_id: VersionArgument, as_json: JsonOption = False) -> None:
    """Show a variant's resolved config and its skill text.

    Example: shadowzoo variants show baseline-20261121-1a2b3c4d
    """
    with session(ctx).operations() as operations:
        variant = operations.variant(named_version(operations, version_id))
        skill = _skill(operations, variant)
    if as_json:
        print_json({**variant.model_dump(mode="json"), "skill": skill})
        return
    say(f"[bold]{variant.version_id}[/bold]  slot={variant.slot}  kind={variant.kind}  status={variant.status}")
    say(f"source={variant.source}  parent={variant.parent or '-'}  created={variant.created_at:%Y-%m-%d %H:%M:%S} UTC")
    if variant.spec_path:
        say(f"spec={variant.spec_path}")
    console.print(json.dumps(variant.config, indent=2, sort_keys=True), markup=False)
    if skill is not None:
        say("[bold]skill[/bold]")
        console.print(skill, markup=False)


@app.command()
def diff(ctx: typer.Context, a: VersionArgument, b: VersionArgument, as_json: JsonOption = False) -> None:
    """Show how variant B differs from variant A: config keys, then a unified diff of skills.

    With --json: {"a", "b", "config": [{"key", "a", "b"}, ...], "skill_diff"} where a key's
    value is null when unset and skill_diff is null when the skills are the same.

    Example: shadowzoo variants diff baseline-20261121-1a2b3c4d careful-large
    """
    with session(ctx).operations() as operations:
        left, right = operations.variant(named_version(operations, a)), operations.variant(named_version(operations, b))
        left_skill, right_skill = _skill(operations, left), _skill(operations, right)
    a, b = left.version_id, right.version_id
    changes = config_changes(left.config, right.config)
    skill_diff = None if left_skill == right_skill else "".join(difflib.unified_diff(
        (left_skill or "").splitlines(keepends=True), (right_skill or "").splitlines(keepends=True),
        fromfile=f"{a}/skill", tofile=f"{b}/skill",
    ))
    if as_json:
        flat_left, flat_right = _flatten(left.config), _flatten(right.config)
        print_json({"a": a, "b": b, "skill_diff": skill_diff,
                    "config": [{"key": key, "a": flat_left.get(key), "b": flat_right.get(key)} for key, _, _ in changes]})
        return
    if changes:
        print_table("config", ["key", a, b], changes)
    else:
        say("config: identical apart from the skill" if skill_diff else "config: identical")
    if skill_diff:
        console.print(skill_diff, markup=False, end="")


def config_changes(left: dict[str, Any], right: dict[str, Any]) -> list[list[str]]:
    """Rows (dotted key, left value, right value) for every leaf that differs."""
    flat_left, flat_right = _flatten(left), _flatten(right)
    keys = sorted(set(flat_left) | set(flat_right))
    return [
        [key, _show(flat_left.get(key)), _show(flat_right.get(key))]
        for key in keys
        if key != "skill_sha" and flat_left.get(key) != flat_right.get(key)
    ]


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict) and item:
            flat.update(_flatten(item, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = item
    return flat


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value)


def _skill(operations: "Operations", variant: "Variant") -> str | None:
    return operations.skill_text(variant.skill_sha) if variant.skill_sha else None
