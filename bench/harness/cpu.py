"""Who used the CPU during a measurement: each server and worker, each core, and the load from elsewhere."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.harness.figures import round3
from bench.harness.procfs import core_busy_ticks
from bench.harness.servers import Server

QUIET_CORES = 0.25


@dataclass
class CpuUse:
    """CPU spent during a window: per server and per worker (seconds), per core (busy fraction)."""

    seconds: float = 0.0
    servers: dict[str, float] = field(default_factory=dict)
    workers: dict[str, list[float]] = field(default_factory=dict)
    cores_busy: dict[str, float] = field(default_factory=dict)

    def describe(self, client_cpu_seconds: float) -> dict[str, Any]:
        """Fractions of one core: each server, the load generator, each core's busy time, and the rest.

        `unaccounted` is machine busy time that none of these processes used: other
        processes on the machine (or kernel work on their behalf) competing with the run.
        """
        servers = {name: round3(used / self.seconds) for name, used in self.servers.items()}
        client = round3(client_cpu_seconds / self.seconds)
        unaccounted = sum(self.cores_busy.values()) - sum(servers.values()) - client
        described: dict[str, Any] = {"server_core_fraction": servers, "load_generator_core_fraction": client,
                                     "core_busy_fraction": self.cores_busy,
                                     "unaccounted_core_fraction": round3(unaccounted)}
        for name, parts in self.workers.items():
            busy = [used for used in parts if used > 0.01 * sum(parts)]
            if len(busy) > 1:
                described.setdefault("worker_cpu_share", {})[name] = [round3(used / sum(busy)) for used in busy]
        return described


@contextlib.contextmanager
def cpu_window(servers: list[Server]) -> Iterator[CpuUse]:
    """Measure, over the block, each server's CPU time and how busy each core was (filled in on exit).

    Core busy time includes every process on the machine, so a core that is busy while
    the servers on it are not points at a neighbour's load, not at the server measured.
    """
    before = {server.name: server.cpu_seconds() for server in servers}
    workers_before = {server.name: server.worker_cpu_seconds() for server in servers}
    cores_before, began = core_busy_ticks(), time.perf_counter()
    use = CpuUse()
    yield use
    use.seconds = time.perf_counter() - began
    use.servers = {server.name: server.cpu_seconds() - before[server.name] for server in servers}
    use.workers = {server.name: sorted((used - workers_before[server.name].get(pid, 0.0)
                                        for pid, used in server.worker_cpu_seconds().items()), reverse=True)
                   for server in servers}
    ticks = os.sysconf("SC_CLK_TCK")
    use.cores_busy = {core: round3((busy - cores_before.get(core, 0)) / ticks / use.seconds)
                      for core, busy in core_busy_ticks().items()}


def background_load(servers: list[Server], seconds: float = 1.0) -> float:
    """Cores' worth of CPU that processes other than this one and `servers` used over `seconds`."""
    with cpu_window(servers) as use:
        before = time.process_time()
        time.sleep(seconds)
        mine = time.process_time() - before
    return use.describe(mine)["unaccounted_core_fraction"]


def wait_for_quiet(servers: list[Server], max_wait_s: float, threshold: float = QUIET_CORES) -> float:
    """Wait, at most `max_wait_s`, until other processes use under `threshold` of a core; the last reading.

    On a shared machine other work comes and goes; starting a measurement in a quiet
    moment makes its figures about the system measured. The reading goes in the output.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        load = background_load(servers)
        if load <= threshold or time.monotonic() >= deadline:
            return round3(load)
