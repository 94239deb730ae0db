"""What a CLI command works on: the workspace it was pointed at, and the operations on it.

Commands stay thin over `ops.operations`: whether those run on the database here or
through the daemon's admin API is decided here, and nowhere else.
"""

from __future__ import annotations

import getpass
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import typer

from ops.client import RemoteOperations
from ops.operations import LocalOperations, Operations
from ops.state import read_token, running_daemon
from registry import Registry, Workspace, load_workspace


@dataclass
class Session:
    """The global options of one CLI invocation."""

    workspace_dir: Path

    def workspace(self) -> Workspace:
        return load_workspace(self.workspace_dir)

    @contextmanager
    def operations(self) -> Iterator[Operations]:
        """The workspace's operations for one command: through the daemon when one runs, else here."""
        workspace = self.workspace()
        info = running_daemon(workspace)
        if info is not None:
            yield RemoteOperations(info.admin_url, admin_token(workspace))  # type: ignore[misc]  (methods from the table)
            return
        with Registry.open(workspace) as registry:
            yield LocalOperations(registry)


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
