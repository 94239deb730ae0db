"""Who owns a workspace's state: the daemon's lock and its `daemon.json`, and `serve`'s.

One daemon per `state_dir`: it holds an exclusive lock on `daemon.lock` for its whole life
(the kernel drops it if the process dies, so a crash never leaves a stale lock), and
writes `daemon.json` with its pid and URLs, and `admin-token` with its admin token,
readable by its user only. The CLI asks the lock, not the files, whether a daemon is
running, then talks to the URLs in `daemon.json`, with the token from the environment or,
when none is set there, from `admin-token` (so the daemon's own user needs none exported).
`shadowzoo serve`, the supervisor of the gateways and the daemon, holds `serve.lock` and
writes `serve.json` the same way, so `shadowzoo stop` finds the process to signal; so does a
lone `shadowzoo gateway`, as `gateway-<pid>.lock` and `.json` (several may share a spool).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from registry.atomic import write_atomic
from registry.errors import ShadowzooError

if TYPE_CHECKING:
    from registry import Workspace

DAEMON = "daemon"
SERVE = "serve"
GATEWAY = "gateway"
TOKEN_FILE = "admin-token"


@dataclass(frozen=True)
class DaemonInfo:
    """What a running daemon tells the CLI and operators about itself."""

    pid: int
    admin_url: str
    metrics_url: str
    started_at: str


class DaemonLock:
    """The exclusive claim of one daemon (or one `serve`: `role`) on a state directory."""

    def __init__(self, workspace: Workspace, role: str = DAEMON) -> None:
        self.state_dir = workspace.state_dir
        self.role = role
        self._handle = None

    def acquire(self) -> None:
        """Take the lock, or say which process holds it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.state_dir / f"{self.role}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            info = read_info(self.state_dir, self.role)
            holder = (f"pid {info.pid}, admin API {info.admin_url}" if info
                      else f"a process that has not written {self.role}.json yet")
            raise ShadowzooError(
                f"another shadowzoo {self.role} already owns {self.state_dir} ({holder}); stop it first "
                "(`shadowzoo stop`), or point this one at another workspace"
            ) from None
        self._handle = handle

    def publish(self, info: DaemonInfo, token: str | None = None) -> None:
        """Write the token file when given (first, so a CLI that finds the info file finds the token
        too), then the info file."""
        if token is not None:
            _write_private(self.state_dir / TOKEN_FILE, token.encode())
        write_atomic(self.state_dir / f"{self.role}.json", json.dumps(asdict(info), indent=2).encode())

    def release(self) -> None:
        """Remove the info file (and the daemon's token file), and drop the lock."""
        if self._handle is None:
            return
        (self.state_dir / f"{self.role}.json").unlink(missing_ok=True)
        if self.role == DAEMON:
            (self.state_dir / TOKEN_FILE).unlink(missing_ok=True)
        if self.role == gateway_role(os.getpid()):  # a name no other process takes: it goes with this one
            (self.state_dir / f"{self.role}.lock").unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def _write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a file only its owner can read: created 0600 (never
    readable by others, not even for a moment), written, synced, then renamed over the old one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # the umask can only narrow the mode; this states it whatever it is
        os.write(descriptor, data)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)


def read_token(state_dir: Path) -> str | None:
    """The running daemon's admin token from its file, or None when it cannot be read (absent, another user's)."""
    try:
        return (state_dir / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def read_info(state_dir: Path, role: str = DAEMON) -> DaemonInfo | None:
    try:
        return DaemonInfo(**json.loads((state_dir / f"{role}.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_daemon(workspace: Workspace, role: str = DAEMON) -> DaemonInfo | None:
    """The daemon (or `serve`: `role`) that owns this workspace, if one is running (its lock is held)."""
    lock_path = workspace.state_dir / f"{role}.lock"
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_info(workspace.state_dir, role)
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def gateway_role(pid: int) -> str:
    """The lock and info files' name of the lone `shadowzoo gateway` of process `pid`."""
    return f"{GATEWAY}-{pid}"


def running_roles(workspace: Workspace) -> Iterator[str]:
    """The names of the processes that may run for the workspace, in the order to stop them: `serve`,
    lone gateways (they flush their captures to the spool), then a lone daemon (it ingests them).
    Each is looked up when reached (`running_daemon`), so what stopping the one before ended is skipped."""
    yield SERVE
    yield from sorted(path.stem for path in workspace.state_dir.glob(f"{GATEWAY}-*.lock"))
    yield DAEMON


def forget_dead_gateways(workspace: Workspace) -> list[int]:
    """Delete the lock and info files of lone gateways whose process is gone (killed with -9, it
    could not remove them) and whose lock nobody holds; returns their pids."""
    gone = []
    for path in workspace.state_dir.glob(f"{GATEWAY}-*.lock"):
        pid = path.stem.removeprefix(f"{GATEWAY}-")
        if not pid.isdigit() or pid_alive(int(pid)) or running_daemon(workspace, path.stem) is not None:
            continue
        path.unlink(missing_ok=True)
        (workspace.state_dir / f"{path.stem}.json").unlink(missing_ok=True)
        gone.append(int(pid))
    return gone


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
