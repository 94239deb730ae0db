"""`shadowzoo migrate --to distributed`: copy an embedded workspace's history into the
distributed backend (`registry.history_copy`), then switch the workspace to it.

A local command, like `init`: it works on a workspace at rest (no daemon may hold the DuckDB
file or write the lake), so it has no operation in `ops.protocol` and no admin route.
"""

import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ops.output import error_console, print_table, say
from ops.session import session
from ops.state import DAEMON, SERVE, running_daemon
from registry.errors import ShadowzooError

if TYPE_CHECKING:
    from registry import Workspace
    from registry.history_copy import TableCopy

_BACKEND_LINE = re.compile(r"^backend:[^#\n]*?(?P<comment>[ \t]+#[^\n]*)?$", re.MULTILINE)
_DISTRIBUTED_LINE = re.compile(r"^distributed:", re.MULTILINE)


class Backend(str, Enum):
    distributed = "distributed"


def migrate(
    ctx: typer.Context,
    to: Annotated[Backend, typer.Option("--to", help="The backend to copy the history into.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be copied; write nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace tables where the target holds another history with this workspace's rows.")] = False,
    switch: Annotated[bool, typer.Option(
        "--switch", help="Once copied, set `backend: distributed` in shadowzoo.yaml (its comments kept).")] = False,
) -> None:
    """Copy the workspace's history (registry, traffic, results, scores, audit log) from its
    DuckDB file into the distributed backend its `distributed:` section names.

    Run it with the daemon stopped, while `backend:` is still `embedded`. Each table is copied
    whole in one transaction, with its ids, sequence values and timestamps; interrupted, it
    continues when run again and never copies a row twice. It refuses a target that holds
    another history unless --force.

    Example: shadowzoo stop && shadowzoo migrate --to distributed --switch && shadowzoo serve
    """
    from registry.history_copy import copy_history

    workspace = session(ctx).workspace()
    _refuse_running(workspace)
    tables = copy_history(workspace, dry_run=dry_run, force=force, progress=_progress)
    _print_summary(tables, dry_run)
    if dry_run:
        say("dry run: nothing was written" + (f"; --switch would set `backend: {to.value}`" if switch else ""))
    elif switch:
        switch_backend(workspace.config_path)
        say(f"{workspace.config_path}: backend set to distributed; next: start the services (`shadowzoo serve`)")
    elif workspace.config.backend != "distributed":
        say(f"next: set `backend: distributed` in {workspace.config_path} (or run again with --switch), "
            "then start the services (`shadowzoo serve`)")


def _refuse_running(workspace: "Workspace") -> None:
    """Refuse while a daemon or `serve` runs on the workspace: it writes what is being copied."""
    for role in (SERVE, DAEMON):
        info = running_daemon(workspace, role)
        if info is not None:
            raise ShadowzooError(
                f"`shadowzoo {role}` (pid {info.pid}) is running on {workspace.db_path}: migrate copies a workspace "
                "at rest; stop it first (`shadowzoo stop`), then run migrate again")


def _progress(entry: "TableCopy", index: int, total: int) -> None:
    """One line on stderr as each table starts and ends."""
    head = f"[{index}/{total}] {entry.table} ({entry.plane})"
    if entry.state in ("copy", "replace"):
        line = f"{head}: {entry.state} {entry.rows} rows …"
    elif entry.state in ("copied", "replaced"):
        line = f"{head}: {entry.copied}/{entry.rows} rows {entry.state}"
    else:
        line = f"{head}: {entry.state} ({entry.rows} rows)"
    error_console.print(line, markup=False)


def _print_summary(tables: "list[TableCopy]", dry_run: bool) -> None:
    print_table("would copy" if dry_run else "copied", ("table", "plane", "rows", "in target before", "done"),
                [(entry.table, entry.plane, entry.rows, entry.target_rows, entry.state) for entry in tables])
    copied = sum(entry.copied for entry in tables)
    pending = sum(entry.rows for entry in tables if entry.state in ("copy", "replace"))
    say(f"{pending} rows in {len(tables)} tables to copy" if dry_run
        else f"{copied} rows copied; {sum(entry.state == 'already copied' for entry in tables)} tables were there already")


def switch_backend(path: Path) -> None:
    """Set the top-level `backend:` to `distributed`, keeping the rest of the file (comments too) as written."""
    import yaml

    from registry.atomic import write_atomic

    text = path.read_text(encoding="utf-8")
    if _BACKEND_LINE.search(text):
        edited = _BACKEND_LINE.sub(lambda match: "backend: distributed" + (match.group("comment") or ""), text, count=1)
    else:
        edited = _DISTRIBUTED_LINE.sub("backend: distributed\ndistributed:", text, count=1)
    if (yaml.safe_load(edited) or {}).get("backend") != "distributed":
        raise ShadowzooError(f"{path}: cannot tell where to set `backend: distributed`; set it by hand")
    write_atomic(path, edited.encode("utf-8"), mode=path.stat().st_mode)
