"""Issue 16's acceptance: one deployment of `backend: distributed` across "hosts" on loopback,
each host a `shadowzoo serve --role ...` process with a workspace (state dir) of its own.

  gw-1, gw-2          --role gateway                  two gateway hosts (own spools, own routes.json)
  worker-1, worker-2  --role ingest,runner,scorer     two ingest and two runner workers, two scorer candidates
  admin               --role admin                    the admin API

on a PostgreSQL and an S3 server (`weed mini`) of this module's own (it kills them), the fast
simulator as every model. Traffic and labels (some late) go through both gateways with the
real openai client while, in turn: the worker leading the slot's scorer is killed (`kill -9`
of its host's processes: one ingest worker, one runner worker and the scorer leader at once),
PostgreSQL is killed and restarted, the object store is killed, gateway gw-1 is killed with
segments it could not ship yet, the store restarted and gw-1 restarted, and the admin is
killed while an operator's calls go through it and restarted (while the lake catches up,
so that it adds little to the run). Then the tests read what the
deployment made of it: every accepted capture stored once, no pair twice, the same
leaderboard as the embedded backend on the same traffic, `status` through the restarted
admin showing both gateway hosts' shipping caught up, and a promotion through it reaching
both gateways. The last two tests kill PostgreSQL under an ingest (the segment
waits, never quarantined) and stop every host at once (each stops cleanly).
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import openai
import psycopg
import pytest
import yaml

from ops.workspace_init import init_workspace
from registry import Registry, load_workspace, utcnow
from registry.errors import ConfigError
from scorer.leaderboard_model import Leaderboard
from scorer.service import Scorer
from shadow.ingest import ingest_from, ingest_spool
from shadow.spool import ready_segments, spool_dir, write_segment
from shadow.spool_records import OutcomeRecord, TrafficRecord
from shadow.spool_source import object_store_spool
from tests.backends import differences, evidence, replay, within, without_bounds
from tests.clirun import run_in_process
from tests.engines import PostgresServer, S3Server, distributed_section
from tests.servers import (ADMIN_TOKEN, TICKET_INPUTS, Served, champion_workspace, edit_config, free_port, wait_until,
                           wait_while_progressing)

SLOT = "support-triage"
TICKETS = [json.loads(line) for line in
           (Path(__file__).resolve().parent.parent / "examples" / "demo" / "tickets.jsonl").read_text().splitlines()]
HOSTS = {"admin": "admin", "gw-1": "gateway", "gw-2": "gateway",
         "worker-1": "ingest,runner,scorer", "worker-2": "ingest,runner,scorer"}
"""Each host's `serve --role`."""
LEASE_TTL_S = 4.0
"""How soon a killed worker's segments and replay batches pass to the other (defaults: 5 min and 30 s)."""
SETTLE_S = 120.0
"""The bound on each wait for the deployment to catch up (it is far quicker on a quiet machine)."""
SCORER = f"scorer/{SLOT}"
log = logging.getLogger(__name__)  # each step of the run, with when (`--log-cli-level=INFO` shows them live)

pytestmark = pytest.mark.timeout(600)  # the first test's setup is the whole run (about a minute on a quiet machine)


@dataclass
class Sent:
    """One request the client got an answer to, and its label."""

    request_id: str
    client_id: str
    label: str
    gateway: str
    version: str


@dataclass
class Run:
    """What the deployment did and made of the traffic."""

    sent: list[Sent] = field(default_factory=list)
    labels: list[OutcomeRecord] = field(default_factory=list)
    leaders: list[tuple[str, int]] = field(default_factory=list)
    """The scorer's (leader, epoch) before the kill and after the takeover."""
    killed_worker: str = ""
    unshipped_at_kill: set[str] = field(default_factory=set)
    """gw-1's captures and labels (their request keys) in local segments, not yet in the object
    store, when it was killed."""
    after_restart: list[str] = field(default_factory=list)
    """The champion versions the restarted gw-1 answered with."""
    board: Leaderboard | None = None
    embedded: Leaderboard | None = None
    stored: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per table: (rows, distinct keys) as the scorer reads them."""
    stored_ids: list[str] = field(default_factory=list)
    promoted: str = ""
    served_after_promotion: dict[str, str] = field(default_factory=dict)
    admin_calls: list[int | str] = field(default_factory=list)
    """The operator's status calls through the admin until it was killed: HTTP statuses, then the error."""
    admin_status: dict = field(default_factory=dict)
    """`shadowzoo status --json` through the restarted admin once the deployment caught up."""


