"""Route propagation (backend: distributed): from a promotion through one admin to both gateway
hosts answering with the new champion.

Prints one JSON object. Two gateway "hosts" (two workspaces, each its own state dir and its own
`shadowzoo gateway` with its route follower) share one PostgreSQL and one object store; the admin host's registry
promotes, alternately, one of two champions, `--publications` times. After each promotion
the benchmark asks both gateways, one request every `--probe-ms`, which champion they answer
with (the `x-shadowzoo-version` header), and records when each first answers with the new
one. The admin host writes its own routes.json as it publishes; the other host learns of the
table only through the control plane, so its time is the propagation the issue targets
("within 2 s"). Figures are seconds and ratios to the follower's poll interval
(`shadow.gateway.route_follower.POLL_INTERVAL_S`): one poll plus one file watch
(`shadow.gateway.routing.POLL_INTERVAL_S`) is the expected order.

Run from the repository root: ``.venv/bin/python -m bench.route_propagation [--publications 20] [--keep]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from bench.harness import BenchError
from bench.harness.engines import start_engines
from bench.harness.figures import emit, ratio, round3, target_check
from bench.harness.scenario import CLIENT_REQUEST, GATEWAY_KEY, LOOPBACK, SLOT, UPSTREAM_MODEL, make_workspace
from bench.harness.servers import Server, gateway, responder, scratch_dir, started
from registry import NewVariant, Registry, load_workspace
from shadow.gateway.route_follower import POLL_INTERVAL_S
from shadow.gateway.routing import POLL_INTERVAL_S as WATCH_INTERVAL_S

TARGET_S = 2.0
WAIT_LIMIT_S = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publications", type=int, default=20)
    parser.add_argument("--probe-ms", type=float, default=10.0, help="Time between probes of one gateway.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory.")
    args = parser.parse_args()
    scratch = scratch_dir("route-propagation-")
    try:
        emit(run(scratch, args.publications, args.probe_ms / 1000))
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run(scratch: Path, publications: int, probe_s: float) -> dict:
    """Start PostgreSQL, an upstream and two gateway hosts; time each promotion until both serve it."""
    with contextlib.ExitStack() as stack:
        engines = start_engines(stack, scratch)
        upstream = started(stack, responder(scratch, None))
        admin, other = (_distributed_host(scratch / name, upstream.base_url, engines.section(name))
                        for name in ("host-a", "host-b"))
        champions = _two_champions(admin)
        gateways = {"host-a": started(stack, gateway(admin, scratch, None)),
                    "host-b": started(stack, gateway(other, scratch, None))}
        with Registry.open(load_workspace(admin)) as registry:
            samples = [_propagation(registry, champions[number % 2], gateways, probe_s)
                       for number in range(publications)]
    return _figures(samples, publications, probe_s)


def _distributed_host(root: Path, upstream_url: str, section: dict) -> Path:
    """A bench workspace on the distributed backend, as the host its `distributed:` section names."""
    root.mkdir(parents=True)
    return make_workspace(root, upstream_url, settings={"backend": "distributed", "distributed": section})


def _two_champions(admin: Path) -> list[str]:
    """The slot's current champion and a second chat variant to alternate with."""
    with Registry.open(load_workspace(admin)) as registry:
        first = registry.champion(SLOT).version_id
        second = registry.register(NewVariant(
            slot=SLOT, label="next", kind="chat", skill_text="Answer with one category.",
            config={"kind": "chat", "provider": "sim", "model": UPSTREAM_MODEL, "params": {}},
        )).variant.version_id
    return [second, first]


def _propagation(registry: Registry, version_id: str, gateways: dict[str, Server], probe_s: float) -> dict[str, float]:
    """Seconds from the promotion's start to each host's first answer naming `version_id`, and the publish call's own."""
    started_at = time.monotonic()
    registry.promote(SLOT, version_id, "bench", None, None)
    sample = {"promote_call": time.monotonic() - started_at}
    connections = {name: http.client.HTTPConnection(LOOPBACK, server.port, timeout=30) for name, server in gateways.items()}
    try:
        while len(sample) <= len(gateways):
            if time.monotonic() - started_at > WAIT_LIMIT_S:
                raise BenchError(f"{version_id} not served by every gateway within {WAIT_LIMIT_S:g}s: {sample}")
            for name, connection in connections.items():
                if name not in sample and _served(connection) == version_id:
                    sample[name] = time.monotonic() - started_at
            time.sleep(probe_s)
    finally:
        for connection in connections.values():
            connection.close()
    sample["both"] = max(sample[name] for name in gateways)
    return sample


def _served(connection: http.client.HTTPConnection) -> str:
    """The champion version one chat request is answered by."""
    connection.request("POST", "/v1/chat/completions", body=json.dumps(CLIENT_REQUEST),
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {GATEWAY_KEY}"})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise BenchError(f"the gateway answered {response.status}")
    return response.headers["x-shadowzoo-version"]


def _figures(samples: list[dict[str, float]], publications: int, probe_s: float) -> dict:
    figures: dict = {"publications": publications, "poll_interval_s": POLL_INTERVAL_S,
                     "watch_interval_s": WATCH_INTERVAL_S, "probe_interval_s": probe_s}
    for key in ("promote_call", "host-a", "host-b", "both"):
        values = [sample[key] for sample in samples]
        median, p95 = statistics.median(values), float(np.percentile(values, 95))
        figures[key] = {"median_s": round3(median), "p95_s": round3(p95), "max_s": round3(max(values)),
                        "median_per_poll_interval": ratio(median, POLL_INTERVAL_S),
                        "p95_per_poll_interval": ratio(p95, POLL_INTERVAL_S)}
    figures["target_both_p95_s"] = target_check(figures["both"]["p95_s"], TARGET_S, at_most=True)
    return figures


if __name__ == "__main__":
    main()
