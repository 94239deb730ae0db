"""CPU time as Linux accounts it in /proc: of a process tree, and of each core."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children.extend(int(child) for child in (task / "children").read_text().split())
    return children


def process_tree(pid: int) -> list[int]:
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children(parent)]
        tree.extend(frontier)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/PID/stat (0 once the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def core_busy_ticks() -> dict[str, int]:
    """Non-idle ticks per core since boot, from /proc/stat (steal included: time the VM did not get)."""
    busy: dict[str, int] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            numbers = [int(v) for v in values[:8]]
            busy[name[3:]] = sum(numbers) - numbers[3] - numbers[4]
    return busy
