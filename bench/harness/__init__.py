"""Helpers the gateway benchmarks (`bench/gateway.py`, `bench/isolation.py`) share, one idea a module.

Servers run as subprocesses on free loopback ports, each pinned with `taskset`, logged to
a file and stopped by the `ExitStack` that started them (`servers`, `litellm`); load
generators use keep-alive connections and are bounded in count and in time (`load`);
CPU is read from /proc (`procfs`, `cpu`); every bench prints one JSON object (`figures`).
"""

from __future__ import annotations


class BenchError(RuntimeError):
    """A benchmark cannot produce its figure (a server did not start, a request failed)."""
