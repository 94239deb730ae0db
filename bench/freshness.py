"""Capture-to-leaderboard freshness (backend: distributed): from a request answered by the gateway
to its pairs stored by the scorer.

Prints one JSON object. One PostgreSQL, one S3 server (`weed mini`), the fast simulator (in a
thread of this process) and the demo workspace on DuckLake; `shadowzoo gateway` (its workers
and its shipper) on gateway host `gw-1`, and `shadowzoo serve --role ingest`, `--role runner`
and `--role scorer`, each a host of its own (its own copy of the workspace and state dir, as
a deployment spreads them: one daemon holding all three would run them on its one DuckDB
connection, one after the other), each with its configured intervals: the gateway flushes captures to the spool every
`gateway.flush_interval_s`, the shipper looks for complete segments every
`shadow.shipper.POLL_S`, ingest runs every `daemon.ingest_interval_s`, the idle runner looks
for new traffic every `ops.daemon.RUNNER_IDLE_S`, and the scorer refreshes every
`daemon.score_interval_s`. `--requests` tickets are sent one every `--gap-ms` (so they meet
those loops at every phase), each labelled at once through `/v1/feedback` (the demo slot scores
by the label); a request's freshness is the time from its answer to the first look (one every
`--probe-ms`, through a registry opened on the lake as any reader opens it) that finds its
pairs with every challenger in the scorer's `paired` table, i.e. on the leaderboard. The same
looks note when its traffic row was stored and when its shadow results with every challenger
were written, so the medians of those stages show where the time goes (a stage found in
the same look as the next is counted at that look). `look_s` is how long a look took: a
request is found at most one probe interval plus one look after it got there.

The baseline is the floor the design sets: the sum of those five intervals, the longest a
request can wait on the loops alone if each stage just missed it (on average it waits about
half of it). Freshness over that sum says how much of the delay is polling and how much is
work; comparing with the embedded backend would mostly compare the same intervals again (it
has all of them but the shipper's). A warm-up request, not counted, waits until the scorer
leads the slot and every process has made its first pass.

Run from the repository root: ``.venv/bin/python -m bench.freshness [--requests 40] [--keep]``.
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
from bench.harness.figures import ratio, round3
from bench.harness.scenario import LOOPBACK
from bench.harness.servers import BIN, Server, gateway, run_in_scratch, started
from ops.daemon import RUNNER_IDLE_S
from registry import Registry, load_workspace
from shadow.shipper import POLL_S as SHIP_POLL_S
from tests.servers import DEMO_SIM, champion_workspace, edit_config, start_simulator

SLOT = "support-triage"
ROLES = ("ingest", "runner", "scorer")
WAIT_LIMIT_S = 120.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--gap-ms", type=float, default=700.0, help="Time between two requests.")
    parser.add_argument("--probe-ms", type=float, default=250.0, help="Time between two looks at the stored pairs.")
    parser.add_argument("--score-interval", type=float, default=5.0, help="daemon.score_interval_s (the demo's).")
    run_in_scratch(parser, "freshness-", run)


def run(scratch: Path, args: argparse.Namespace) -> dict:
    """Start the engines, the simulator, the gateway host and a daemon per role; time each request to its pairs."""
    with contextlib.ExitStack() as stack:
        engines = start_engines(stack, scratch)
        simulator = start_simulator(fast=True)
        stack.callback(simulator.stop)
        workspace_dir = champion_workspace(scratch / "ws", simulator.base_url, daemon={
            "score_interval_s": args.score_interval}, settings={"backend": "distributed",
                                                                 "distributed": engines.section(host="gw-1")})
        config = load_workspace(workspace_dir).config
        intervals = {"gateway.flush_interval_s": config.gateway.flush_interval_s, "shipper_poll_s": SHIP_POLL_S,
                     "daemon.ingest_interval_s": config.daemon.ingest_interval_s, "runner_idle_s": RUNNER_IDLE_S,
                     "daemon.score_interval_s": config.daemon.score_interval_s}
        front = started(stack, gateway(workspace_dir, scratch, None))
        for role in ROLES:
            started(stack, Server(role, [str(BIN / "shadowzoo"), "serve", "--role", role], 0, scratch / f"{role}.log",
                                  cwd=_role_host(workspace_dir, role), health_path=None))
        with Registry.open(load_workspace(workspace_dir)) as registry:
            return _measure(registry, front, intervals, args)


def _measure(registry: Registry, front: Server, intervals: dict[str, float], args: argparse.Namespace) -> dict:
    """A warm-up request, then `--requests` requests one `--gap-ms` apart, each watched from its
    answer until its pairs are stored; the figures."""
    challengers = len([v for v in registry.variants(slot=SLOT, status="active")
                       if v.version_id != registry.champion(SLOT).version_id])
    watch = PairWatch(registry, challengers, args.probe_ms / 1000)
    watch.wait([_ask(front, -1)], WAIT_LIMIT_S + sum(intervals.values()))
    answered = {}
    for number in range(args.requests):
        request_id = _ask(front, number)
        answered[request_id] = time.time()
        watch.watch(request_id)
        _sleep_looking(watch, args.gap_ms / 1000)
    seen = watch.wait(list(answered), WAIT_LIMIT_S)
    delays = {stage: [seen[request].get(stage, seen[request]["paired"]) - answered[request] for request in answered]
              for stage in STAGES}
    return _figures(delays, intervals, challengers, args) | {
        "look_s": {"p50": round3(statistics.median(watch.look_s)), "max": round3(max(watch.look_s))},
        "stored_rows_p50_s": _stored_delays(registry, list(answered))}


STAGES = ("stored", "replayed", "paired")
"""What a look finds of a request: its traffic row stored by ingest, its shadow results with every
challenger written by the runner, its pairs with every challenger stored by the scorer."""


def _stored_delays(registry: Registry, requests: list[str]) -> dict[str, float]:
    """Medians read off the stored rows' own timestamps (all written on this machine's clock): a
    request's `ingested_at` after its `received_at` at the gateway, and a segment's `ingested_at`
    after its creation (the time its name begins with: the gateway's flush), i.e. shipping and
    waiting for ingest."""
    with registry.database.reading() as db:
        traffic = db.execute("SELECT median(epoch(ingested_at) - epoch(received_at)) FROM traffic "
                             "WHERE request_id IN (SELECT unnest(?))", [requests]).fetchone()[0]
        segments = db.execute(
            "SELECT median(epoch(ingested_at) - CAST(split_part(split_part(segment, '/', 2), '-', 1) AS BIGINT) / 1000) "
            "FROM spool_segments").fetchone()[0]
    return {"received_to_ingested": round3(traffic), "segment_created_to_ingested": round3(segments)}


def _role_host(workspace_dir: Path, role: str) -> Path:
    """A copy of the workspace (its config and specs, not its state dir) as host `role`: one
    daemon per host, as a deployment spreads them."""
    host_dir = workspace_dir.parent / role
    shutil.copytree(workspace_dir, host_dir, ignore=shutil.ignore_patterns(".shadowzoo"))
    edit_config(host_dir, lambda config: config["distributed"].update(host=role))
    return host_dir


class PairWatch:
    """Looks at the lake as any reader does: when each watched request was first stored, replayed and paired."""

    def __init__(self, registry: Registry, challengers: int, probe_s: float) -> None:
        self.registry = registry
        self.challengers = challengers
        self.probe_s = probe_s
        self.pending: set[str] = set()
        self.seen: dict[str, dict[str, float]] = {}
        self.last_look = 0.0
        self.look_s: list[float] = []

    def watch(self, request_id: str) -> None:
        """Look out for this request from now on (and look now, if it is time)."""
        self.pending.add(request_id)
        self.look()

    def look(self) -> None:
        """One look, if `probe_s` has passed since the last; each stage a request has reached gets
        the start time of the first look that found it there."""
        now = time.time()
        if not self.pending or now - self.last_look < self.probe_s:
            return
        self.last_look = now
        with self.registry.database.reading() as db:
            found = db.execute(
                "SELECT t.request_id, count(DISTINCT s.version_id), count(DISTINCT p.version_id) FROM traffic t "
                "LEFT JOIN shadow_results s ON s.request_seq = t.seq LEFT JOIN paired p ON p.request_seq = t.seq "
                "WHERE t.request_id IN (SELECT unnest(?)) GROUP BY 1", [sorted(self.pending)]).fetchall()
        self.look_s.append(time.time() - now)
        for request_id, replayed, paired in found:
            reached = {"stored": True, "replayed": replayed >= self.challengers, "paired": paired >= self.challengers}
            times = self.seen.setdefault(request_id, {})
            for stage in STAGES:
                if reached[stage]:
                    times.setdefault(stage, now)
            if "paired" in times:
                self.pending.discard(request_id)

    def wait(self, requests: list[str], limit_s: float) -> dict[str, dict[str, float]]:
        """Look until every one of `requests` is paired (bounded by `limit_s`); when each reached each stage."""
        self.pending |= {request for request in requests if "paired" not in self.seen.get(request, {})}
        deadline = time.monotonic() + limit_s
        while self.pending:
            if time.monotonic() > deadline:
                raise BenchError(f"{len(self.pending)} requests not on the leaderboard within {limit_s:g}s")
            _sleep_looking(self, self.probe_s)
        return self.seen


def _sleep_looking(watch: PairWatch, seconds: float) -> None:
    """Wait `seconds`, looking at the pairs as often as the watch allows meanwhile."""
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        time.sleep(min(left, watch.probe_s / 5))
        watch.look()


_TICKETS = [json.loads(line) for line in (DEMO_SIM.parent / "tickets.jsonl").read_text().splitlines()]


def _ask(front: Server, number: int) -> str:
    """The demo's ticket `number` through the gateway, then its label; shadowzoo's id of the request."""
    ticket, client_id = _TICKETS[number % len(_TICKETS)], f"fresh-{number}"
    connection = http.client.HTTPConnection(LOOPBACK, front.port, timeout=30)
    try:
        request_id = _post(connection, "/v1/chat/completions", {
            "model": SLOT, "messages": [{"role": "user", "content": ticket["input"]}]},
            {"x-shadowzoo-request-id": client_id}).headers["x-shadowzoo-request-id"]
        _post(connection, "/v1/feedback", {"request_id": request_id, "label": ticket["expected"]})
    finally:
        connection.close()
    return request_id


def _post(connection: http.client.HTTPConnection, path: str, body: dict,
          headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    response.read()
    if response.status not in (200, 202):
        raise BenchError(f"the gateway answered {path} with {response.status}")
    return response


def _figures(delays: dict[str, list[float]], intervals: dict[str, float], challengers: int,
             args: argparse.Namespace) -> dict:
    floor = sum(intervals.values())
    paired = delays["paired"]
    p50, p95 = statistics.median(paired), float(np.percentile(paired, 95))
    return {
        "bench": "freshness",
        "requests": len(paired),
        "challengers": challengers,
        "intervals_s": intervals,
        "floor_s": round3(floor),
        "probe_interval_s": args.probe_ms / 1000,
        "freshness_s": {"p50": round3(p50), "p95": round3(p95), "min": round3(min(paired)), "max": round3(max(paired))},
        "p50_vs_floor": ratio(p50, floor),
        "p95_vs_floor": ratio(p95, floor),
        "stages_p50_s": {f"answered_to_{stage}": round3(statistics.median(values)) for stage, values in delays.items()},
    }


if __name__ == "__main__":
    main()
