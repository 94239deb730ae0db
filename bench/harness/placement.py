"""Placement on two cores: the server under test (gateway or LiteLLM) runs on the first core;
the upstream and the load generator share the second, so the process measured never
competes with the process measuring it. With fewer cores nothing is pinned, and the
placement printed says so.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    """Which cores the server under test and the measuring side (client + upstream) use."""

    server_cores: str | None
    client_cores: str | None
    every_core: str | None
    cpus: int

    def describe(self) -> dict[str, Any]:
        return {
            "cpus_available": self.cpus,
            "server_under_test_cores": self.server_cores or "unpinned",
            "upstream_and_load_generator_cores": self.client_cores or "unpinned",
        }


def placement() -> Placement:
    """Server under test on the first core, the measuring side on the second (unpinned below 2 cores).

    Call it before `pin_self`: `every_core` is the set this process may use at that moment.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2 or shutil.which("taskset") is None:
        return Placement(None, None, None, len(cores))
    return Placement(str(cores[0]), str(cores[1]), ",".join(str(core) for core in cores), len(cores))


def pin_self(cores: str | None) -> None:
    """Move the load generator (this process) onto `cores`; no-op when unpinned."""
    if cores:
        os.sched_setaffinity(0, {int(core) for core in cores.split(",")})
