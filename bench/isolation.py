"""Champion isolation: champion latency through the gateway while the shadow side is busy.

Prints one JSON object. The gateway never calls challengers; the daemon does. So the
experiment is: champion p50/p99 through the gateway under a fixed open-loop load (a)
alone, with no shadow work anywhere, and (b) while a shadow driver, in its own process as
the daemon would be, replays that same traffic at 100% sampling against one challenger
whose upstream is healthy, 2 s slow, or failing half of its calls. Runs come in adjacent
alone/busy pairs, so both halves of a pair see nearly the same background load; each
busy figure is a ratio against its alone runs (target: <= 1.05). A control scenario
pairs alone with alone: its ratios are the noise floor of this machine. And at every tick
of the open loop a second request goes straight to the champion's upstream
(`direct_control`): when its latency moves as much as the champion's, the change is the
machine's (load generator, upstream, kernel), not the gateway's.

The shadow driver does the daemon's work: `shadow.ingest.ingest_spool` of the gateway's
spool, then `shadow.runner.ShadowRunner.run_once` for the challenger, in a loop, against
the DuckDB file (`--shadow runner`, the default). `--shadow sdk` replaces it with a bare
loop that tails the spool and calls the challenger with the `openai` SDK, 64 calls in
flight at most, for when the runner is not available.

Each busy scenario runs in four placements (two cores): the shadow driver on the
gateway's core (the worst case: the OS scheduler alone protects the gateway), the same at
nice 19 and under SCHED_IDLE (what a deployment can do about it), and on the other core
(with the load generator, the champion's upstream and the challenger simulator).

`--pinning` measures what `serve --gateway-cpus/--daemon-cpus` buys instead, in one run: the
healthy scenario with the gateway and the shadow driver both unpinned (the OS places them,
as `serve` without the options), then both pinned to disjoint cores (the gateway on the
first, the driver on the second, as `serve --gateway-cpus 0 --daemon-cpus 1`), each busy
run against an adjacent alone run on the same gateway (target: pinned p99 ratio <= 1.1).

Run from the repository root: ``.venv/bin/python -m bench.isolation [--rate 200 --seconds 5 --pairs 3]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench.harness.cpu import CpuUse, cpu_window, wait_for_quiet
from bench.harness.figures import emit, ratio, summary, target_check
from bench.harness.load import LoadResult, Target, open_loop
from bench.harness.placement import Placement, pin_self, placement
from bench.harness.scenario import CLIENT_REQUEST, SKILL, SLOT, make_workspace, upstream_request
from bench.harness.servers import Server, gateway, responder, scratch_dir, simulator, started

CHALLENGER_PROVIDER = "challengers"
SCENARIOS = {
    "healthy": {"latency": {"base_ms": 20}},
    "slow_2s": {"latency": {"base_ms": 2000}},
    "failing_50pct": {"errors": {"http_500": 0.5}},
}
ON_GATEWAY_CORE: dict[str, tuple[str, ...]] = {
    "shadow_on_gateway_core": (),
    "shadow_on_gateway_core_nice19": ("nice", "-n", "19"),
    "shadow_on_gateway_core_sched_idle": ("chrt", "--idle", "0"),
}
DRIVER_READY = "shadow driver ready"
SDK_IN_FLIGHT = 64
SDK_QUEUE = 2000
POLL_S = 0.25
TARGET_RATIO = 1.05
PINNED_TARGET_RATIO = 1.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="champion requests per second (open loop)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one run")
    parser.add_argument("--pairs", type=int, default=3, help="alone/busy pairs per scenario")
    parser.add_argument("--shadow", choices=("runner", "sdk"), default="runner", help="what drives the shadow load")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="before each pair, wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--keep", action="store_true", help="keep the workspace and server logs")
    parser.add_argument("--pinning", action="store_true",
                        help="only compare unpinned with pinned gateway and shadow driver (serve --gateway-cpus/--daemon-cpus)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    layout = placement()
    pin_self(layout.client_cores)
    began = time.perf_counter()
    work = scratch_dir("isolation-")
    try:
        result = (measure_pinning if args.pinning else measure)(args, layout, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - began, 1)
    emit(result)


# ---------------------------------------------------------------- the experiment


def measure(args: argparse.Namespace, layout: Placement, work: Path) -> dict[str, Any]:
    """Paired alone/busy runs per scenario and placement, and an alone/alone control for the noise floor."""
    placements = {name: (layout.server_cores, wrapper) for name, wrapper in ON_GATEWAY_CORE.items()}
    placements["shadow_on_other_core"] = (layout.client_cores, ())
    with contextlib.ExitStack() as stack:
        upstream = started(stack, responder(work, layout.client_cores))
        challengers = started(stack, simulator(work, layout.client_cores, _challenger_yaml(), fast=False,
                                               name="challenger-sim"))
        workspace = make_workspace(work, upstream.base_url, {CHALLENGER_PROVIDER: challengers.base_url})
        versions = _register_challengers(workspace)
        proxy = started(stack, gateway(workspace, work, layout.server_cores))
        bench = _Bench(args, Target.of("gateway", proxy.port, CLIENT_REQUEST),
                       Target.of("direct", upstream.port, upstream_request()), proxy,
                       [proxy, upstream, challengers], workspace, work)
        asyncio.run(open_loop(bench.champion, args.rate, 2.0))
        control = _scenario_figures(bench.pairs(version=None, cores=None, wrapper=()))
        busy = {name: {scenario: _scenario_figures(bench.pairs(versions[scenario], cores, wrapper))
                       for scenario in SCENARIOS}
                for name, (cores, wrapper) in placements.items()}
    return _figures(args, layout, control, busy)


def measure_pinning(args: argparse.Namespace, layout: Placement, work: Path) -> dict[str, Any]:
    """The healthy scenario, unpinned and pinned, in alternating alone/busy pairs on two gateways."""
    if layout.server_cores is None:
        raise SystemExit("--pinning needs two cores and taskset")
    with contextlib.ExitStack() as stack:
        upstream = started(stack, responder(work, None))
        challengers = started(stack, simulator(work, None, _challenger_yaml(), fast=False, name="challenger-sim"))
        workspace = make_workspace(work, upstream.base_url, {CHALLENGER_PROVIDER: challengers.base_url})
        version = _register_challengers(workspace)["healthy"]
        free = started(stack, gateway(workspace, work, None))
        pinned = started(stack, gateway(workspace, work, layout.server_cores))
        servers = [free, pinned, upstream, challengers]
        benches = {name: _Bench(args, Target.of("gateway", proxy.port, CLIENT_REQUEST),
                                Target.of("direct", upstream.port, upstream_request()), proxy, servers, workspace, work)
                   for name, proxy in (("unpinned", free), ("pinned", pinned))}
        for bench in benches.values():
            asyncio.run(open_loop(bench.champion, args.rate, 2.0))
        runs: dict[str, list[tuple[_Run, _Run]]] = {"unpinned": [], "pinned": []}
        for _ in range(args.pairs):  # interleaved, so both see the same background load
            runs["unpinned"].append((benches["unpinned"].run(None, None, ()), benches["unpinned"].run(version, None, ())))
            runs["pinned"].append((benches["pinned"].run(None, None, ()),
                                   benches["pinned"].run(version, layout.client_cores, ())))
    figures = {name: _scenario_figures(pairs) for name, pairs in runs.items()}
    return {
        "bench": "isolation --pinning",
        "placement": {"unpinned": "gateway and shadow driver on any core (the OS places them; serve without options)",
                      "pinned": f"gateway on core {layout.server_cores}, shadow driver on core {layout.client_cores} "
                                f"(serve --gateway-cpus {layout.server_cores} --daemon-cpus {layout.client_cores})",
                      "upstream_challenger_sim_and_load_generator": f"load generator on core {layout.client_cores}, "
                                                                   "upstream and challenger simulator unpinned"},
        "champion_load": f"open loop, {args.rate:g} req/s, {args.seconds:g}s per run, {args.pairs} alone/busy pairs "
                         "each, interleaved; challenger: healthy (20 ms)",
        "p99_ratio_busy_vs_alone": {name: f["p99_ratio"] for name, f in figures.items()},
        "p99_pinned_vs_unpinned_busy": ratio(figures["pinned"]["busy_ms"]["p99"], figures["unpinned"]["busy_ms"]["p99"]),
        "figures": figures,
        "targets": {"pinned.p99": target_check(figures["pinned"]["p99_ratio"], PINNED_TARGET_RATIO, at_most=True)},
    }


def _challenger_yaml() -> str:
    """One simulator serving a model per scenario (not --fast: latency and errors are the point)."""
    models = {f"chal-{scenario}": {"output_tokens": 8, **behaviour} for scenario, behaviour in SCENARIOS.items()}
    return yaml.safe_dump({"seed": 1, "models": models})


def _register_challengers(workspace: Path) -> dict[str, str]:
    """One challenger per scenario in the slot; the shadow driver is told which one to run."""
    from registry import NewVariant, Registry, load_workspace

    with Registry.open(load_workspace(workspace)) as registry:
        return {scenario: registry.register(NewVariant(
            slot=SLOT, label=scenario.replace("_", "-"), kind="chat", skill_text=SKILL,
            config={"kind": "chat", "provider": CHALLENGER_PROVIDER, "model": f"chal-{scenario}", "params": {}},
        )).variant.version_id for scenario in SCENARIOS}


@dataclass
class _Run:
    """One open-loop champion run: its load figures, CPU use and the shadow driver's report (if any)."""

    load: LoadResult
    cpu: CpuUse
    gateway_cpu_s: float
    background_cores_before: float
    shadow: dict[str, Any] | None = None


