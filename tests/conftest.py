"""Shared fixtures: a fresh workspace copied from the demo, and the real CLI entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.workspace_init import init_workspace
from registry import Registry, load_workspace

SHADOWZOO = Path(sys.executable).parent / "shadowzoo"


@pytest.fixture
def workspace_dir(tmp_path: Path) -> Path:
    """A new workspace made by `shadowzoo init`'s own code, from examples/demo."""
    return init_workspace(tmp_path / "ws")


@pytest.fixture
def registry(workspace_dir: Path):
    """The workspace's registry, open in this process."""
    with Registry.open(load_workspace(workspace_dir)) as reg:
        yield reg


@dataclass
class CliResult:
    """What one run of the `shadowzoo` console script did."""

    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(workspace_dir: Path):
    """Run the installed `shadowzoo` console script in the workspace, as a user would."""

    def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        full_env = {**os.environ, "COLUMNS": "200", "USER": "tester", **(env or {})}
        done = subprocess.run(
            [str(SHADOWZOO), *args], cwd=cwd or workspace_dir, env=full_env,
            capture_output=True, text=True, timeout=60,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run
