"""What a CLI command works on: the workspace it was pointed at, and its registry.

Commands stay thin over the registry API, so that reaching the registry through the
daemon's admin API later is a change here, not in every command.
"""

from __future__ import annotations

import getpass
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import typer

from registry import Registry, Workspace, load_workspace


@dataclass
class Session:
    """The global options of one CLI invocation."""

    workspace_dir: Path

    def workspace(self) -> Workspace:
        return load_workspace(self.workspace_dir)

    @contextmanager
    def registry(self) -> Iterator[Registry]:
        """The workspace's registry, open for the duration of one command."""
        with Registry.open(self.workspace()) as registry:
            yield registry


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
