"""The deploy assets in ops/: Prometheus config, alert rules and their unit tests, and the
Grafana dashboard, and the systemd unit. promtool (Debian's `prometheus` package) does the
PromQL work and systemd-analyze (Debian's `systemd` package) checks the unit; `make test`
installs both, and these tests fail, never skip, when one is missing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "ops" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
ALERTS = PROMETHEUS / "alerts.yml"
ALERT_TESTS = PROMETHEUS / "alerts_test.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "dashboards" / "shadowzoo.json"
DATASOURCES = ROOT / "ops" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "ops" / "grafana" / "provisioning" / "dashboards" / "shadowzoo.yml"
UNIT = ROOT / "ops" / "systemd" / "shadowzoo.service"
COMPOSE = ROOT / "ops" / "compose" / "distributed.yaml"
COMPOSE_CONFIG = ROOT / "ops" / "compose" / "shadowzoo.yaml"
COMPOSE_ENV = ROOT / "ops" / "compose" / "distributed.env.example"

# The metrics shadowzoo exports (fixed by the metrics issue), plus Prometheus's own `up`.
COUNTERS = {
    "shadowzoo_gateway_requests_total", "shadowzoo_shadow_dropped_total", "shadowzoo_shadow_calls_total",
    "shadowzoo_tokens_total", "shadowzoo_cost_usd_total", "shadowzoo_eval_cost_usd_total",
    "shadowzoo_job_runs_total",
}
GAUGES = {
    "shadowzoo_spool_lag_seconds", "shadowzoo_shadow_queue_depth", "shadowzoo_net_value_per_1k_usd",
    "shadowzoo_net_delta_lower_usd", "shadowzoo_promotion_ready", "shadowzoo_champion_info",
    "shadowzoo_budget_remaining_usd", "shadowzoo_spool_shipping_lag_seconds", "up",
}
HISTOGRAMS = {
    "shadowzoo_gateway_overhead_seconds", "shadowzoo_upstream_latency_seconds", "shadowzoo_job_duration_seconds",
}
KNOWN_SERIES = COUNTERS | GAUGES | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


# --- promtool -------------------------------------------------------------------------

def run_tool(tool: str, package: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a checking tool from the repository root; fail with the way to install it when missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run `make test` (it installs Debian's {package} package), "
                    f"or `apt-get install {package}`", pytrace=False)
    return subprocess.run([path, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return run_tool("promtool", "prometheus", *args)


def assert_ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, f"{' '.join(done.args)} failed:\n{done.stdout}\n{done.stderr}"


def test_prometheus_config_is_valid() -> None:
    assert_ok(promtool("check", "config", str(CONFIG.relative_to(ROOT))))


def test_alert_rules_are_valid() -> None:
    assert_ok(promtool("check", "rules", str(ALERTS.relative_to(ROOT))))


def test_alert_rule_unit_tests_pass() -> None:
    assert_ok(promtool("test", "rules", str(ALERT_TESTS.relative_to(ROOT))))


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, loaded as a recording rule by promtool."""
    rules = [
        {"record": f"shadowzoo_dashboard:panel_{panel['id']}:{target['refId'].lower()}", "expr": grafana_to_promql(expr)}
        for panel, target, expr in dashboard_queries()
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    assert_ok(promtool("check", "rules", str(path)))


# --- Prometheus config and alerts -----------------------------------------------------

def test_prometheus_scrapes_the_daemon_and_the_gateway_and_loads_the_alerts() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    assert targets == {"shadowzoo-daemon": ["127.0.0.1:8900"], "shadowzoo-gateway": ["127.0.0.1:8800"]}
    assert config["rule_files"] == ["alerts.yml"]


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_the_alerts_named_by_the_issue_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    assert names >= {
        "ShadowDropsHigh", "ChallengerErrorRateHigh", "ChampionLatencyAboveSLO", "DaemonDown", "GatewayDown",
        "ShadowBudgetExhausted", "SpoolLagHigh", "PromotionReady", "SpoolShippingLagHigh",
    }


def test_every_alert_has_a_duration_a_severity_and_guidance() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), f"{name}: needs a `for:` duration"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 80, f"{name}: the description must say what to do"
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}
    assert severities["PromotionReady"] == "info"
    assert severities["GatewayDown"] == "critical"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts without a test case that fires them"
    assert names - quiet == set(), "alerts without a test case where they must stay quiet"


