"""The shadow runner against the bundled simulator on loopback, with a real DuckDB workspace."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ops import cli_shadow
from ops.session import Session
from registry import Refused, Registry, load_workspace, utcnow
from registry.config import Price
from shadow import pauses
from shadow.pricing import cost_usd, detail_tokens
from shadow.providers import BACKOFF_CAP_S, Headroom, ProviderPool, TokenBucket
from shadow.runner import RunFilters, RunReport, ShadowRunner
from shadow.simulator import SimulatorHandle, load_simulator_config, start_in_thread
from shadow.simulator.config import ErrorConfig, LatencyConfig, ModelConfig
from zoo import load_zoo, register_specs

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo"
SLOT = "support-triage"
TICKETS = [json.loads(line)["input"] for line in (DEMO / "tickets.jsonl").read_text().splitlines() if line.strip()]
SIM_MODELS = {
    "sim-large": ModelConfig(accuracy=0.74, output_tokens=64, reasoning_tokens=20),
    "sim-mini": ModelConfig(accuracy=0.6, output_tokens=24),
    "sim-flash": ModelConfig(accuracy=0.64, output_tokens=24),
    "sim-slow": ModelConfig(latency=LatencyConfig(base_ms=30)),
    "sim-half": ModelConfig(errors=ErrorConfig(http_500=0.5)),
    "sim-500": ModelConfig(errors=ErrorConfig(http_500=1.0)),
    "sim-429": ModelConfig(errors=ErrorConfig(http_429=1.0, retry_after_s=7)),
}
PRICES = {
    "sim-large": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1.0e-5},
    "sim-flash": {"input_cost_per_token": 1.0e-7, "output_cost_per_token": 4.0e-7},
}


def keyword_triage(request: dict[str, Any], fallback: str = "other") -> str:
    """A python-kind challenger: billing when the ticket mentions a refund."""
    text = request["messages"][-1]["content"].lower()
    return "billing" if "refund" in text else fallback


def spec(name: str, model: str) -> str:
    return f"slot: {SLOT}\nname: {name}\nbase: baseline\noverrides:\n  model: {model}\n"


PYTHON_SPEC = f"""slot: {SLOT}
name: keywords
kind: python
base: defaults
overrides:
  entrypoint: tests.test_runner:keyword_triage
  params: {{fallback: technical}}
  price_per_call_usd: 0.0001
"""


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = load_simulator_config(DEMO / "simulator.yaml").model_copy(update={"models": SIM_MODELS, "seed": 11})
    with start_in_thread(config) as handle:
        yield handle


class SimWorkspace:
    """A demo workspace pointed at the simulator, its specs registered and `baseline` champion."""

    def __init__(self, root: Path, sim: SimulatorHandle) -> None:
        self.root = root
        self.sim = sim
        self.registry: Registry | None = None
        self.ids: dict[str, str] = {}

    def setup(
        self, shadow: dict[str, Any] | None = None, specs: dict[str, str] | None = None, **provider: Any
    ) -> Registry:
        """Write the config and extra specs, register everything, promote baseline; the registry stays open."""
        path = self.root / "shadowzoo.yaml"
        config = yaml.safe_load(path.read_text())
        config["providers"]["sim"].update(base_url=self.sim.base_url, **provider)
        config["slots"][SLOT]["shadow"] = shadow or {}
        config["prices"] = PRICES
        config["python_path"] = [str(ROOT)]  # the python variant is a function of this module
        path.write_text(yaml.safe_dump(config))
        for name, text in (specs or {}).items():
            (self.root / "zoo" / f"{name}.yaml").write_text(text)
        registry = self.open()
        workspace = registry.workspace
        zoo = load_zoo(workspace.specs_dir)
        outcomes = register_specs(zoo.specs, zoo, workspace, registry)
        assert all(o.registration for o in outcomes), [o.error for o in outcomes]
        self.ids = {o.spec_file.spec.name: o.registration.variant.version_id for o in outcomes if o.registration}
        registry.promote(SLOT, self.ids["baseline"], "tester", "champion", None)
        return registry

    def open(self) -> Registry:
        self.registry = Registry.open(load_workspace(self.root))
        return self.registry

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
            self.registry = None


@pytest.fixture
def ws(workspace_dir: Path, sim: SimulatorHandle) -> Iterator[SimWorkspace]:
    workspace = SimWorkspace(workspace_dir, sim)
    yield workspace
    workspace.close()


def add_traffic(registry: Registry, count: int, start: int = 0) -> list[str]:
    """Captured requests (as a streaming client sent them) answered by the champion."""
    champion = registry.champion(SLOT)
    base = datetime(2026, 1, 1)
    rows = []
    for i in range(start, start + count):
        request = {
            "model": SLOT, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": TICKETS[i % len(TICKETS)]}],
        }
        rows.append([f"szr_test_{i:05d}", SLOT, base + timedelta(seconds=i), json.dumps(request),
                     champion.version_id if champion else None, "gateway", utcnow()])
    with registry.database.transaction() as db:
        db.executemany(
            "INSERT INTO traffic (request_id, slot, received_at, request_json, champion_version, source, ingested_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return [row[0] for row in rows]


def results(registry: Registry) -> list[dict[str, Any]]:
    with registry.database.reading() as db:
        cursor = db.execute("SELECT * FROM shadow_results ORDER BY request_id, version_id")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def run(registry: Registry, filters: RunFilters = RunFilters(), **runner_options: Any) -> RunReport:
    async def go() -> RunReport:
        async with ShadowRunner(registry, **runner_options) as runner:
            return await runner.run_once(filters)

    return asyncio.run(go())


class RecordingSleep:
    """Stands in for the retry back-off: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def test_every_sampled_request_gets_exactly_one_answer_from_each_challenger(ws: SimWorkspace) -> None:
    registry = ws.setup(specs={"keywords": PYTHON_SPEC})
    requests = add_traffic(registry, 30)

    report = run(registry)

    rows = results(registry)
    challengers = set(ws.ids.values()) - {ws.ids["baseline"]}
    assert ws.ids["keywords"] in challengers and len(challengers) >= 4
    assert Counter((r["request_id"], r["version_id"]) for r in rows) == {
        (request, version): 1 for request in requests for version in challengers
    }
    assert report.total == report.done == report.ok == len(rows) == 30 * len(challengers)
    assert all(r["status"] == "ok" and r["output"] and r["role"] == "challenger" for r in rows)
    assert run(registry).total == 0


