"""Running the `shadowzoo` CLI for a test: in this process (fast), or as the installed console script.

Spawning the script costs a fresh interpreter and ~4 s of CPU importing the product, for
every call; in process a call costs what the command itself does. A call in process sees
what a spawned script would: its own working directory and environment, stdout and stderr
captured apart, exit code 0/1/2, a warning logged without handlers on stderr, and no
`sys.path` entry for the current directory. It gives back what it borrowed: the directory,
the environment, `sys.path`, and any module it imported from the workspace (a later test
with a module of the same name must import its own). A call that leaves the database file
open fails, since an open file would lock out a daemon started later.

The long-running commands (serve, daemon, gateway, sim, demo) install signal handlers,
configure logging and spawn children: run them with `run_script`, never in process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ops.cli import main as cli_main

SHADOWZOO = Path(sys.executable).parent / "shadowzoo"
REPO = Path(__file__).resolve().parent.parent
SERVICE_COMMANDS = frozenset({"serve", "daemon", "gateway", "sim", "demo"})
Env = Mapping[str, str | None]


@dataclass
class CliResult:
    """What one run of the CLI did."""

    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


def call_environment(env: Env | None) -> dict[str, str]:
    """This process's environment as a test's CLI call sees it; a None value unsets that variable."""
    merged: dict[str, str | None] = {**os.environ, "COLUMNS": "200", "USER": "tester", **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


def run_script(args: tuple[str, ...], cwd: Path, env: Env | None = None, timeout_s: float = 60) -> CliResult:
    """The installed console script, as a user runs it."""
    done = subprocess.run([str(SHADOWZOO), *args], cwd=cwd, env=call_environment(env),
                          capture_output=True, text=True, timeout=timeout_s)
    return CliResult(done.returncode, done.stdout, done.stderr)


def run_in_process(args: tuple[str, ...], cwd: Path, env: Env | None = None) -> CliResult:
    """The CLI's `main` in this process, isolated as described in the module docstring."""
    if SERVICE_COMMANDS.intersection(args[:1]) and not {"--help", "-h"}.intersection(args):
        raise AssertionError(f"`shadowzoo {args[0]}` runs a service: use the `cli_script` fixture (run_script)")
    out, err = io.StringIO(), io.StringIO()
    open_before = _open_database_files()
    with (_borrowed(cwd, call_environment(env)), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err),
          _warnings_to(err)):
        code = _exit_code(args, err)
    left_open = _open_database_files() - open_before
    assert not left_open, f"`shadowzoo {' '.join(args)}` left {sorted(left_open)} open"
    return CliResult(code, out.getvalue(), err.getvalue())


def _exit_code(args: tuple[str, ...], err: io.StringIO) -> int:
    """Run main; its return value or SystemExit becomes the exit code, as the interpreter makes it."""
    try:
        return cli_main(list(args))
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=err)
        return 1


@contextlib.contextmanager
def _borrowed(cwd: Path, environment: dict[str, str]) -> Iterator[None]:
    """Working directory, environment and import state for one call, restored afterwards."""
    saved_environment, saved_path, saved_modules = dict(os.environ), list(sys.path), set(sys.modules)
    os.environ.clear()
    os.environ.update(environment)
    sys.path[:] = [entry for entry in saved_path if entry not in ("", ".")]  # a script has its bin dir there
    try:
        with contextlib.chdir(cwd):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved_environment)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if _is_user_code(sys.modules[name]):
                del sys.modules[name]


def _is_user_code(module) -> bool:
    """A module imported from outside the project and the Python installation: a workspace's own code."""
    origin = getattr(module, "__file__", None)
    if not origin:
        return False
    path = Path(origin).resolve()
    homes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)} | {REPO}
    return not any(path.is_relative_to(home) for home in homes)


@contextlib.contextmanager
def _warnings_to(err: io.StringIO) -> Iterator[None]:
    """Warnings logged during the call reach `err` bare, as Python's last-resort handler prints them in a script."""
    handler = logging.StreamHandler(err)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _open_database_files() -> set[str]:
    """DuckDB files (and their write-ahead logs) this process has open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith((".duckdb", ".duckdb.wal")):
            found.add(target)
    return found