@dataclass
class _Bench:
    """What every run needs: the champion target, the gateway, the servers to account CPU for."""

    args: argparse.Namespace
    champion: Target
    direct: Target
    proxy: Server
    servers: list[Server]
    workspace: Path
    work: Path

    def pairs(self, version: str | None, cores: str | None, wrapper: tuple[str, ...]) -> list[tuple[_Run, _Run]]:
        """`--pairs` times: an alone run, then a run with a shadow driver for `version` (none: alone again).

        Adjacent runs see nearly the same background load, so their ratio cancels most of it.
        """
        return [(self.run(None, None, ()), self.run(version, cores, wrapper)) for _ in range(self.args.pairs)]

    def run(self, version: str | None, cores: str | None, wrapper: tuple[str, ...]) -> _Run:
        """Champion load for `--seconds`; with `version`, a shadow driver for it runs alongside."""
        background = wait_for_quiet(self.servers, self.args.quiet_wait)
        with contextlib.ExitStack() as stack:
            driver = started(stack, self._driver(version, cores, wrapper)) if version else None
            with cpu_window(self.servers + ([driver] if driver else [])) as use:
                load = asyncio.run(open_loop(self.champion, self.args.rate, self.args.seconds, self.direct))
            report = _driver_report(driver) if driver else None
        return _Run(load, use, use.servers[self.proxy.name], background, report)

    def _driver(self, version: str, cores: str | None, wrapper: tuple[str, ...]) -> Server:
        _clear_spool(self.workspace)
        argv = [sys.executable, "-m", "bench.isolation", "driver", "--workspace", str(self.workspace),
                "--version", version, "--mode", self.args.shadow, "--seconds", str(self.args.seconds + 1)]
        log = self.work / f"driver-{version}-{cores}-{'-'.join(wrapper)}.log"
        return Server(f"shadow-driver-{version}", argv, 0, log, cores, health_path=None, ready_marker=DRIVER_READY,
                      wrapper=wrapper)