def test_the_champion_is_replayed_as_a_control_on_its_sample(ws: SimWorkspace) -> None:
    registry = ws.setup(shadow={"sample_rate": 0.0, "champion_control_rate": 1.0})
    requests = add_traffic(registry, 8)

    run(registry)

    rows = results(registry)
    assert [(r["request_id"], r["version_id"], r["role"], r["status"]) for r in rows] == [
        (request, ws.ids["baseline"], "control", "ok") for request in requests
    ]


def test_costs_come_from_usage_and_prices_and_an_unpriced_model_costs_none(ws: SimWorkspace) -> None:
    registry = ws.setup(
        shadow={"sample_rate": 0.0, "rates": {"careful-large": 1.0, "cheap-mini": 1.0, "keywords": 1.0}},
        specs={"keywords": PYTHON_SPEC},
    )
    add_traffic(registry, 10)

    report = run(registry)

    by_label = {label: [r for r in results(registry) if r["version_id"] == vid] for label, vid in ws.ids.items()}
    large = Price(**PRICES["sim-large"])
    for row in by_label["careful-large"]:
        usage = json.loads(row["usage_json"])
        assert usage["prompt_tokens"] == row["prompt_tokens"] > 0
        assert (row["cached_tokens"], row["reasoning_tokens"]) == detail_tokens(usage)
        assert row["cost_usd"] == pytest.approx(cost_usd(large, usage))
        assert row["cost_usd"] == pytest.approx(row["prompt_tokens"] * 2.5e-6 + row["completion_tokens"] * 1.0e-5)
    assert all(r["cost_usd"] is None and r["completion_tokens"] > 0 for r in by_label["cheap-mini"])
    assert all(r["cost_usd"] == pytest.approx(0.0001) for r in by_label["keywords"])
    assert report.unpriced == 10


def test_cached_and_reasoning_tokens_are_billed_at_their_own_prices() -> None:
    price = Price(input_cost_per_token=1.0, output_cost_per_token=10.0,
                  cache_read_input_token_cost=0.5, output_cost_per_reasoning_token=20.0)
    usage = {"prompt_tokens": 100, "completion_tokens": 10,
             "prompt_tokens_details": {"cached_tokens": 40}, "completion_tokens_details": {"reasoning_tokens": 4}}
    assert cost_usd(price, usage) == pytest.approx(60 * 1.0 + 40 * 0.5 + 6 * 10.0 + 4 * 20.0)
    assert cost_usd(None, usage) is None
    assert cost_usd(price, None) == 0.0