class Deployment:
    """The hosts' workspaces and `serve` processes, the engines, and the traffic sent so far."""

    def __init__(self, root: Path, simulator_url: str, postgres: PostgresServer, store: S3Server, extensions: Path) -> None:
        self.root, self.simulator_url, self.postgres, self.store = root, simulator_url, postgres, store
        self.env = {**store.credentials_env, "SIM_API_KEY": "sim"}
        self.dirs = {"admin": champion_workspace(root / "admin", simulator_url, gateway={"flush_interval_s": 0.1},
                                                 daemon={"ingest_interval_s": 0.5, "score_interval_s": 1}, settings={
            "backend": "distributed",
            "distributed": distributed_section(postgres, store, extensions, host="admin") | {
                "segment_lease_ttl_s": LEASE_TTL_S, "replay_lease_ttl_s": LEASE_TTL_S}})}
        edit_config(self.dirs["admin"], _comparable)
        self.dirs |= {host: _host_like(self.dirs["admin"], root / host, host) for host in HOSTS if host != "admin"}
        with Registry.open(load_workspace(self.dirs["admin"])) as registry:
            self.versions = {v.version_id: v.label for v in registry.variants(slot=SLOT)}
            self.champion = registry.champion(SLOT).version_id
        self.served: dict[str, Served] = {}
        self.count = 0

    def start(self, *hosts: str) -> None:
        """Start these hosts' `serve` at once (each waits until it answers)."""
        with ThreadPoolExecutor(len(hosts)) as pool:
            for host, served in zip(hosts, pool.map(self._serve, hosts)):
                self.served[host] = served

    def _serve(self, host: str) -> Served:
        return Served(self.dirs[host], env=self.env, roles=HOSTS[host])

    def stop(self) -> dict[str, tuple[int, str]]:
        """Stop every host still running, at once; each one's exit status and what it printed while stopping."""
        running = {host: served for host, served in self.served.items() if served.process.poll() is None}
        printed = {host: len(served.output()) for host, served in running.items()}
        with ThreadPoolExecutor(len(running) or 1) as pool:
            outputs = dict(zip(running, pool.map(Served.stop, running.values())))
        return {host: (running[host].process.returncode, outputs[host][printed[host]:]) for host in running}

    def ask(self, gateway: str, count: int, run: Run, label_now: bool = True) -> list[Sent]:
        """`count` chat completions through a gateway, each answered; half of them labelled at once
        through its feedback endpoint (by the client's id or shadowzoo's, in turn) unless not `label_now`."""
        client = openai.OpenAI(base_url=f"{self.served[gateway].gateway}/v1", api_key="x", max_retries=0, timeout=30)
        sent = []
        for _ in range(count):
            ticket = TICKETS[self.count % len(TICKETS)]
            client_id = f"acc-{self.count:03d}"
            self.count += 1
            raw = client.chat.completions.with_raw_response.create(
                model=SLOT, messages=[{"role": "user", "content": ticket["input"]}],
                extra_headers={"x-shadowzoo-request-id": client_id})
            assert raw.parse().choices[0].message.content
            sent.append(Sent(raw.headers["x-shadowzoo-request-id"], client_id, ticket["expected"], gateway,
                             raw.headers["x-shadowzoo-version"]))
        run.sent += sent
        if label_now:
            self.label(gateway, sent[::2], run)
        return sent

    def label(self, gateway: str, sent: list[Sent], run: Run) -> None:
        for index, one in enumerate(sent):
            key = one.client_id if index % 2 else one.request_id
            body = json.dumps({"request_id": key, "label": one.label}).encode()
            request = urllib.request.Request(f"{self.served[gateway].gateway}/v1/feedback", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status in (200, 202)
            run.labels.append(OutcomeRecord(request_key=key, value=one.label, received_at=utcnow()))

    def scorer_leader(self) -> tuple[str, int] | None:
        """The slot's scorer leader (`<host>:<pid>`) and its epoch, once elected."""
        with psycopg.connect(self.postgres.url, connect_timeout=5) as connection:
            row = connection.execute("SELECT leader, epoch FROM leadership WHERE name = %s", [SCORER]).fetchone()
        return (row[0], row[1]) if row and row[0] else None

    def admin_board(self) -> Leaderboard | None:
        status, board = self.served["admin"].call(f"/admin/leaderboard?slot={SLOT}")
        return Leaderboard.model_validate(board) if status == 200 else None

    def served_by(self, gateway: str) -> str:
        """The champion version a gateway answers with now."""
        client = openai.OpenAI(base_url=f"{self.served[gateway].gateway}/v1", api_key="x", max_retries=0, timeout=30)
        raw = client.chat.completions.with_raw_response.create(
            model=SLOT, messages=[{"role": "user", "content": TICKET_INPUTS[0]}])
        return raw.headers["x-shadowzoo-version"]


def _comparable(config: dict) -> None:
    """Scoring both backends can be compared on: verdicts from 10 pairs, and no cost for latency (the
    challengers' latencies are measured anew by each backend's runner, on a machine however loaded)."""
    config["slots"][SLOT]["scoring"].update(min_samples=10, latency_cost_per_s=0)


def _host_like(admin_dir: Path, directory: Path, host: str) -> Path:
    """Another host's workspace: the admin's config with its own name and ports (the registry is shared)."""
    workspace_dir = init_workspace(directory)
    config = yaml.safe_load((admin_dir / "shadowzoo.yaml").read_text())
    config["distributed"]["host"] = host
    config["gateway"]["port"], config["daemon"]["admin_port"] = free_port(), free_port()
    (workspace_dir / "shadowzoo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workspace_dir


def _local_records(workspace_dir: Path) -> set[str]:
    """The request ids of the captures and the request keys of the labels in a gateway host's
    complete local segments (written, not shipped yet)."""
    segments = ready_segments(spool_dir(load_workspace(workspace_dir).state_dir))
    records = [json.loads(line) for path in segments for line in path.read_bytes().splitlines() if line]
    return {record.get("request_id") or record["request_key"] for record in records}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, simulator, lake_extensions) -> Deployment:
    """The engines and the hosts' workspaces; every process stopped at the end, even on failure."""
    root = tmp_path_factory.mktemp("acceptance")
    with ExitStack() as started:  # stopped in reverse order, whatever failed
        postgres = PostgresServer()
        started.callback(postgres.close)
        store = S3Server(root / "s3")
        started.callback(store.stop)
        environment = started.enter_context(pytest.MonkeyPatch.context())
        for name, value in store.credentials_env.items():  # the tests read the lake in this process
            environment.setenv(name, value)
        log.info("PostgreSQL and the object store up")
        deployment = Deployment(root, simulator.base_url, postgres, store, lake_extensions)
        started.callback(deployment.stop)
        log.info("the hosts' workspaces made, the demo's specs registered")
        yield deployment


@pytest.fixture(scope="module")
def run(deployment: Deployment) -> Run:
    return _drive(deployment)


def _drive(deployment: Deployment) -> Run:
    """Traffic through both gateways while a worker, PostgreSQL, the object store and a gateway die."""
    run = Run()
    deployment.start(*HOSTS)
    log.info("every host serves")
    for gateway in ("gw-1", "gw-2"):
        deployment.ask(gateway, 8, run)
    _kill_the_scorer_leaders_host(deployment, run)
    deployment.postgres.kill()
    for gateway in ("gw-1", "gw-2"):  # champions are served from each host's last good routes
        deployment.ask(gateway, 4, run)
    deployment.postgres.start()
    log.info("PostgreSQL killed and restarted")
    _kill_the_store_and_a_gateway_that_cannot_ship(deployment, run)
    unlabelled = [one for one in run.sent if not {one.request_id, one.client_id} & {r.request_key for r in run.labels}]
    deployment.label("gw-1", unlabelled[::2], run)  # the late labels, through both gateways
    deployment.label("gw-2", unlabelled[1::2], run)
    log.info("the late labels sent")
    with ThreadPoolExecutor(1) as pool:
        admin_back = pool.submit(_kill_the_admin_under_calls, deployment, run)  # restarts while the lake catches up
        _settle(deployment, run, admin_back)
    _promote_through_the_admin(deployment, run)
    return run


def _kill_the_scorer_leaders_host(deployment: Deployment, run: Run) -> None:
    """`kill -9` the worker leading the slot's scorer (its ingest and runner too) while traffic comes;
    the other candidate takes the slot."""
    run.leaders.append(wait_until(deployment.scorer_leader, timeout_s=SETTLE_S, interval_s=0.2))
    run.killed_worker = run.leaders[0][0].split(":")[0]
    deployment.served[run.killed_worker].kill()
    log.info("killed %s, the scorer leader's host", run.killed_worker)
    for gateway in ("gw-1", "gw-2"):
        deployment.ask(gateway, 8, run, label_now=False)
    run.leaders.append(wait_until(lambda: (now := deployment.scorer_leader()) and now[0] != run.leaders[0][0] and now,
                                  timeout_s=SETTLE_S, interval_s=0.2))
    log.info("the other candidate leads: %s", run.leaders[1])


def _kill_the_admin_under_calls(deployment: Deployment, run: Run) -> None:
    """`kill -9` the admin host while an operator's `status` calls go through it, and restart it
    (the rest of the run then reads the board, asks `status` and promotes through it)."""
    admin = deployment.served["admin"]

    def operator() -> None:
        for _ in range(1000):  # until the kill cuts a call off
            try:
                run.admin_calls.append(admin.call("/admin/status")[0])
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, or cut off mid-answer
                run.admin_calls.append(type(exc).__name__)
                return

    with ThreadPoolExecutor(1) as pool:
        calling = pool.submit(operator)
        wait_until(lambda: run.admin_calls, timeout_s=SETTLE_S, interval_s=0.05)
        admin.kill()
        calling.result(timeout=SETTLE_S)
    deployment.start("admin")
    log.info("the admin killed under calls (%d answered, then %s) and restarted", len(run.admin_calls) - 1,
             run.admin_calls[-1])


def _kill_the_store_and_a_gateway_that_cannot_ship(deployment: Deployment, run: Run) -> None:
    """With the object store down, gw-1's captures and labels pile up on its disk; `kill -9` it
    holding them (once written: a kill loses what a gateway had not flushed yet, as documented),
    bring the store back, restart gw-1 and ask it again."""
    deployment.store.kill()
    labelled = len(run.labels)
    stranded = {one.request_id for one in deployment.ask("gw-1", 6, run)}
    stranded |= {label.request_key for label in run.labels[labelled:]}
    deployment.ask("gw-2", 4, run)
    run.unshipped_at_kill = wait_until(lambda: stranded <= (local := _local_records(deployment.dirs["gw-1"])) and local,
                                       timeout_s=SETTLE_S)
    deployment.served["gw-1"].kill()
    deployment.store.start()
    deployment.start("gw-1")
    log.info("the object store killed and restarted, gw-1 killed and restarted")
    run.after_restart = [one.version for one in deployment.ask("gw-1", 4, run)]


def _promote_through_the_admin(deployment: Deployment, run: Run) -> None:
    run.promoted = next(version for version, label in deployment.versions.items() if label.startswith("careful-mini"))
    status, answer = deployment.served["admin"].call("/admin/promote", {
        "slot": SLOT, "version_id": run.promoted, "actor": "acceptance", "reason": "drill", "force": True})
    assert status == 200, answer
    for gateway in ("gw-1", "gw-2"):
        run.served_after_promotion[gateway] = wait_until(
            lambda: (version := deployment.served_by(gateway)) == run.promoted and version, timeout_s=SETTLE_S)
    log.info("both gateways serve the promoted champion")


def _settle(deployment: Deployment, run: Run, admin_back: Future) -> None:
    """Wait until the lake holds every capture and the scorer's board (read through the admin, once
    `admin_back` says it is back) is the embedded backend's on the same traffic (both bounded: a
    test then says what differs); keep what the scorer reads."""
    with Registry.open(load_workspace(deployment.dirs["admin"])) as registry:
        def stored_ids() -> list[str]:
            with registry.database.reading() as db:
                return [row[0] for row in db.execute("SELECT request_id FROM traffic").fetchall()]

        sent = sorted(one.request_id for one in run.sent)
        try:
            wait_until(lambda: sorted(stored_ids()) == sent, timeout_s=SETTLE_S, interval_s=0.5)
        except AssertionError:
            pass
        run.stored_ids = stored_ids()
        log.info("the lake holds %d of %d captures", len(set(run.stored_ids) & set(sent)), len(sent))
        with registry.database.reading() as db:
            traffic = db.execute("SELECT * FROM traffic ORDER BY seq").to_arrow_table().to_pylist()
        run.embedded = _embedded_board(deployment.root / "embedded", deployment.simulator_url, traffic, run.labels)
        admin_back.result(timeout=SETTLE_S)
        try:  # as long as the runners and the scorer keep adding pairs (a loaded machine is slow)
            wait_while_progressing(lambda: (board := deployment.admin_board()) and not _unlike(board, run.embedded),
                                   lambda: _pairs(deployment.admin_board()), stall_s=SETTLE_S)
        except AssertionError:
            pass
        run.board = deployment.admin_board()
        log.info("the scorer's board and the embedded one compared")

        def caught_up() -> bool:
            run.admin_status = _status(deployment)
            return _shipped_and_ingested(run.admin_status)

        try:
            wait_until(caught_up, timeout_s=SETTLE_S, interval_s=0.5)
        except AssertionError:
            pass
        with registry.database.reading() as db:
            run.stored = {table: db.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM {table}").fetchone()
                          for table, key in {"traffic": "request_id", "outcomes": "outcome_id",
                                             "paired": "period_id, request_seq, version_id",
                                             "metric_values": "request_id, version_id, metric_key, label_key"}.items()}


def _pairs(board: Leaderboard | None) -> list[int]:
    """Each row's pairs on a board (what grows while the scorer catches up)."""
    return [row.comparison.pairs if row.comparison else 0 for row in board.rows] if board else []


def _status(deployment: Deployment) -> dict:
    """`shadowzoo status --json` on the admin host (through its admin API)."""
    result = run_in_process(("status", "--json"), deployment.dirs["admin"], {"SHADOWZOO_ADMIN_TOKEN": ADMIN_TOKEN})
    assert result.code == 0, result.err
    return json.loads(result.out)


def _shipped_and_ingested(status: dict) -> bool:
    """Both gateway hosts report their shipping, and nothing of theirs waits in the bucket."""
    hosts = {h["host"]: h for h in status["gateway_shipping"]["hosts"]}
    return all(host in hosts and not hosts[host]["silent"] and hosts[host]["waiting_segments"] == 0
               for host in ("gw-1", "gw-2"))


def _embedded_board(directory: Path, simulator_url: str, traffic: list[dict], labels: list[OutcomeRecord]) -> Leaderboard:
    """The embedded backend's board on the same traffic: the captures as the lake stored them and
    the same labels, ingested, replayed and scored in one DuckDB file (the captures moved in time
    as one, to after its champion's promotion: its period starts there)."""
    workspace_dir = champion_workspace(directory, simulator_url)
    edit_config(workspace_dir, _comparable)
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        champion = registry.champion(SLOT).version_id
        shift = utcnow() - min(row["received_at"] for row in traffic)
        records = [TrafficRecord(
            request_id=row["request_id"], client_request_id=row["client_request_id"], slot=row["slot"],
            received_at=row["received_at"] + shift, request=json.loads(row["request_json"]), champion_version=champion,
            status=row["status"], output=row["output"], usage=json.loads(row["usage_json"] or "null"),
            latency_ms=row["latency_ms"], stream=row["stream"], partial=row["partial"], error=row["error"],
            source=row["source"]).model_dump_json().encode() for row in traffic]
        spool = spool_dir(workspace.state_dir)
        write_segment(spool, records)
        write_segment(spool, [label.model_dump_json().encode() for label in labels])
        ingest_spool(registry.database, spool)
        replay(registry)
        return Scorer(workspace, registry).refresh(SLOT)


def test_every_capture_a_client_got_an_answer_for_is_stored_exactly_once(run: Run) -> None:
    answered = len(run.sent)
    assert answered == len({one.request_id for one in run.sent}) == 54
    assert sorted(run.stored_ids) == sorted(one.request_id for one in run.sent)
    assert run.stored["traffic"] == (answered, answered)
    assert run.stored["outcomes"] == (answered, answered)  # one label each, some sent late


def test_a_gateway_killed_with_captures_it_had_not_shipped_serves_after_restart_and_loses_none(run: Run) -> None:
    stranded = {one.request_id for one in run.sent if one.gateway == "gw-1"} & run.unshipped_at_kill
    assert len(stranded) >= 6  # killed while the object store was down: they were only on its disk
    assert stranded <= set(run.stored_ids)
    assert run.after_restart == [run.sent[0].version] * 4


def test_the_scorer_leader_killed_hands_the_slot_to_the_other_candidate(run: Run) -> None:
    (before, epoch_before), (after, epoch_after) = run.leaders
    assert before.startswith(run.killed_worker + ":") and after.split(":")[0] in {"worker-1", "worker-2"} - {
        run.killed_worker}
    assert epoch_after > epoch_before


def test_no_pair_or_metric_value_enters_what_the_scorer_reads_twice(run: Run) -> None:
    assert all(rows == keys for rows, keys in run.stored.values()), run.stored
    pairs = {row.label: row.comparison.pairs for row in run.board.rows if row.comparison}
    assert len(pairs) == 4 and set(pairs.values()) == {len(run.sent)}, pairs


def _unlike(board: Leaderboard, embedded: Leaderboard) -> dict:
    """How the lake's board differs from the embedded one's (empty: alike). Pairs, means, statuses
    and every other number must be equal; the intervals' bounds are the running intersection of
    the looks the scorer took (the lake's scorer looked many times as the traffic came, the
    embedded one once, at the end), so the lake's must lie within the embedded ones."""
    lake, lake_bounds = without_bounds(evidence(board))
    alone, alone_bounds = without_bounds(evidence(embedded))
    outside = {key: (bounds, alone_bounds.get(key)) for key, bounds in lake_bounds.items()
               if key not in alone_bounds or not within(bounds, alone_bounds[key])}
    return differences(lake, alone) | outside | dict.fromkeys(alone_bounds.keys() - lake_bounds.keys(), "missing")


def test_the_leaderboard_equals_the_embedded_backends_on_the_same_traffic(run: Run) -> None:
    assert run.board is not None and run.embedded is not None
    assert not _unlike(run.board, run.embedded), _unlike(run.board, run.embedded)
    assert any(row.comparison and row.comparison.net.lower is not None for row in run.board.rows)  # bounds compared


def test_a_promotion_through_the_admin_reaches_both_gateway_hosts(run: Run) -> None:
    assert run.served_after_promotion == {"gw-1": run.promoted, "gw-2": run.promoted}


def test_the_admin_killed_under_calls_answers_after_its_restart(run: Run) -> None:
    *answered, cut_off = run.admin_calls
    assert answered and set(answered) == {200} and isinstance(cut_off, str), run.admin_calls
    assert run.admin_status["pid"] is not None  # through the restarted admin, not read locally


def test_status_through_the_admin_shows_each_gateway_hosts_shipping_caught_up(run: Run) -> None:
    hosts = {h["host"]: h for h in run.admin_status["gateway_shipping"]["hosts"]}
    for host in ("gw-1", "gw-2"):
        assert hosts[host]["segments_shipped"] > 0 and hosts[host]["last_shipped_at"] is not None, hosts
    assert _shipped_and_ingested(run.admin_status), hosts


def test_a_segment_that_meets_postgresql_down_waits_for_the_next_ingest_and_is_never_quarantined(
    deployment: Deployment, run: Run, tmp_path: Path
) -> None:
    workspace = load_workspace(deployment.dirs["admin"])
    apart = workspace.config.distributed.model_copy(update={"spool_prefix": "held/"})  # not the workers' spool/
    source = object_store_spool(apart, tmp_path / "inbox")
    segment = f"{source.prefix}gw-9/0000000000001-7-00000000.jsonl"
    record = TrafficRecord(request_id="held-1", slot=SLOT, received_at=utcnow(), champion_version=deployment.champion,
                           request={"messages": [{"role": "user", "content": TICKET_INPUTS[0]}]}, status=200,
                           output="billing")
    source.client.put_object(Bucket=source.bucket, Key=segment, Body=record.model_dump_json().encode() + b"\n")
    with Registry.open(workspace) as registry:
        deployment.postgres.kill()  # the lake's catalog with it
        try:
            with pytest.raises((duckdb.IOException, ConfigError)):  # the catalog, or the segment's lock, unreachable
                ingest_from(registry.database, source)
        finally:
            deployment.postgres.start()
        assert _keys(source) == [segment]  # where it was: not in the quarantine
        assert ingest_from(registry.database, source).traffic_rows == 1
        with registry.database.reading() as db:
            assert db.execute("SELECT count(*) FROM traffic WHERE request_id = 'held-1'").fetchone()[0] == 1
    assert _keys(source) == []


def _keys(source) -> list[str]:
    listed = source.client.list_objects_v2(Bucket=source.bucket, Prefix=source.prefix)
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_every_host_stops_cleanly_at_once(deployment: Deployment, run: Run) -> None:
    stopped = deployment.stop()  # the last test: the fixture's own stop then finds nothing running
    assert set(stopped) == set(HOSTS) - {run.killed_worker}
    for host, (status, printed) in stopped.items():  # no daemon died stopping ("Process daemon:" and its traceback)
        assert status == 0 and "Process daemon" not in printed, (host, status, printed)