def _clear_spool(workspace: Path) -> None:
    """Drop captures of earlier runs, so each driver starts with only its own scenario's traffic."""
    from registry import load_workspace
    from shadow.spool import ready_segments, spool_dir

    for segment in ready_segments(spool_dir(load_workspace(workspace).state_dir)):
        segment.unlink()


def _driver_report(driver: Server) -> dict[str, Any]:
    """The JSON line the driver prints as it exits (it stops by itself shortly after the load)."""
    assert driver.process is not None
    try:
        driver.process.wait(60)
    except subprocess.TimeoutExpired:
        driver.stop()
    lines = [line for line in driver.log_path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"no report from the shadow driver: {driver.log_tail()}"}


def _scenario_figures(pairs: list[tuple[_Run, _Run]]) -> dict[str, Any]:
    """Busy ÷ alone for champion p50/p99 (pooled over pairs, and per pair) and gateway CPU per request."""
    alone = summary([value for run, _ in pairs for value in run.load.latencies_ms])
    busy = summary([value for _, run in pairs for value in run.load.latencies_ms])
    per_pair = [(summary(a.load.latencies_ms), summary(b.load.latencies_ms)) for a, b in pairs]
    figures: dict[str, Any] = {
        "alone_ms": alone,
        "busy_ms": busy,
        "p50_ratio": ratio(busy["p50"], alone["p50"]),
        "p99_ratio": ratio(busy["p99"], alone["p99"]),
        "p50_ratio_each_pair": [ratio(b["p50"], a["p50"]) for a, b in per_pair],
        "p99_ratio_each_pair": [ratio(b["p99"], a["p99"]) for a, b in per_pair],
        "direct_control": _direct_control(pairs),
        "gateway_cpu_per_request_ratio": ratio(_cpu_per_request(run for _, run in pairs),
                                               _cpu_per_request(run for run, _ in pairs)),
        "errors": sum(a.load.errors + b.load.errors for a, b in pairs),
        "load_generator_late_ms_p99": summary([v for a, b in pairs for v in a.load.late_ms + b.load.late_ms])["p99"],
        "busy_cpu": [run.cpu.describe(run.load.client_cpu_seconds) for _, run in pairs],
        "unaccounted_core_fraction_alone": [run.cpu.describe(run.load.client_cpu_seconds)["unaccounted_core_fraction"]
                                            for run, _ in pairs],
        "background_cores_before": [[a.background_cores_before, b.background_cores_before] for a, b in pairs],
    }
    shadow = [run.shadow for _, run in pairs if run.shadow is not None]
    if shadow:
        figures["shadow"] = shadow
    return figures


