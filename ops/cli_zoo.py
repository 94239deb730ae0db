"""`shadowzoo zoo …`: list, validate and register the workspace's variant specs."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.output import fail, print_json, print_table, say
from ops.session import session
from registry import ShadowzooError

if TYPE_CHECKING:
    from registry import VariantStore, Workspace
    from zoo import SpecFile, Zoo

app = typer.Typer(help="Variant specs: the YAML files under the workspace's zoo directory.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SlotOption = Annotated[str | None, typer.Option("--slot", help="Only specs of this slot.")]


@app.command("list")
def list_specs(ctx: typer.Context, slot: SlotOption = None, as_json: JsonOption = False) -> None:
    """List specs, resolved, with the version id each has or would get.

    Example: shadowzoo zoo list --slot support-triage
    """
    workspace, zoo = _workspace_zoo(ctx)
    with session(ctx).operations() as store:
        rows = [_describe(spec_file, zoo, workspace, store) for spec_file in _selected(zoo, slot)]
    if as_json:
        print_json({"specs": rows, "errors": zoo.errors})
    else:
        print_table(
            None,
            ["spec", "slot", "name", "kind", "base", "status", "version id", "registered"],
            [
                [r["spec"], r["slot"], r["name"], r["kind"], r["base"], r["status"],
                 r["version_id"] or f"error: {r['error']}", "yes" if r["registered"] else "no"]
                for r in rows
            ],
        )
        for error in zoo.errors:
            fail(error)
    if zoo.errors:
        raise typer.Exit(1)


@app.command()
def validate(ctx: typer.Context, slot: SlotOption = None, as_json: JsonOption = False) -> None:
    """Check every spec: its YAML, its keys, its skill file and its base. Exit 1 on any error.

    With --json: {"checked": specs checked, "errors": [one message per error]}.

    Example: shadowzoo zoo validate
    """
    workspace, zoo = _workspace_zoo(ctx)
    errors = list(zoo.errors)
    checked = 0
    with session(ctx).operations() as store:
        for spec_file in _selected(zoo, slot):
            checked += 1
            try:
                _resolve(spec_file, zoo, workspace, store)
            except ShadowzooError as exc:
                errors.append(str(exc))
    if as_json:
        print_json({"checked": checked, "errors": errors})
    else:
        for error in errors:
            fail(error)
        say(f"{len(errors)} error(s) in the zoo at {workspace.specs_dir}" if errors else f"all {checked} spec(s) are valid")
    if errors:
        raise typer.Exit(1)


@app.command()
def register(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Spec names or spec file paths.")] = None,
    all_active: Annotated[bool, typer.Option("--all-active", help="Register every active spec.")] = False,
    slot: SlotOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register specs as challengers, one at a time; a failing spec never stops the rest.

    Registration is idempotent: a spec whose resolved config is already registered in its
    slot returns the existing version id. Registering never changes the champion.

    Example: shadowzoo zoo register --all-active
    """
    if bool(names) == all_active:
        raise typer.BadParameter("name one or more specs, or pass --all-active (not both)")
    workspace, zoo = _workspace_zoo(ctx)
    chosen = [s for s in _selected(zoo, slot) if s.spec.status == "active"] if all_active else _by_names(zoo, names or [])
    with session(ctx).operations() as store:
        from zoo import register_specs

        outcomes = register_specs(chosen, zoo, workspace, store)
    load_errors = zoo.errors if all_active else []
    failed = sum(1 for o in outcomes if o.error) + len(load_errors)
    if as_json:
        print_json({
            "outcomes": [
                {"spec": str(o.spec_file.path), "name": o.spec_file.spec.name,
                 "version_id": o.registration.variant.version_id if o.registration else None,
                 "created": o.registration.created if o.registration else None, "error": o.error}
                for o in outcomes
            ],
            "errors": load_errors,
        })
    else:
        for outcome in outcomes:
            if outcome.registration is None:
                fail(f"{outcome.spec_file.spec.name}: {outcome.error}")
            else:
                vid = outcome.registration.variant.version_id
                say(f"registered {vid}" if outcome.registration.created else f"{outcome.spec_file.spec.name}: already registered as {vid}")
        for error in load_errors:
            fail(error)
        new = sum(1 for o in outcomes if o.registration and o.registration.created)
        unchanged = sum(1 for o in outcomes if o.registration and not o.registration.created)
        say(f"{new} new, {unchanged} already registered, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _workspace_zoo(ctx: typer.Context) -> "tuple[Workspace, Zoo]":
    """The workspace and its zoo (the zoo's modules load here, not for `--help`)."""
    from zoo import load_zoo

    workspace = session(ctx).workspace()
    return workspace, load_zoo(workspace.specs_dir)


def _resolve(spec_file: "SpecFile", zoo: "Zoo", workspace: "Workspace", store: "VariantStore"):
    from zoo import resolve_spec

    return resolve_spec(spec_file, zoo, workspace, store)


def _selected(zoo: "Zoo", slot: str | None) -> "list[SpecFile]":
    return [s for s in zoo.specs if slot is None or s.spec.slot == slot]


def _by_names(zoo: "Zoo", names: list[str]) -> "list[SpecFile]":
    """Specs named by label or by file path; an unknown name is a usage error."""
    chosen = []
    for name in names:
        matches = zoo.named(name) or [s for s in zoo.specs if s.path == Path(name).resolve()]
        if not matches:
            known = ", ".join(sorted({s.spec.name for s in zoo.specs})) or "none"
            raise ShadowzooError(f"no spec named {name!r} in the zoo (specs: {known}); see `shadowzoo zoo list`")
        chosen.extend(matches)
    return chosen


def _describe(spec_file: "SpecFile", zoo: "Zoo", workspace: "Workspace", store: "VariantStore") -> dict:
    spec = spec_file.spec
    row = {
        "spec": str(spec_file.path.relative_to(workspace.root)) if spec_file.path.is_relative_to(workspace.root) else str(spec_file.path),
        "slot": spec.slot, "name": spec.name, "kind": spec.kind, "base": spec.base, "status": spec.status,
        "version_id": None, "registered": False, "error": None,
    }
    try:
        resolved = _resolve(spec_file, zoo, workspace, store)
    except ShadowzooError as exc:
        row["error"] = str(exc)
        return row
    row["version_id"] = resolved.would_be_id(store)
    row["registered"] = store.variant_with_fingerprint(spec.slot, resolved.fingerprint) is not None
    return row
