"""Process supervision for `shadowzoo serve` and `shadowzoo gateway --workers N`.

Each child is a spawned process; one that dies is restarted after a back-off that grows
while it keeps dying. On SIGTERM or SIGINT children are stopped in the order given (the
gateways first, so they flush their captures to the spool, then the daemon, so it ingests
them), each with SIGTERM and a grace period. SIGHUP is passed on to the children that reload
their config on it (the daemon), so `systemctl reload` reaches it. `supervise` returns what
went wrong while stopping (a child that died with an error, or did not stop in its grace
period), so that the command exits non-zero naming it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ops.affinity import CpuSet, run_pinned

POLL_S = 0.2
MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 20.0


@dataclass
class Child:
    """One supervised process: what it runs, and its restart state."""

    name: str
    target: str
    """Its entry point as `module:function`, imported in the child only: the supervisor stays small
    (the daemon's modules alone cost every `serve` about two seconds of CPU to import)."""
    args: tuple[Any, ...]
    env: dict[str, str] = field(default_factory=dict)
    cpus: CpuSet | None = None
    """The CPUs it may run on (`serve --gateway-cpus/--daemon-cpus`); all when None."""
    reloads: bool = False
    """It reloads its config on SIGHUP, so the supervisor passes SIGHUP on to it."""
    process: multiprocessing.Process | None = None
    backoff_s: float = 1.0
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


def supervise(children: list[Child]) -> list[str]:
    """Run the children until a signal; restart any that dies; stop them in order. Returns one line
    per child that did not stop cleanly (none when all did)."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def reload(signum: int, frame: object) -> None:
        for child in children:
            if child.reloads and child.process is not None and child.process.is_alive():
                os.kill(child.process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)
    for child in children:
        _start(context, child)
    while True:
        time.sleep(POLL_S)
        if stopping:  # a child dead by now is not started again only to be stopped
            break
        for child in children:
            _tend(context, child)
    return [problem for child in children if (problem := _stop(child)) is not None]


def _start(context: Any, child: Child) -> None:
    """Spawn the child with its own environment additions (they must be there when it imports)."""
    saved = {key: os.environ.get(key) for key in child.env}
    os.environ.update(child.env)
    try:
        args = (child.target, *child.args)
        target, args = (_enter, args) if child.cpus is None else (run_pinned, (child.cpus, _enter, *args))
        child.process = context.Process(target=target, args=args, name=child.name)
        child.process.start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    child.started_at = time.monotonic()


def _enter(target: str, *args: Any) -> None:
    """A child's start: import its entry point (`module:function`) and run it."""
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)(*args)


def _tend(context: Any, child: Child) -> None:
    """Restart a dead child once its back-off has passed."""
    process = child.process
    if process is not None and process.is_alive():
        if time.monotonic() - child.started_at > MAX_BACKOFF_S:
            child.backoff_s = 1.0
        return
    now = time.monotonic()
    if process is not None:
        print(f"shadowzoo: {child.name} (pid {process.pid}) exited with {process.exitcode}; "
              f"restarting in {child.backoff_s:.0f}s", file=sys.stderr, flush=True)
        child.process = None
        child.restart_at = now + child.backoff_s
        child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)
    if now >= child.restart_at:
        _start(context, child)


def _stop(child: Child) -> str | None:
    """SIGTERM, the grace period, then SIGKILL if need be; what went wrong, or None when the child
    exited 0, or by that SIGTERM itself (it was starting: its handler not set, nothing held yet).
    A child found dead already died after the last look, while the stop began: that is said too."""
    process = child.process
    if process is None:
        return None
    if process.is_alive():
        os.kill(process.pid, signal.SIGTERM)
        process.join(STOP_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join()
        return f"{child.name} (pid {process.pid}) still ran {STOP_GRACE_S:g} s after SIGTERM and was killed"
    if process.exitcode in (0, -signal.SIGTERM):
        return None
    return f"{child.name} (pid {process.pid}) exited with {process.exitcode} while stopping"
