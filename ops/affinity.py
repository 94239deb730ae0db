"""CPU sets for `serve --gateway-cpus/--daemon-cpus`: the champion's path on cores of its own.

Measured in `bench/isolation.py`: with the shadow side on the gateway's core, the
champion's p99 rose 1.4-2.9x; pinning the gateways and the daemon to disjoint cores keeps
the shadow work off the champion's CPU. A child process pins itself before it starts
anything, so every thread and process it creates inherits the set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import typer

CpuSet = frozenset[int]


def parse_cpus(text: str, option: str) -> CpuSet:
    """A cpu list like `0-1,3`, checked against the CPUs this process may use."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a cpu list: use numbers and ranges, e.g. 0-1,3",
                                     param_hint=option) from None
        if first < 0 or last < first:
            raise typer.BadParameter(f"{part.strip()!r} is not a range of cpu numbers (low-high)", param_hint=option)
        cpus.update(range(first, last + 1))
    allowed = os.sched_getaffinity(0)
    if not cpus <= allowed:
        raise typer.BadParameter(
            f"cpu(s) {format_cpus(frozenset(cpus - allowed))} are not available here: "
            f"this process may use {format_cpus(frozenset(allowed))}", param_hint=option)
    return frozenset(cpus)


def format_cpus(cpus: CpuSet) -> str:
    """The set as a cpu list, e.g. `0-1,3` (the kernel's Cpus_allowed_list form)."""
    ordered, runs = sorted(cpus), []
    for cpu in ordered:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def run_pinned(cpus: CpuSet, target: Callable[..., None], *args: Any) -> None:
    """Pin this process to `cpus`, then run `target` (the entry point of a supervised child).

    Every thread already running is pinned too (imports before this call may have started
    some); threads and processes started later inherit the set.
    """
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    os.sched_setaffinity(0, cpus)
    target(*args)