def test_the_latency_slo_is_one_commented_constant() -> None:
    rule = next(r for r in alert_rules() if r["alert"] == "ChampionLatencyAboveSLO")
    expr = rule["expr"]
    assert "histogram_quantile(0.95" in expr and "shadowzoo_upstream_latency_seconds_bucket" in expr
    assert 'role="champion"' in expr
    threshold = re.search(r"#[^\n]*\n\s*>\s*(\d+(?:\.\d+)?)\s*$", expr)
    assert threshold, "the threshold should be the last line, after a comment saying what it is"
    assert f"{threshold.group(1)}s SLO" in rule["annotations"]["summary"]


def test_alerts_use_only_metrics_shadowzoo_exports() -> None:
    for rule in alert_rules():
        used = metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= KNOWN_SERIES, f"{rule['alert']}: unknown metrics {sorted(used - KNOWN_SERIES)}"


# --- Grafana ---------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside collapsed rows, rows themselves excluded."""
    found = []
    for panel in panels:
        if panel.get("type") == "row":
            found.extend(all_panels(panel.get("panels", [])))
        else:
            found.append(panel)
    return found


def dashboard_queries() -> list[tuple[dict, dict, str]]:
    return [(panel, target, target["expr"]) for panel in all_panels(dashboard()["panels"])
            for target in panel.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    """Fill in the dashboard's variables as Grafana would (slot = All), for promtool."""
    promql = expr.replace("$__rate_interval", "1m").replace("$slot", ".*")
    assert "$" not in promql, f"a dashboard variable this test does not know: {expr!r}"
    return promql


def test_dashboard_identity_and_slot_variable() -> None:
    board = dashboard()
    assert board["uid"] == "shadowzoo"
    assert board["schemaVersion"] >= 39  # Grafana 11 and later
    variables = {v["name"]: v for v in board["templating"]["list"]}
    slot = variables["slot"]
    assert slot["type"] == "query"
    assert slot["datasource"] == DATASOURCE
    assert slot["query"] == "label_values(shadowzoo_champion_info, slot)"
    assert set(variables) == {"slot"}
    ids = [p["id"] for p in board["panels"]] + [p["id"] for row in board["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_panel_has_a_title_a_datasource_and_a_query() -> None:
    panels = all_panels(dashboard()["panels"])
    assert len(panels) >= 15
    for panel in panels:
        title = panel.get("title", "")
        assert title.strip(), f"panel {panel.get('id')} has no title"
        assert panel.get("datasource") == DATASOURCE, title
        targets = panel.get("targets", [])
        assert targets, f"{title}: no targets"
        for target in targets:
            assert target.get("expr", "").strip(), f"{title}: target {target.get('refId')} has no expr"
            assert target.get("datasource", DATASOURCE) == DATASOURCE, title
        assert len({t["refId"] for t in targets}) == len(targets), f"{title}: duplicate refId"
        for flagged in (panel, *targets):
            assert flagged.get("shadowzooRareEvent", False) in (True, False), title


def test_dashboard_shows_every_metric_and_the_zero_line() -> None:
    used = set().union(*(metric_names(expr) for _, _, expr in dashboard_queries()))
    expected = COUNTERS | GAUGES | {f"{h}_bucket" for h in HISTOGRAMS}
    assert expected - used == set(), "metrics no panel shows"
    panels = all_panels(dashboard()["panels"])
    assert len({p["title"] for p in panels}) == len(panels), "panel titles must be unique"
    delta = next(p for p in panels if "shadowzoo_net_delta_lower_usd" in p["targets"][0]["expr"])
    defaults = delta["fieldConfig"]["defaults"]
    assert any(step["value"] == 0 for step in defaults["thresholds"]["steps"])
    assert defaults["custom"]["thresholdsStyle"]["mode"] == "line"


def test_panels_that_may_be_empty_in_a_demo_are_marked() -> None:
    rare = {p["title"] for p in all_panels(dashboard()["panels"]) if p.get("shadowzooRareEvent")}
    assert {"Shadow drops by reason", "Promotion-ready challengers", "Spool shipping lag by gateway host"} <= rare


def test_dashboard_uses_only_metrics_shadowzoo_exports() -> None:
    for panel, target, expr in dashboard_queries():
        used = metric_names(expr)
        assert used, f"{panel['title']} {target['refId']}: no metric found in {expr!r}"
        assert used <= KNOWN_SERIES, f"{panel['title']}: unknown metrics {sorted(used - KNOWN_SERIES)}"
    variable_query = dashboard()["templating"]["list"][0]["query"]
    assert re.match(r"label_values\((\w+),", variable_query).group(1) in KNOWN_SERIES


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert [(d["uid"], d["type"]) for d in datasources] == [("prometheus", "prometheus")]
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"] and providers[0]["options"]["path"]


# --- systemd ---------------------------------------------------------------------------

def test_systemd_unit_runs_serve_with_a_graceful_stop_and_a_writable_workspace() -> None:
    unit = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            unit.setdefault(key.strip(), value.strip())
    assert unit["ExecStart"] == "/opt/shadowzoo/.venv/bin/shadowzoo serve --workers 2"
    assert unit["Restart"] == "on-failure"
    assert unit["KillSignal"] == "SIGTERM"
    assert unit["EnvironmentFile"] == "/etc/shadowzoo/shadowzoo.env"
    assert unit["ProtectSystem"] == "strict" and unit["NoNewPrivileges"] == "yes" and unit["PrivateTmp"] == "yes"
    assert unit["ReadWritePaths"] == unit["WorkingDirectory"]
    # `serve` stops 2 gateway workers, then the daemon, each with up to 20 s.
    assert unit["KillMode"] == "mixed"
    assert int(unit["TimeoutStopSec"].rstrip("s")) > 3 * 20


def test_systemd_unit_has_no_unknown_directives() -> None:
    done = run_tool("systemd-analyze", "systemd", "verify", str(UNIT))
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if line.strip() and "is not executable" not in line and "No such file" not in line]
    assert not problems, "\n".join(problems)


# --- the distributed compose file ----------------------------------------------------

def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def shadowzoo_services() -> dict[str, dict]:
    """The services running the shadowzoo image (their command is a `shadowzoo` command line)."""
    return {name: service for name, service in compose_services().items() if service.get("image") == "shadowzoo:local"}


def parsed_command(argv: list[str]):
    """A `shadowzoo` command line parsed by the CLI itself (options checked, nothing run): the
    command's click context."""
    import typer.main

    from ops.cli import app

    command = typer.main.get_command(app).commands[argv[0]]
    return command.make_context(argv[0], list(argv[1:]))


def test_every_compose_worker_is_a_serve_with_roles_the_cli_accepts_on_the_distributed_backend() -> None:
    from ops.roles import ROLES, check_backend, parse_roles

    taken: dict[str, list[str]] = {role: [] for role in ROLES}
    for name, service in shadowzoo_services().items():
        context = parsed_command(service["command"])  # an unknown option or a bad value raises here
        if context.info_name == "sim":
            continue
        assert context.info_name == "serve", name
        roles = parse_roles(context.params["role"])
        check_backend(roles, "distributed")
        for role in roles:
            taken[role].append(name)
    assert {role: len(names) for role, names in taken.items()} == {
        "gateway": 2, "ingest": 2, "runner": 2, "scorer": 2, "admin": 1}, taken


def test_each_compose_host_has_a_name_and_a_state_volume_of_its_own_beside_the_shared_workspace() -> None:
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    workers = {name: service for name, service in shadowzoo_services().items() if service["command"][0] == "serve"}
    assert len({service["hostname"] for service in workers.values()}) == len(workers)
    for name, service in workers.items():
        mounts = {target: source for source, target in (volume.removesuffix(":ro").rsplit(":", 1)
                                                         for volume in service["volumes"])}
        assert mounts[config["state_dir"]] == f"{name}-state", name
        assert mounts["/workspace"].startswith("${SHADOWZOO_WORKSPACE_DIR"), name
    assert {f"{name}-state" for name in workers} <= set(yaml.safe_load(COMPOSE.read_text())["volumes"])


def test_the_compose_config_loads_as_the_distributed_backend_on_the_compose_services(tmp_path: Path) -> None:
    from ops.workspace_init import init_workspace
    from registry import load_workspace

    workspace_dir = init_workspace(tmp_path / "ws")  # the demo's specs and skills, which the config names
    (workspace_dir / "shadowzoo.yaml").write_text(COMPOSE_CONFIG.read_text())
    config = load_workspace(workspace_dir).config
    assert config.backend == "distributed" and config.distributed.host is None  # each container's hostname
    services = compose_services()
    url = urlsplit(config.distributed.postgres_url)
    database = services["postgres"]["environment"]
    assert (url.hostname, url.port, url.username, url.path) == (
        "postgres", 5432, database["POSTGRES_USER"], f"/{database['POSTGRES_DB']}")
    assert config.distributed.object_store.endpoint == "http://s3:8333"
    assert "-s3.port=8333" in services["s3"]["command"]
    assert f"-bucket={config.distributed.object_store.bucket}" in services["s3"]["command"]
    assert config.providers["sim"].base_url == "http://sim:8700/v1" and "8700" in services["sim"]["command"]
    assert "127.0.0.1:8900:8900" in services["admin"]["ports"] and config.daemon.admin_host == "0.0.0.0"


def test_the_compose_sets_exactly_the_credential_variables_the_config_names() -> None:
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    store = config["distributed"]["object_store"]
    named = {store["access_key_env"], store["secret_key_env"], config["daemon"]["admin_token_env"],
             config["gateway"]["client_keys_env"], "PGPASSWORD"}  # libpq's, for the password the URL leaves out
    named |= {provider["api_key_env"] for provider in config["providers"].values()}
    for name, service in shadowzoo_services().items():
        assert set(service["environment"]) == named, name
        assert all(f"${{{variable}" in value for variable, value in service["environment"].items()), name
    assert set(compose_services()["s3"]["environment"]) == {store["access_key_env"], store["secret_key_env"]}
    example = {line.split("=", 1)[0] for line in COMPOSE_ENV.read_text().splitlines() if "=" in line and line[0] != "#"}
    assert example == named | {"SHADOWZOO_WORKSPACE_DIR"}


# --- metric names in PromQL -----------------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}
TOKEN = re.compile(r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<comment>\#[^\n]*)
    | (?P<braces>\{[^}]*\})
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or
    aggregations, keywords, or label names in a grouping clause (`by (...)`, `on (...)`)."""
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "other" or m.group().strip()]
    names = set()
    in_grouping = False
    for i, (kind, text) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        previous = tokens[i - 1][1] if i else ""
        if kind == "other" and text == "(" and previous in {"by", "without", "on", "ignoring", "group_left",
                                                                "group_right"}:
            in_grouping = True
        elif kind == "other" and text == ")" and in_grouping:
            in_grouping = False
        elif kind == "name" and not in_grouping and text.lower() not in KEYWORDS \
                and following not in {"(", "by", "without"}:  # a function, or `sum by (...) (...)`
            names.add(text)
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = ('histogram_quantile(0.95, sum by (slot, le) (rate(shadowzoo_upstream_latency_seconds_bucket'
            '{role="champion", slot=~"a|b"}[5m]))) > 5  # 5 seconds, see rate(foo)\n'
            'and on (slot) sum without (instance) (shadowzo_typo_total) * 1e3 unless absent(up{job="x"})')
    assert metric_names(expr) == {"shadowzoo_upstream_latency_seconds_bucket", "shadowzo_typo_total", "up"}