def test_sampling_is_deterministic_and_roughly_proportional_to_the_rate(ws: SimWorkspace) -> None:
    registry = ws.setup(shadow={"sample_rate": 0.0, "rates": {"careful-large": 0.3, "cheap-mini": 1.0}})
    add_traffic(registry, 150)

    run(registry)
    first = {(r["request_id"], r["version_id"]) for r in results(registry)}
    with registry.database.transaction() as db:
        db.execute("DELETE FROM shadow_results")
    run(registry)
    second = {(r["request_id"], r["version_id"]) for r in results(registry)}

    per_version = Counter(version for _, version in first)
    assert first == second
    assert per_version[ws.ids["cheap-mini"]] == 150
    assert 25 <= per_version[ws.ids["careful-large"]] <= 65
    assert per_version[ws.ids["flash"]] == 0


def test_a_flaky_upstream_is_retried_and_a_dead_one_is_recorded_as_an_error_with_its_attempts(ws: SimWorkspace) -> None:
    registry = ws.setup(
        shadow={"sample_rate": 0.0, "rates": {"flaky": 1.0, "dead": 1.0}},
        specs={"flaky": spec("flaky", "sim-half"), "dead": spec("dead", "sim-500")},
        max_retries=3,
    )
    add_traffic(registry, 40)
    sleep = RecordingSleep()

    run(registry, providers=ProviderPool(registry.workspace.config.providers, sleep=sleep))

    rows = results(registry)
    flaky = [r for r in rows if r["version_id"] == ws.ids["flaky"]]
    dead = [r for r in rows if r["version_id"] == ws.ids["dead"]]
    assert len(flaky) == len(dead) == 40
    assert all(r["status"] == "error" and r["attempts"] == 4 and r["error"].startswith("HTTP 500") for r in dead)
    assert any(r["status"] == "ok" and r["attempts"] > 1 for r in flaky)
    assert all(r["attempts"] == 4 for r in flaky if r["status"] == "error")
    assert sum(r["attempts"] - 1 for r in rows) == len(sleep.delays)
    assert all(0 <= delay <= BACKOFF_CAP_S for delay in sleep.delays)


def test_retry_after_is_honoured_before_each_retry(ws: SimWorkspace) -> None:
    registry = ws.setup(
        shadow={"sample_rate": 0.0, "rates": {"throttled": 1.0}},
        specs={"throttled": spec("throttled", "sim-429")},
        max_retries=2,
    )
    add_traffic(registry, 5)
    sleep = RecordingSleep()

    run(registry, providers=ProviderPool(registry.workspace.config.providers, sleep=sleep))

    rows = results(registry)
    assert [(r["status"], r["attempts"]) for r in rows] == [("error", 3)] * 5
    assert all(r["error"].startswith("HTTP 429") for r in rows)
    assert sleep.delays == [7.0] * 10


def test_shadow_calls_yield_when_the_upstream_reports_little_quota_left() -> None:
    now = [100.0]
    headroom = Headroom(min_fraction=0.2, clock=lambda: now[0])
    headroom.observe("m", {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "50",
                           "x-ratelimit-reset-requests": "30s"})
    assert headroom.paused_for("m") == 0
    headroom.observe("m", {"x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "100",
                           "x-ratelimit-reset-tokens": "1m30s"})
    assert headroom.paused_for("m") == pytest.approx(90 * (200 - 100) / (1000 - 100))
    assert headroom.paused_for("other-model") == 0
    now[0] += 60
    assert headroom.paused_for("m") == 0


def test_a_paused_challenger_gets_not_run_rows_and_the_others_proceed(ws: SimWorkspace) -> None:
    registry = ws.setup(shadow={"sample_rate": 0.0, "rates": {"careful-large": 1.0, "cheap-mini": 1.0}})
    first = add_traffic(registry, 10)
    pauses.pause(registry, ws.ids["cheap-mini"], "alice", "too slow")
    with pytest.raises(Refused, match="champion"):
        pauses.pause(registry, ws.ids["baseline"], "alice", None)

    report = run(registry)

    rows = results(registry)
    mini = [r for r in rows if r["version_id"] == ws.ids["cheap-mini"]]
    assert [r["status"] for r in mini] == ["not_run"] * 10
    assert all(r["error"].startswith("paused:") and "alice" in r["error"] and "too slow" in r["error"] for r in mini)
    assert [r["status"] for r in rows if r["version_id"] == ws.ids["careful-large"]] == ["ok"] * 10
    assert report.not_run_reasons == {"paused": 10} and report.ok == 10

    pauses.pause(registry, None, "bob", "maintenance")
    second = add_traffic(registry, 5, start=10)
    assert run(registry).not_run_reasons == {"paused": 10}
    assert pauses.resume(registry, None) is not None
    third = add_traffic(registry, 5, start=15)
    assert run(registry).ok == 5
    statuses = {(r["request_id"], r["version_id"]): r["status"] for r in results(registry)}
    large = ws.ids["careful-large"]
    assert [statuses[(rid, large)] for rid in first + second + third] == ["ok"] * 10 + ["not_run"] * 5 + ["ok"] * 5


