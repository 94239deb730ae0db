"""What a CLI command works on: the workspace it was pointed at, and the operations on it.

Commands stay thin over `ops.protocol.Operations`: whether those run on the database here
or through the daemon's admin API is decided here, and nowhere else. The operations and
the client are imported when a command first asks for them, so `--help` loads neither.
"""

from __future__ import annotations

import getpass
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import typer

from ops.state import read_token, running_daemon

if TYPE_CHECKING:
    from ops.protocol import Operations
    from registry import Workspace


@dataclass
class Session:
    """The global options of one CLI invocation."""

    workspace_dir: Path

    def workspace(self) -> Workspace:
        from registry.workspace import load_workspace

        return load_workspace(self.workspace_dir)

    @contextmanager
    def operations(self) -> Iterator[Operations]:
        """The workspace's operations for one command: through the daemon when one runs, else here."""
        workspace = self.workspace()
        remote = self.remote(workspace)
        if remote is not None:
            yield remote
            return
        from ops.operations import LocalOperations
        from registry.store import Registry

        with Registry.open(workspace) as registry:
            yield LocalOperations(registry)

    def remote(self, workspace: Workspace) -> Operations | None:
        """The running daemon's operations, or None when no daemon runs for the workspace."""
        info = running_daemon(workspace)
        if info is None:
            return None
        from ops.client import RemoteOperations

        return RemoteOperations(info.admin_url, admin_token(workspace))  # type: ignore[return-value]  (methods from the table)


def admin_token(workspace: Workspace) -> str | None:
    """The admin token: from the variable the config names, else from the running daemon's token file."""
    return os.environ.get(workspace.config.daemon.admin_token_env) or read_token(workspace.state_dir)


def session(ctx: typer.Context) -> Session:
    """The session the root callback stored on the context."""
    return ctx.find_root().obj


def actor_name(explicit: str | None) -> str:
    """Who is acting: `--actor`, else $USER, else the login name."""
    if explicit:
        return explicit
    try:
        return os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