def _direct_control(pairs: list[tuple[_Run, _Run]]) -> dict[str, Any]:
    """The same figures for requests sent straight to the champion's upstream, interleaved with the champion's.

    When these move as much as the champion's do, the change is the machine's (the load
    generator, the upstream, the kernel), not the gateway's.
    """
    alone = summary([value for run, _ in pairs for value in run.load.control_ms])
    busy = summary([value for _, run in pairs for value in run.load.control_ms])
    return {"alone_ms": alone, "busy_ms": busy, "p50_ratio": ratio(busy["p50"], alone["p50"]),
            "p99_ratio": ratio(busy["p99"], alone["p99"])}


def _cpu_per_request(runs: Any) -> float:
    """Gateway CPU-µs per champion request over some runs."""
    runs = list(runs)
    return sum(run.gateway_cpu_s for run in runs) / max(sum(run.load.requests for run in runs), 1) * 1e6


def _figures(args: argparse.Namespace, layout: Placement, control: dict[str, Any],
             busy: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The bench's JSON: placements, what drove the shadow load, the control, every scenario, the targets."""
    checks = {f"{name}.{scenario}.{quantile}": target_check(figures[f"{quantile}_ratio"], TARGET_RATIO, at_most=True)
              for name, scenarios in busy.items() for scenario, figures in scenarios.items()
              for quantile in ("p50", "p99")}
    return {
        "bench": "isolation",
        "placement": {**layout.describe(), "shadow_driver": {
            **{name: f"core {layout.server_cores}, run as: {' '.join(wrapper) or 'plain'}"
               for name, wrapper in ON_GATEWAY_CORE.items()},
            "shadow_on_other_core": f"core {layout.client_cores}, with the upstream and the load generator"},
            "challenger_simulator_cores": layout.client_cores},
        "shadow_driver": ("shadow.ingest.ingest_spool + shadow.runner.ShadowRunner.run_once in a loop, in its own "
                          "process (the daemon's shadow work)" if args.shadow == "runner" else
                          f"bare loop tailing the spool, openai SDK (aiohttp transport), {SDK_IN_FLIGHT} in flight"),
        "champion_load": f"open loop, {args.rate:g} req/s, {args.seconds:g}s per run, {args.pairs} alone/busy "
                         "pairs per scenario, through 1 gateway worker to the minimal responder; at every tick "
                         "a direct_control request also goes straight to the responder",
        "control_alone_vs_alone": control,
        "busy": busy,
        "targets": checks,
    }


# ---------------------------------------------------------------- the shadow driver (a subprocess)


def driver_main(argv: list[str]) -> None:
    """`python -m bench.isolation driver ...`: do the daemon's shadow work for `--seconds`, then report."""
    parser = argparse.ArgumentParser(prog="python -m bench.isolation driver")
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--version", required=True, help="the challenger to run")
    parser.add_argument("--mode", choices=("runner", "sdk"), required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    drive = _drive_runner if args.mode == "runner" else _drive_sdk
    report = asyncio.run(drive(args.workspace, args.version, args.seconds))
    print(json.dumps(report), flush=True)


async def _drive_runner(workspace_dir: Path, version: str, seconds: float) -> dict[str, Any]:
    """Ingest the spool and run the runner for one challenger, in a loop, until the time is up."""
    from registry import Registry, load_workspace
    from shadow.ingest import ingest_spool
    from shadow.runner import RunFilters, ShadowRunner
    from shadow.spool import spool_dir

    workspace = load_workspace(workspace_dir)
    since = datetime.now(UTC).replace(tzinfo=None)
    filters = RunFilters(slot=SLOT, since=since, version=version)
    ingested = runs = 0
    with Registry.open(workspace) as registry:
        async with ShadowRunner(registry) as runner:
            print(DRIVER_READY, flush=True)
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                report = await asyncio.to_thread(ingest_spool, registry.database, spool_dir(workspace.state_dir))
                ingested += report.traffic_rows
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(runner.run_once(filters), timeout=left)
                    runs += 1
                await asyncio.sleep(POLL_S)
        with registry.database.reading() as connection:
            rows = connection.execute(
                "SELECT r.status, count(*) FROM shadow_results r JOIN traffic t USING (request_id) "
                "WHERE r.version_id = ? AND t.received_at >= ? GROUP BY r.status", [version, since]
            ).fetchall()
    return {"mode": "runner", "ingested_traffic": ingested, "completed_runs": runs, "results_by_status": dict(rows)}


async def _drive_sdk(workspace_dir: Path, version: str, seconds: float) -> dict[str, Any]:
    """Tail the spool; call the challenger once per captured request, SDK_IN_FLIGHT at most in flight."""
    import openai

    from registry import Registry, load_workspace
    from shadow.apply import apply_variant
    from shadow.spool_records import TrafficRecord
    from shadow.spool import read_segment, ready_segments, spool_dir

    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        variant = registry.variant(version)
        skill = registry.skill_text(variant.skill_sha) if variant.skill_sha else None
    provider = workspace.config.providers[variant.config["provider"]]
    client = openai.AsyncOpenAI(base_url=provider.base_url, api_key="bench", max_retries=0,
                                timeout=provider.timeout_s, http_client=openai.DefaultAioHttpClient())
    gate = asyncio.Semaphore(SDK_IN_FLIGHT)
    counts = {"ok": 0, "error": 0, "dropped": 0}
    pending: set[asyncio.Task[None]] = set()

    async def call(request: dict[str, Any]) -> None:
        async with gate:
            body = apply_variant(variant.config["model"], variant.config.get("params", {}), skill, request)
            try:
                await client.chat.completions.create(**body)
                counts["ok"] += 1
            except openai.OpenAIError:
                counts["error"] += 1

    seen: set[Path] = set()
    print(DRIVER_READY, flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for segment in ready_segments(spool_dir(workspace.state_dir)):
            if segment in seen:
                continue
            seen.add(segment)
            for record in read_segment(segment):
                if not isinstance(record, TrafficRecord):
                    continue
                if len(pending) >= SDK_QUEUE:
                    counts["dropped"] += 1
                    continue
                task = asyncio.create_task(call(record.request))
                pending.add(task)
                task.add_done_callback(pending.discard)
        await asyncio.sleep(POLL_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await client.close()
    return {"mode": "sdk", "results_by_status": counts}


if __name__ == "__main__":
    if sys.argv[1:2] == ["driver"]:
        driver_main(sys.argv[2:])
    else:
        main()
