"""Gateway overhead: added latency and throughput against the upstream alone, and against LiteLLM.

Prints one JSON object. Every figure is a ratio or a difference against a baseline measured
in the same run, on the same machine, with the same request body and the same client:

- ``sequential``: p50/p99 of requests sent one at a time (keep-alive `http.client`),
  rotating direct-to-upstream, through-the-gateway, and a control (a second minimal
  responder pinned to the gateway's core, called directly), and the gateway's added ms.
  The control shows what the core itself adds: its placement, and other processes that
  the scheduler puts on it. A gateway tail that the control shares is the machine's; a
  phase disturbed by other processes is repeated (3 attempts at most), the least
  disturbed one is reported and every attempt is listed.
- ``sdk``: the same with the `openai` SDK, to show how the added time compares with a
  real client's own overhead.
- ``throughput``: req/s at a fixed concurrency (aiohttp keep-alive client) for the upstream
  alone, the gateway with one worker, and two workers on one core and on both cores, in
  rotating rounds; the best round counts (as `timeit` takes the minimum: other processes
  on the machine only ever slow a round down), every round is listed. CPU use per process
  and per core says which core was the bottleneck, and `rps_per_server_core` (requests per
  CPU-second of the server under test) is the capacity figure that other load on the
  machine disturbs least.
- ``litellm``: the same sequential and throughput measures through LiteLLM's proxy, when
  it is installed (see bench/README.md); null with the reason otherwise.

Upstreams: ``responder`` (a minimal aiohttp server returning a fixed completion) and
``simulator`` (`shadowzoo sim --fast`). The responder is the reported one: it costs the
least CPU, so the figures are about the proxy, not the upstream.

Placement (two cores): gateway or LiteLLM on core 0; upstream and load generator on core 1.

Run from the repository root: ``.venv/bin/python -m bench.gateway [--upstream responder]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import BenchError
from bench.harness.cpu import QUIET_CORES, cpu_window, wait_for_quiet
from bench.harness.figures import emit, ratio, round3, summary, target_check
from bench.harness.litellm import find_litellm, litellm_proxy, litellm_version
from bench.harness.load import Target, closed_loop, sequential_latencies
from bench.harness.placement import Placement, pin_self, placement
from bench.harness.scenario import CLIENT_REQUEST, GATEWAY_KEY, make_workspace, upstream_request
from bench.harness.servers import Server, gateway, responder, scratch_dir, simulator, started

UPSTREAMS = ("responder", "simulator")
REPORTED_UPSTREAM = "responder"
MAX_REQUESTS_PER_POINT = 200_000
WARMUP_SECONDS = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", choices=(*UPSTREAMS, "both"), default="both")
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per target")
    parser.add_argument("--warmup", type=int, default=200, help="sequential warm-up requests per target")
    parser.add_argument("--sdk-requests", type=int, default=500, help="openai SDK requests per target (0 = skip)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one throughput point")
    parser.add_argument("--rounds", type=int, default=3, help="rotations over the throughput configurations")
    parser.add_argument("--litellm", help="path to LiteLLM's `litellm` executable (default: the bench venv's)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM baseline")
    parser.add_argument("--litellm-requests", type=int, default=1000, help="sequential requests through LiteLLM")
    parser.add_argument("--sequential-attempts", type=int, default=3,
                        help="repeat a sequential phase disturbed by other processes, up to this many attempts")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each measurement, wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--keep", action="store_true", help="keep workspaces and server logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = placement()
    pin_self(layout.client_cores)
    upstreams = UPSTREAMS if args.upstream == "both" else (args.upstream,)
    began = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "gateway",
        "placement": {**layout.describe(), "note": _placement_note(layout)},
        "settings": {key: value for key, value in vars(args).items() if key not in ("keep", "litellm")},
        "machine": {"loadavg_1m_at_start": round3(os.getloadavg()[0])},
        "upstreams": {name: measure_upstream(name, args, layout) for name in upstreams},
    }
    reported = REPORTED_UPSTREAM if REPORTED_UPSTREAM in upstreams else upstreams[0]
    result["reported_upstream"] = reported
    result["targets"] = targets(result["upstreams"][reported])
    result["machine"]["loadavg_1m_at_end"] = round3(os.getloadavg()[0])
    result["seconds"] = round(time.perf_counter() - began, 1)
    emit(result)


def _placement_note(layout: Placement) -> str:
    if not layout.server_cores:
        return "fewer than two cores (or no taskset): nothing pinned, figures include client/server contention"
    return ("gateway/LiteLLM pinned to core %s; upstream and load generator share core %s. The direct baseline "
            "therefore has the load generator and upstream competing for one core, exactly as they do when the "
            "gateway is measured." % (layout.server_cores, layout.client_cores))


def measure_upstream(kind: str, args: argparse.Namespace, layout: Placement) -> dict[str, Any]:
    """Every figure for one kind of upstream; all servers are stopped before returning."""
    work = scratch_dir(f"gateway-{kind}-")
    try:
        with contextlib.ExitStack() as stack:
            maker = responder if kind == "responder" else simulator
            upstream = started(stack, maker(work, layout.client_cores))
            workspace = make_workspace(work, upstream.base_url)
            one_worker = started(stack, gateway(workspace, work, layout.server_cores, workers=1))
            control = started(stack, responder(work, layout.server_cores, name="core-control"))
            direct = Target.of("direct", upstream.port, upstream_request())
            through = Target.of("gateway", one_worker.port, CLIENT_REQUEST)
            checks = Target.of("core_control", control.port, upstream_request())
            figures: dict[str, Any] = {
                "sequential": sequential_section(direct, through, checks, [upstream, one_worker, control], args),
                "sdk": sdk_section(upstream, one_worker, args) if args.sdk_requests else None,
            }
            two_workers_one_core = started(stack, gateway(workspace, work, layout.server_cores, workers=2))
            two_workers_all_cores = started(stack, gateway(workspace, work, layout.every_core, workers=2))
            points = {
                "direct": (direct, upstream),
                "gateway_1w": (through, one_worker),
                "gateway_2w_one_core": (Target.of("gateway", two_workers_one_core.port, CLIENT_REQUEST),
                                        two_workers_one_core),
                "gateway_2w_both_cores": (Target.of("gateway", two_workers_all_cores.port, CLIENT_REQUEST),
                                          two_workers_all_cores),
            }
            figures["throughput"] = throughput_section(points, upstream, args)
            for server in (two_workers_one_core, two_workers_all_cores):
                server.stop()
            figures["litellm"] = litellm_section(upstream, direct, checks, figures, args, layout, work, stack)
            return figures
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- sequential


def sequential_section(direct: Target, through: Target, control: Target, servers: list[Server],
                       args: argparse.Namespace, rounds: int | None = None) -> dict[str, Any]:
    """Direct vs proxied vs core-control latency, one request at a time; the proxy's added p50/p99.

    Other processes on the machine can land on the proxy's core mid-phase and inflate its
    tail (the core control then shows it too). Such a phase is repeated, at most
    `--sequential-attempts` times in all: the least disturbed attempt is reported, every
    attempt's added figures and background are listed.
    """
    attempts: list[dict[str, Any]] = []
    for _ in range(args.sequential_attempts):
        attempts.append(_sequential_attempt(direct, through, control, servers, args, rounds or args.requests))
        if attempts[-1]["cpu"]["unaccounted_core_fraction"] <= QUIET_CORES:
            break
    best = min(attempts, key=lambda attempt: attempt["cpu"]["unaccounted_core_fraction"])
    keys = ("added_p50_ms", "added_p99_ms", "core_control_added_p99_ms")
    return {**best, "attempts": [{key: attempt[key] for key in keys}
                                 | {"unaccounted_core_fraction": attempt["cpu"]["unaccounted_core_fraction"]}
                                 for attempt in attempts]}


def _sequential_attempt(direct: Target, through: Target, control: Target, servers: list[Server],
                        args: argparse.Namespace, rounds: int) -> dict[str, Any]:
    background = wait_for_quiet(servers, args.quiet_wait)
    with cpu_window(servers) as use:
        before = time.process_time()
        latencies = sequential_latencies([direct, through, control], rounds, args.warmup, max_seconds=240)
        client_cpu = time.process_time() - before
    base, proxied, core = (summary(latencies[target.name]) for target in (direct, through, control))
    return {
        "client": "http.client keep-alive, one request at a time",
        "direct_ms": base,
        f"{through.name}_ms": proxied,
        "core_control_ms": core,
        "added_p50_ms": _difference(proxied["p50"], base["p50"]),
        "added_p99_ms": _difference(proxied["p99"], base["p99"]),
        "core_control_added_p50_ms": _difference(core["p50"], base["p50"]),
        "core_control_added_p99_ms": _difference(core["p99"], base["p99"]),
        "ratio_p50": ratio(proxied["p50"], base["p50"]),
        "ratio_p99": ratio(proxied["p99"], base["p99"]),
        "background_cores_before": background,
        "cpu": use.describe(client_cpu),
    }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round3(a - b)


def sdk_section(upstream: Server, proxy: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Direct vs gateway with the official `openai` client (default httpx transport), alternating."""
    import openai

    clients = {
        "direct": (openai.OpenAI(base_url=upstream.base_url, api_key="bench", max_retries=0), upstream_request()),
        "gateway": (openai.OpenAI(base_url=proxy.base_url, api_key=GATEWAY_KEY, max_retries=0), CLIENT_REQUEST),
    }
    latencies: dict[str, list[float]] = {name: [] for name in clients}
    deadline = time.monotonic() + 120
    for number in range(args.warmup + args.sdk_requests):
        if time.monotonic() > deadline:
            break
        for name in clients if number % 2 == 0 else reversed(list(clients)):
            client, body = clients[name]
            began = time.perf_counter()
            client.chat.completions.create(**body)
            if number >= args.warmup:
                latencies[name].append((time.perf_counter() - began) * 1000)
    for client, _ in clients.values():
        client.close()
    base, proxied = summary(latencies["direct"]), summary(latencies["gateway"])
    return {
        "client": f"openai {openai.__version__} (sync, httpx), one request at a time",
        "direct_ms": base,
        "gateway_ms": proxied,
        "added_p50_ms": _difference(proxied["p50"], base["p50"]),
        "ratio_p50": ratio(proxied["p50"], base["p50"]),
    }


