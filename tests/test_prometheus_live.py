"""The Grafana dashboard against a real Prometheus scraping a real `shadowzoo serve`.

tests/test_ops_assets.py checks that every dashboard query *parses*; this test checks that
each one *returns data* once demo traffic has flowed: the simulator answers the demo
workspace's variants, `shadowzoo serve --workers 2` runs the gateway and the daemon, a
Prometheus (Debian's `prometheus` package, as `make test` installs it) scrapes both every
second with the repository's alert rules loaded, and the official openai client sends
bounded traffic plus labels. Then every panel query, with Grafana's variables filled in,
is run against Prometheus' HTTP API; panels and targets marked
`"shadowzooRareEvent": true` only have to parse. All problems are reported in one failure.

Everything listens on 127.0.0.1 and every process is stopped in `finally`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import openai
import pytest
import yaml

from ops.workspace_init import init_workspace
from registry import Registry, load_workspace
from tests.conftest import SHADOWZOO
from tests.servers import DEMO_SIM, edit_config, free_port, start_simulator
from zoo import load_zoo, register_specs

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "shadowzoo.json"
OPS_PROMETHEUS_CONFIG = ROOT / "ops" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "ops" / "prometheus" / "alerts.yml"
TICKETS = ROOT / "examples" / "demo" / "tickets.jsonl"

SLOT = "support-triage"
TOKEN = "test-admin-token"
REQUESTS = 150
WARMUP = 12
# Series the first requests create on each target, which Prometheus must have scraped.
WARMUP_SERIES = [
    f'count(shadowzoo_gateway_overhead_seconds_count{{job="shadowzoo-gateway", slot="{SLOT}"}})',
    f'count(shadowzoo_upstream_latency_seconds_count{{job="shadowzoo-daemon", slot="{SLOT}", role="champion"}})',
    f'count(shadowzoo_upstream_latency_seconds_count{{job="shadowzoo-daemon", slot="{SLOT}", role="challenger"}}) == 4',
]
# Which scrape job exports which metric: the gateway workers' own series (shadow.gateway.prometheus_metrics)
# and the daemon's (ops.prometheus_metrics). `shadowzoo_shadow_dropped_total` comes from both (the gateway
# counts buffer_full, the daemon the other reasons).
GATEWAY_METRICS = {
    "shadowzoo_gateway_requests_total", "shadowzoo_gateway_overhead_seconds", "shadowzoo_shadow_dropped_total",
}
DAEMON_METRICS = {
    "shadowzoo_upstream_latency_seconds", "shadowzoo_shadow_calls_total", "shadowzoo_shadow_queue_depth",
    "shadowzoo_shadow_dropped_total", "shadowzoo_tokens_total", "shadowzoo_cost_usd_total",
    "shadowzoo_eval_cost_usd_total", "shadowzoo_net_value_per_1k_usd", "shadowzoo_net_delta_lower_usd",
    "shadowzoo_promotion_ready", "shadowzoo_champion_info", "shadowzoo_budget_remaining_usd",
    "shadowzoo_job_runs_total", "shadowzoo_job_duration_seconds", "shadowzoo_spool_lag_seconds",
    "shadowzoo_spool_quarantined_records_total", "shadowzoo_judge_unjudged_answers", "shadowzoo_judge_budget_reached",
}
MIN_SAMPLES = 20
SCORE_INTERVAL_S = 2.0
SCRAPE_INTERVAL_S = 1
LOOKBACK_S = 60  # range queries cover the last minute, as a "last 1 minute" Grafana time range would
STEP_S = 2
STARTUP_S = 60  # for serve and Prometheus to answer: importing and spawning is slow on a loaded machine
BUDGET_S = 150  # every wait of the test together, so a broken run fails well within its timeout

# Grafana's variables as Grafana would fill them in for this run: one slot selected, a
# short time range. ($slot is a multi-value variable; one selected value is the value.)
GRAFANA_VARIABLES = {
    "slot": SLOT,
    "__rate_interval": "1m",
    "__interval": f"{STEP_S}s",
    "__interval_ms": str(STEP_S * 1000),
    "__range": f"{LOOKBACK_S}s",
    "__range_s": str(LOOKBACK_S),
    "__range_ms": str(LOOKBACK_S * 1000),
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


# --- small HTTP helpers (standard library only) ---------------------------------------

def http_json(url: str, *, data: dict | None = None, token: str | None = None, timeout: float = 5) -> Any:
    body = None if data is None else json.dumps(data).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


_deadline = {"at": math.inf}  # set by the test: no wait goes past it


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.25,
             diagnostics: Callable[[], str] = lambda: "") -> Any:
    """Poll `predicate` until it returns something truthy; fail saying what did not happen."""
    deadline = min(time.monotonic() + timeout_s, _deadline["at"])
    timeout_s = max(0.0, deadline - time.monotonic())
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:  # not up yet, or not the answer yet
            last_error = exc
        time.sleep(interval_s)
    extra = diagnostics()
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "") + (f"\n{extra}" if extra else ""),
                pytrace=False)


class Prometheus:
    """A Prometheus server scraping the given targets, in a directory of its own."""

    def __init__(self, directory: Path, gateway: str, daemon: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is not installed: run `make promtool` (Debian's prometheus package) "
                        "or `apt-get install prometheus`", pytrace=False)
        directory.mkdir(parents=True)
        # The repository's config, with the scrape interval shortened and the targets moved to this run's ports.
        config = yaml.safe_load(OPS_PROMETHEUS_CONFIG.read_text())
        config["global"] = {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"}
        config["rule_files"] = [str(ALERTS)]
        ports = {"shadowzoo-gateway": gateway, "shadowzoo-daemon": daemon}
        assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [ports[job["job_name"]]]}]
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            cwd=directory, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self) -> None:
        wait_for("Prometheus to be ready (/-/ready)",
                 lambda: still_running(self.process, "prometheus", self.output) and http_ok(f"{self.url}/-/ready"),
                 timeout_s=STARTUP_S, diagnostics=self.output)

    def api(self, path: str, **params: Any) -> dict:
        """GET /api/v1/<path>; Prometheus answers errors (e.g. bad_data) as JSON with a 4xx status."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read())
            except ValueError:
                return {"status": "error", "error": f"HTTP {exc.code}"}

    def scalar(self, expr: str) -> float | None:
        answer = self.api("query", query=expr)
        result = answer.get("data", {}).get("result") or []
        return float(result[0]["value"][1]) if answer.get("status") == "success" and result else None

    def output(self) -> str:
        self.log.flush()
        return _tail(self.log_path)

    def stop(self) -> None:
        _stop(self.process, timeout_s=15)
        self.log.close()