def test_the_daily_budget_stops_scheduling_and_the_rest_is_not_run(ws: SimWorkspace) -> None:
    registry = ws.setup(shadow={"sample_rate": 0.0, "rates": {"careful-large": 1.0}, "daily_budget_usd": 0.01})
    add_traffic(registry, 40)

    report = run(registry)

    rows = results(registry)
    spent = sum(r["cost_usd"] for r in rows if r["status"] == "ok")
    one_call = max(r["cost_usd"] for r in rows if r["status"] == "ok")
    assert report.ok >= 5 and report.ok + report.not_run == 40
    assert spent <= 0.01 + one_call
    assert all(r["error"].startswith("budget:") for r in rows if r["status"] == "not_run")

    add_traffic(registry, 5, start=40)
    later = run(registry)
    assert (later.ok, later.not_run_reasons) == (0, {"budget": 5})


CRASHING_REPLAY = """
import asyncio, sys
from registry import Registry, load_workspace
from shadow.runner import ShadowRunner

async def main():
    with Registry.open(load_workspace(__import__("pathlib").Path(sys.argv[1]))) as registry:
        async with ShadowRunner(registry, batch_rows=10, flush_interval_s=0.1) as runner:
            await runner.run_once(progress=lambda report: print(report.done, flush=True))

asyncio.run(main())
"""


def test_a_run_killed_midway_loses_nothing_and_the_next_run_duplicates_nothing(ws: SimWorkspace) -> None:
    registry = ws.setup(
        shadow={"sample_rate": 0.0, "rates": {"slow": 1.0}}, specs={"slow": spec("slow", "sim-slow")},
        max_concurrency=2,
    )
    requests = add_traffic(registry, 150)
    ws.close()
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_REPLAY, str(ws.root)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        for line in child.stdout:
            if int(line) >= 20:
                break
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    registry = ws.open()
    written = len(results(registry))
    report = run(registry)

    rows = results(registry)
    assert 20 <= written < 150
    assert report.total == 150 - written and report.ok == report.total
    assert Counter((r["request_id"], r["version_id"]) for r in rows) == {(rid, ws.ids["slow"]): 1 for rid in requests}


def test_replay_pause_and_resume_commands(ws: SimWorkspace) -> None:
    registry = ws.setup(shadow={"sample_rate": 0.0, "rates": {"careful-large": 1.0, "cheap-mini": 1.0}})
    add_traffic(registry, 6)
    ws.close()
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = Session(workspace_dir=ws.root)

    for command in (cli_shadow.replay, cli_shadow.pause, cli_shadow.resume):
        assert "Example: shadowzoo" in (command.__doc__ or "")
        app.command()(command)
    cli = CliRunner()

    paused = cli.invoke(app, ["pause", ws.ids["cheap-mini"], "--reason", "cost review", "--actor", "carol"])
    assert paused.exit_code == 0, paused.output
    replayed = cli.invoke(app, ["replay", "--slot", SLOT, "--since", "2026-01-01T00:00:03", "--json"])
    assert replayed.exit_code == 0, replayed.output
    report = json.loads(replayed.output)
    assert (report["total"], report["ok"], report["not_run_reasons"]) == (6, 3, {"paused": 3})
    resumed = cli.invoke(app, ["resume", ws.ids["cheap-mini"]])
    assert resumed.exit_code == 0 and "resumed" in resumed.output
    assert cli.invoke(app, ["pause"]).exit_code == 2


def test_a_per_minute_bucket_waits_for_exactly_the_refill_it_needs() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async def scenario() -> None:
        bucket = TokenBucket(600, clock=lambda: now[0], sleep=sleep)
        await bucket.take(600)
        await bucket.take(5)
        bucket.give_back(-10)
        await bucket.take(1)

    asyncio.run(scenario())
    assert waits == pytest.approx([0.5, 1.1])