# ---------------------------------------------------------------- throughput


def throughput_section(points: dict[str, tuple[Target, Server]], upstream: Server,
                       args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop req/s at `--concurrency` per configuration, rotating configurations each round."""
    for target, _ in points.values():
        asyncio.run(closed_loop(target, args.concurrency, WARMUP_SECONDS, MAX_REQUESTS_PER_POINT))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in points}
    for _ in range(args.rounds):
        for name, (target, server) in points.items():
            runs[name].append(_throughput_point(target, server, upstream, args))
    figures = {name: _best_point(samples) for name, samples in runs.items()}
    rps = {name: point["rps"] for name, point in figures.items()}
    return {
        "client": f"aiohttp keep-alive, {args.concurrency} concurrent workers, {args.seconds:g}s per point, "
                  f"{args.rounds} rotating rounds, best round reported",
        "points": figures,
        "gateway_1w_vs_direct": ratio(rps["gateway_1w"], rps["direct"]),
        "gateway_2w_one_core_vs_1w": ratio(rps["gateway_2w_one_core"], rps["gateway_1w"]),
        "gateway_2w_both_cores_vs_1w": ratio(rps["gateway_2w_both_cores"], rps["gateway_1w"]),
        "gateway_1w_cpu_us_per_request": figures["gateway_1w"]["server_cpu_us_per_request"],
        "upstream_cpu_us_per_request": figures["direct"]["server_cpu_us_per_request"],
        "gateway_vs_upstream_cpu_per_request": ratio(figures["gateway_1w"]["server_cpu_us_per_request"],
                                                     figures["direct"]["server_cpu_us_per_request"]),
        "gateway_1w_rps_per_server_core": figures["gateway_1w"]["rps_per_server_core"],
    }


def _throughput_point(target: Target, server: Server, upstream: Server, args: argparse.Namespace) -> dict[str, Any]:
    servers = [upstream] if server is upstream else [server, upstream]
    background = wait_for_quiet(servers, args.quiet_wait)
    with cpu_window(servers) as use:
        load = asyncio.run(closed_loop(target, args.concurrency, args.seconds, MAX_REQUESTS_PER_POINT))
    latency = summary(load.latencies_ms)
    server_cpu = use.servers[server.name]
    return {
        "rps": round(load.rps, 1),
        "errors": load.errors,
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "server_cpu_us_per_request": round(server_cpu / max(load.requests, 1) * 1e6, 1),
        "rps_per_server_core": round(load.requests / server_cpu, 1) if server_cpu else None,
        "background_cores_before": background,
        "cpu": use.describe(load.client_cpu_seconds),
    }


def _best_point(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the highest req/s, plus every round's req/s and the median."""
    best = max(samples, key=lambda point: point["rps"])
    rates = [point["rps"] for point in samples]
    return {**best, "rps_each_round": rates, "rps_median": round(statistics.median(rates), 1)}


# ---------------------------------------------------------------- LiteLLM


def litellm_section(upstream: Server, direct: Target, control: Target, figures: dict[str, Any],
                    args: argparse.Namespace, layout: Placement, work: Path,
                    stack: contextlib.ExitStack) -> dict[str, Any]:
    """LiteLLM's proxy on the same upstream and load; null figures with the reason when unavailable."""
    if args.no_litellm:
        return {"available": False, "reason": "skipped (--no-litellm)"}
    executable, reason = find_litellm(args.litellm)
    if executable is None:
        return {"available": False, "reason": reason}
    master_key = f"sk-{secrets.token_hex(32)}"
    try:
        proxy = started(stack, litellm_proxy(executable, upstream.base_url, work, layout.server_cores, master_key))
    except BenchError as exc:
        return {"available": False, "reason": f"LiteLLM did not start: {exc}"}
    through = Target.of("litellm", proxy.port, CLIENT_REQUEST, key=master_key)
    sequential = sequential_section(direct, through, control, [upstream, proxy], args, rounds=args.litellm_requests)
    asyncio.run(closed_loop(through, args.concurrency, WARMUP_SECONDS, MAX_REQUESTS_PER_POINT))
    rounds = [_throughput_point(through, proxy, upstream, args) for _ in range(args.rounds)]
    throughput = _best_point(rounds)
    proxy.stop()
    gateway_added = figures["sequential"]["added_p50_ms"]
    gateway = figures["throughput"]["points"]["gateway_1w"]
    return {
        "available": True,
        "version": litellm_version(executable),
        "setup": "litellm --config (one model_list entry: openai/<model> on the same upstream), one uvicorn "
                 "worker, master key set, defaults otherwise (uvicorn access log on, as shipped)",
        "sequential": sequential,
        "throughput": throughput,
        "gateway_added_p50_vs_litellm": ratio(gateway_added, sequential["added_p50_ms"]),
        "gateway_1w_rps_vs_litellm": ratio(gateway["rps"], throughput["rps"]),
        "gateway_1w_rps_per_core_vs_litellm": ratio(gateway["rps_per_server_core"], throughput["rps_per_server_core"]),
    }


# ---------------------------------------------------------------- targets


def targets(figures: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets beside the measured figures of the reported upstream."""
    sequential, throughput, litellm = figures["sequential"], figures["throughput"], figures["litellm"]
    available = litellm.get("available")
    return {
        "added_p50_ms": target_check(sequential["added_p50_ms"], 0.5, at_most=True),
        "added_p99_ms": target_check(sequential["added_p99_ms"], 2.0, at_most=True),
        "added_p50_vs_litellm": target_check(litellm.get("gateway_added_p50_vs_litellm") if available else None,
                                             0.1, at_most=True),
        "rps_1w_vs_litellm": target_check(litellm.get("gateway_1w_rps_vs_litellm") if available else None,
                                          20, at_most=False),
        "rps_per_core_1w_vs_litellm": target_check(
            litellm.get("gateway_1w_rps_per_core_vs_litellm") if available else None, 20, at_most=False),
        "second_worker_gain": {
            **target_check(throughput["gateway_2w_both_cores_vs_1w"], 1.8, at_most=False),
            "note": "near-linear needs a free core per worker; this machine has two, and the second one also "
                    "runs the upstream and the load generator, so the ceiling here is well below 2",
        },
    }


if __name__ == "__main__":
    main()