class Serve:
    """`shadowzoo serve --workers 2`, run by its console script as an operator runs it."""

    def __init__(self, workspace: Path, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        while self.admin_port == self.port:
            self.admin_port = free_port()
        self.gateway = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = log_path
        self.log = log_path.open("w")
        self.process = subprocess.Popen(
            [str(SHADOWZOO), "serve", "--workers", "2", "--port", str(self.port), "--admin-port", str(self.admin_port)],
            cwd=workspace, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self) -> None:
        for name, url in (("gateway", self.gateway), ("daemon", self.admin)):
            wait_for(f"the {name}'s /healthz ({url})",
                     lambda url=url: still_running(self.process, "shadowzoo serve", self.output)
                     and http_ok(f"{url}/healthz"),
                     timeout_s=STARTUP_S, diagnostics=self.output)

    def output(self) -> str:
        self.log.flush()
        return _tail(self.log_path)

    def stop(self) -> None:
        # SIGTERM to `serve` only: it stops the gateways, then the daemon (shutdown_grace_s is 1 here).
        _stop(self.process, timeout_s=40)
        self.log.close()


def still_running(process: subprocess.Popen, what: str, output: Callable[[], str]) -> bool:
    """True while `process` runs; fail at once, with its output, if it has exited."""
    if process.poll() is not None:
        pytest.fail(f"{what} exited with code {process.returncode}:\n{output()}", pytrace=False)
    return True


def _stop(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the process we started; if it lingers, SIGKILL its process group (its own children)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # start_new_session: the group is this process and its children
    except (ProcessLookupError, PermissionError):
        pass
    if process.poll() is None:
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# --- the workspace --------------------------------------------------------------------

def fast_simulator_config(directory: Path) -> Path:
    """The demo simulator with tens of milliseconds of latency instead of hundreds, no rate
    limits, and only quick failures on sim-flash (no 60 s hangs), so a run stays short."""
    config = yaml.safe_load(DEMO_SIM.read_text())
    config["task"]["dataset"] = str(TICKETS)
    for model in config["models"].values():
        model["latency"] = {"base_ms": 20, "jitter_ms": 10, "per_output_token_ms": 0.2}
        model.pop("limits", None)
        if "errors" in model:
            model["errors"] = {"http_500": 0.05}
    path = directory / "simulator.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def make_workspace(directory: Path, simulator_url: str) -> Path:
    """The demo workspace on this simulator: every challenger shadows every request, small
    min_samples, fast daemon jobs; all demo specs registered, baseline the first champion."""
    workspace = init_workspace(directory)

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator_url
        slot = config["slots"][SLOT]
        slot.setdefault("shadow", {})["sample_rate"] = 1.0
        slot["scoring"]["min_samples"] = MIN_SAMPLES
        config["daemon"] = {**config.get("daemon", {}), "score_interval_s": SCORE_INTERVAL_S,
                            "ingest_interval_s": 0.5, "shutdown_grace_s": 1}

    edit_config(workspace, configure)
    with Registry.open(load_workspace(workspace)) as registry:
        zoo = load_zoo(registry.workspace.specs_dir)
        outcomes = register_specs(zoo.specs, zoo, registry.workspace, registry)
        assert all(o.registration for o in outcomes), [o.error for o in outcomes]
        ids = {o.spec_file.spec.name: o.registration.variant.version_id for o in outcomes}
        assert set(ids) == {"baseline", "cheap-mini", "careful-large", "careful-mini", "flash"}
        registry.promote(SLOT, ids["baseline"], "tester", "first champion", None)
    return workspace


# --- traffic --------------------------------------------------------------------------

def send_traffic(serve: Serve, numbers: range) -> None:
    """Tickets `numbers` through the gateway (every third one streamed), each then labelled."""
    tickets = [json.loads(line) for line in TICKETS.read_text().splitlines() if line.strip()]
    assert len(tickets) >= REQUESTS
    client = openai.OpenAI(base_url=f"{serve.gateway}/v1", api_key="unused", max_retries=0, timeout=10)

    def one(n: int) -> str:
        ticket = tickets[n]
        client_id = f"prom-live-{n}"
        messages = [{"role": "user", "content": ticket["input"]}]
        headers = {"x-shadowzoo-request-id": client_id}
        if n % 3 == 0:
            stream = client.chat.completions.create(model=SLOT, messages=messages, stream=True, extra_headers=headers)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        else:
            text = client.chat.completions.create(model=SLOT, messages=messages, extra_headers=headers) \
                .choices[0].message.content
        assert text, f"empty answer to request {n}"
        answer = http_json(f"{serve.gateway}/v1/feedback", data={"request_id": client_id, "label": ticket["expected"]})
        assert answer["status"] == "accepted", answer
        return client_id

    with ThreadPoolExecutor(max_workers=4) as pool:
        sent = list(pool.map(one, numbers))
    assert len(sent) == len(numbers)


def leaderboard_has_pairs(serve: Serve) -> dict | None:
    """The leaderboard once every challenger has at least MIN_SAMPLES scored pairs."""
    board = http_json(f"{serve.admin}/admin/leaderboard?slot={SLOT}", token=TOKEN, timeout=10)
    challengers = [row for row in board["rows"] if row["role"] == "challenger"]
    if len(challengers) == 4 and all((row.get("comparison") or {}).get("pairs", 0) >= MIN_SAMPLES
                                     for row in challengers):
        return board
    return None


def describe_board(serve: Serve) -> str:
    try:
        board = http_json(f"{serve.admin}/admin/leaderboard?slot={SLOT}", token=TOKEN, timeout=10)
    except OSError as exc:
        return f"leaderboard unavailable: {exc!r}\n{serve.output()}"
    rows = [f"  {r['label']} ({r['role']}): {r['status_detail'] or r['status']}, n={r['n']}" for r in board["rows"]]
    return "leaderboard:\n" + "\n".join(rows) + f"\nserve output:\n{serve.output()}"


# --- the dashboard's queries ----------------------------------------------------------

def dashboard_targets() -> list[tuple[dict, dict]]:
    """(panel, target) for every query of every panel, including panels inside rows."""
    def panels(items: list[dict]) -> list[dict]:
        found = []
        for panel in items:
            if panel.get("type") == "row":
                found.extend(panels(panel.get("panels", [])))
            else:
                found.append(panel)
        return found
    board = json.loads(DASHBOARD.read_text())
    return [(panel, target) for panel in panels(board["panels"]) for target in panel.get("targets", [])]


def fill_variables(expr: str) -> str:
    """Grafana's variables, in all three syntaxes ($name, ${name}, [[name]]), longest names first."""
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        value = GRAFANA_VARIABLES[name]
        expr = expr.replace(f"${{{name}}}", value).replace(f"[[{name}]]", value).replace(f"${name}", value)
    return expr


def has_samples(answer: dict) -> tuple[int, int]:
    """(series, series with at least one sample that is a number) in a query answer."""
    data = answer["data"]
    result = data["result"]
    if data["resultType"] == "matrix":
        points = [[v for _, v in series["values"]] for series in result]
    elif data["resultType"] == "vector":
        points = [[series["value"][1]] for series in result]
    else:  # scalar or string
        points = [[result[1]]]
    numeric = sum(1 for values in points if any(not math.isnan(float(v)) for v in values))
    return len(points), numeric


def base_name(name: str) -> str:
    """The metric a sample name belongs to: histograms' _bucket/_count/_sum, counters' _created."""
    known = GATEWAY_METRICS | DAEMON_METRICS
    for suffix, stem in (("_bucket", ""), ("_count", ""), ("_sum", ""), ("_created", ""), ("_created", "_total")):
        if name.endswith(suffix) and name[: -len(suffix)] + stem in known:
            return name[: -len(suffix)] + stem
    return name


def check_targets(prometheus: Prometheus) -> list[str]:
    """Each shadowzoo metric is exported by the target that owns it, and only by it: a series
    scraped from both targets is counted twice by every `sum` on the dashboard."""
    answer = prometheus.api("query", query='count by (__name__, job) ({__name__=~"shadowzoo_.+"})')
    assert answer.get("status") == "success", answer
    owners = {"shadowzoo-gateway": GATEWAY_METRICS, "shadowzoo-daemon": DAEMON_METRICS}
    strays: dict[str, set[str]] = {}
    for series in answer["data"]["result"]:
        job, name = series["metric"].get("job", "?"), series["metric"]["__name__"]
        if base_name(name) not in owners.get(job, set()):
            strays.setdefault(job, set()).add(base_name(name))
    return [f"scrape job {job} exports metrics it does not own (counted twice on the dashboard): {sorted(names)}"
            for job, names in sorted(strays.items())]


def check_rules(prometheus: Prometheus) -> tuple[list[str], list[str]]:
    """The repository's alert rules, loaded by this Prometheus: each evaluates without error.
    (Whether one fires is not checked; the pending and firing ones are listed in the log.)"""
    answer = prometheus.api("rules")
    assert answer.get("status") == "success", answer
    rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
    problems = [f"alert rule {rule['name']}: evaluation failed: {rule.get('lastError')}"
                for rule in rules if rule.get("health") == "err"]
    if not rules:
        problems.append(f"no alert rules loaded from {ALERTS}")
    states = [f"alert {rule['name']}: {rule.get('state', '?')}, health {rule.get('health')}" for rule in rules]
    return problems, states


def check_dashboard(prometheus: Prometheus) -> tuple[list[str], list[str]]:
    """Run every dashboard query; return (problems, a line per query for the log)."""
    problems, summary = [], []
    end = time.time()
    start = end - LOOKBACK_S
    for panel, target in dashboard_targets():
        title = f"panel {panel['id']} {panel['title']!r} target {target['refId']}"
        raw = target["expr"]
        expr = fill_variables(raw)
        if "$" in expr or "[[" in expr:
            problems.append(f"{title}: a Grafana variable this test does not know: {raw}")
            continue
        rare = bool(panel.get("shadowzooRareEvent") or target.get("shadowzooRareEvent"))
        instant = target.get("instant", False) and not target.get("range", False)
        if instant:
            answer = prometheus.api("query", query=expr, time=f"{end:.3f}")
        else:
            answer = prometheus.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=STEP_S)
        if answer.get("status") != "success":
            problems.append(f"{title}: query failed ({answer.get('errorType')}: {answer.get('error')}):\n    {expr}")
            continue
        series, numeric = has_samples(answer)
        kind = "instant" if instant else "range"
        summary.append(f"{title} [{kind}{', rare' if rare else ''}]: {series} series, {numeric} with numbers")
        if rare or numeric:
            continue
        why = "no series" if series == 0 else f"{series} series, all samples NaN"
        problems.append(f"{title}: {why} ({kind} query):\n    {expr}")
    return problems, summary


# --- the test -------------------------------------------------------------------------

def test_every_dashboard_query_returns_data_from_a_live_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_deadline, "at", time.monotonic() + BUDGET_S)
    processes: list[Callable[[], None]] = []
    simulator = start_simulator(fast_simulator_config(tmp_path))
    processes.append(simulator.stop)
    try:
        workspace = make_workspace(tmp_path / "ws", simulator.base_url)

        serve = Serve(workspace, {"SHADOWZOO_ADMIN_TOKEN": TOKEN, "SIM_API_KEY": "sim"}, tmp_path / "serve.log")
        processes.append(serve.stop)
        serve.wait_healthy()

        prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{serve.port}", f"127.0.0.1:{serve.admin_port}")
        processes.append(prometheus.stop)
        prometheus.wait_ready()

        # A first few requests, until Prometheus has scraped every series they create: rate()
        # ignores a series' first sample, so a burst that starts and ends between two scrapes
        # would leave every histogram panel NaN (a real service's traffic never stops).
        send_traffic(serve, range(WARMUP))
        for expr in WARMUP_SERIES:
            wait_for(f"Prometheus to scrape the first requests' series: {expr}",
                     lambda expr=expr: prometheus.scalar(expr), timeout_s=20,
                     diagnostics=lambda: describe_board(serve))
        send_traffic(serve, range(WARMUP, REQUESTS))
        wait_for(f"every challenger to have {MIN_SAMPLES} scored pairs on the leaderboard",
                 lambda: leaderboard_has_pairs(serve), timeout_s=30, interval_s=1,
                 diagnostics=lambda: describe_board(serve))

        # Gauges are published by the score job (every SCORE_INTERVAL_S): let it run twice more,
        # then let Prometheus scrape both targets after that.
        scored_after = time.time() + 2 * SCORE_INTERVAL_S
        for job in ("shadowzoo-gateway", "shadowzoo-daemon"):
            wait_for(f"Prometheus to scrape {job} after the scorer ran",
                     lambda job=job: (prometheus.scalar(f'timestamp(up{{job="{job}"}})') or 0) > scored_after + 1
                     and prometheus.scalar(f'up{{job="{job}"}}') == 1
                     and (prometheus.scalar(f'count_over_time(up{{job="{job}"}}[5m])') or 0) >= 5,
                     timeout_s=20, diagnostics=lambda: f"targets: {prometheus.api('targets')}\n{prometheus.output()}")

        problems, summary = check_dashboard(prometheus)
        problems += check_targets(prometheus)
        rule_problems, rule_states = check_rules(prometheus)
        problems += rule_problems
        print("\n".join(summary + rule_states))
        assert not problems, (
            f"{len(problems)} problem(s): dashboard queries failed against a live run "
            f"({len(summary)} ran), or scrape targets or alert rules are wrong:\n" + "\n".join(problems))
    finally:
        errors = []
        for stop in reversed(processes):  # Prometheus, then shadowzoo serve, then the simulator
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway, then report
                errors.append(exc)
        if errors:
            raise errors[0]
