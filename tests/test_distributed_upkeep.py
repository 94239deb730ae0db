"""Crash semantics and upkeep on `backend: distributed` (issue 16): a stale scorer leader's
commits are refused, the judge's budget holds across processes, completed lease rows are
cleaned, and the lake's snapshots and small files are maintained, against real PostgreSQL,
`weed mini` and DuckLake."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from ops.leaders import ElectedJobs
from ops.operations import LocalOperations
from ops.prometheus_metrics import DaemonMetrics
from ops import tasks
from registry import Registry, load_workspace, utcnow
from registry.db import _EXCLUSIVE_LOCKS
from registry.evidence import forget_scored_evidence
from registry.fences import Fence, fenced
from registry.leadership import LOCK_NAMESPACE, NotLeader, job_name
from registry.leases import LeaseLost, WorkLeases
from registry.workspace_config import JudgeMetric, ProviderConfig
from scorer.changes import oldest_needed
from scorer.judge import JudgeRun, run_judge
from scorer.service import Scorer
from shadow.budget_slices import BudgetLedger, run_cap
from shadow.ingest import ingest_spool
from shadow.spool import spool_dir, write_segment
from shadow.spool_records import OutcomeRecord, TrafficRecord
from shadow.simulator import SimulatorHandle, load_simulator_config, start_in_thread
from shadow.simulator.simulator_config import load_tickets
from tests.servers import wait_until
from tests.backends import evidence, replay
from tests.test_distributed_storage import SLOT, TICKETS, _lake_workspace
from tests.test_judge import DEMO, JUDGES, PRICES, RUBRIC, answers

pytestmark = pytest.mark.usefixtures("engine_credentials")  # the engines' and the simulator's keys, as an operator sets them


@pytest.fixture(scope="module")
def workspace_dir(tmp_path_factory, simulator, postgres, object_store, lake_extensions) -> Path:
    """A distributed workspace on a lake of its own: the demo traffic ingested, labelled and replayed, not scored yet."""
    return _lake_workspace(tmp_path_factory.mktemp("upkeep") / "ws", simulator, postgres, object_store,
                           lake_extensions, "upkeep", labelled=True)


@pytest.fixture
def control(workspace_dir) -> psycopg.Connection:
    with psycopg.connect(load_workspace(workspace_dir).config.distributed.postgres_url, autocommit=True) as connection:
        yield connection


@contextmanager
def _daemon(registry: Registry, candidate: str) -> Iterator[tasks.TaskContext]:
    """A daemon's jobs on their own connections, as on a host of its own; it resigns what it leads after."""
    leaders = ElectedJobs(registry.workspace.config.distributed, candidate)
    try:
        yield tasks.TaskContext(registry.workspace, LocalOperations(registry), DaemonMetrics(), leaders=leaders)
    finally:
        leaders.resign()


def _waiting_refreshes(control: psycopg.Connection) -> int:
    """Scorer refreshes waiting for the slot's refresh lock (`Database.exclusive`)."""
    return control.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                           "AND classid::bigint = %s", [_EXCLUSIVE_LOCKS]).fetchone()[0]


def _end_leader_session(control: psycopg.Connection, name: str) -> None:
    """End the PostgreSQL session in which a leader holds its lock (a network cut, as PostgreSQL sees it)."""
    def holders() -> list[int]:
        return [pid for (pid,) in control.execute(
            "SELECT l.pid FROM pg_locks l JOIN leadership j ON l.objid::bigint = j.id WHERE l.locktype = 'advisory' "
            "AND l.granted AND l.classid::bigint = %s AND j.name = %s", [LOCK_NAMESPACE, name]).fetchall()]

    pids = holders()
    assert len(pids) == 1, pids
    control.execute("SELECT pg_terminate_backend(%s)", [pids[0]])
    wait_until(lambda: not holders(), timeout_s=30)  # the session is gone, and its lock with it


def _pair_counts(registry: Registry) -> tuple[int, int]:
    with registry.database.reading() as db:
        return db.execute("SELECT count(*), count(DISTINCT (period_id, request_seq, version_id)) FROM paired").fetchone()


# A stale scorer leader

def test_a_scorer_leader_that_lost_its_session_mid_refresh_writes_nothing_after_the_new_leader(
        workspace_dir, control) -> None:
    workspace = load_workspace(workspace_dir)
    name = job_name("scorer", SLOT)
    with (Registry.open(workspace) as a, Registry.open(workspace) as b, Registry.open(workspace) as reader,
          _daemon(a, "host-a:1") as context_a, _daemon(b, "host-b:1") as context_b):
        runs: dict[str, dict] = {}

        def score(label: str, context: tasks.TaskContext) -> None:
            runs[label] = tasks.score(context)

        with reader.database.reading() as db:
            snapshots_before = db.execute("SELECT count(*) FROM leaderboard_snapshots").fetchone()[0]
        with psycopg.connect(workspace.config.distributed.postgres_url, autocommit=True) as holder:
            # the refresh lock held elsewhere: A's refresh is under way (elected, fenced) and waits there
            holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", [_EXCLUSIVE_LOCKS, f"scorer {SLOT}"])
            leader_a = threading.Thread(target=score, args=("a", context_a))
            leader_a.start()
            wait_until(lambda: _waiting_refreshes(control) == 1, timeout_s=30)
            _end_leader_session(control, name)  # A never learns it: it is past its check
            leader_b = threading.Thread(target=score, args=("b", context_b))
            leader_b.start()
            wait_until(lambda: _waiting_refreshes(control) == 2, timeout_s=30)
        for thread in (leader_a, leader_b):
            thread.join(120)
        epochs = control.execute("SELECT epoch, leader FROM leadership WHERE name = %s", [name]).fetchone()
        board_b = context_b.boards[SLOT]
        with reader.database.reading() as db:
            snapshots = db.execute("SELECT count(*) FROM leaderboard_snapshots").fetchone()[0] - snapshots_before
        stored, keys = _pair_counts(reader)
        with reader.database.transaction() as db:
            forget_scored_evidence(db, [SLOT])
        single = Scorer(workspace, reader).refresh(SLOT)
    assert epochs == (2, "host-b:1")
    assert runs["a"]["slots"] == 0 and SLOT not in context_a.boards  # A's refresh was refused, whichever ran first
    assert runs["b"]["slots"] == 1
    assert snapshots == 1  # B's only
    assert stored == keys and stored > 0
    assert evidence(board_b) == evidence(single)


def test_a_leader_commit_begun_before_a_new_leader_claimed_is_refused(workspace_dir) -> None:
    workspace = load_workspace(workspace_dir)
    old, new = Fence("fence-test", 1, "host-a:1"), Fence("fence-test", 2, "host-b:1")
    began, claimed = threading.Event(), threading.Event()
    outcome: list[BaseException | None] = []
    with Registry.open(workspace) as a, Registry.open(workspace) as b:
        old.claim(a.database)

        def write(db) -> None:
            a.database.reserve("snapshot_id", 1)
            db.execute("INSERT INTO leaderboard_snapshots (slot, period_id, taken_at, board_json) "
                       "VALUES ('stale-leader', 0, now(), '{}')")
            began.set()
            claimed.wait(30)

        def stale_leader() -> None:
            try:
                with fenced(old):
                    a.database.committed(write)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - the test reads what the thread raised
                outcome.append(exc)

        thread = threading.Thread(target=stale_leader)
        thread.start()
        assert began.wait(30)
        new.claim(b.database)  # B takes over while A's transaction is open
        claimed.set()
        thread.join(60)
        with b.database.reading() as db:
            written = db.execute("SELECT count(*) FROM leaderboard_snapshots WHERE slot = 'stale-leader'").fetchone()[0]
            fences = db.execute("SELECT epoch FROM leader_fences WHERE name = 'fence-test'").fetchall()
    assert isinstance(outcome[0], NotLeader), outcome
    assert written == 0
    assert fences == [(2,)]


# Lease rows

def test_the_retention_job_deletes_lease_rows_done_long_ago_and_keeps_those_a_worker_still_holds(
        workspace_dir, control) -> None:
    workspace = load_workspace(workspace_dir)
    worker = WorkLeases(control, "upkeep-segment", "host-i:1", 30)
    worker.offer(["done-long-ago", "done-just-now", "held", "held-stalled", "stalled-long-ago", "never-claimed"])
    leases = {lease.item: lease for lease in worker.claim(6)}
    worker.release([leases.pop("never-claimed").token])
    for item in ("done-long-ago", "done-just-now"):
        worker.complete(leases[item].token)
    day = 2 * 86_400  # two days later, written into the rows
    control.execute("UPDATE work_leases SET done_at = done_at - make_interval(secs => %s) "
                    "WHERE kind = 'upkeep-segment' AND item = 'done-long-ago'", [day])
    control.execute("UPDATE work_leases SET expires_at = now() - make_interval(secs => %s) "
                    "WHERE kind = 'upkeep-segment' AND item = 'stalled-long-ago'", [day])
    control.execute("UPDATE work_leases SET expires_at = now() - interval '1 minute', "
                    "offered_at = offered_at - make_interval(secs => %s) "
                    "WHERE kind = 'upkeep-segment' AND item IN ('held-stalled', 'never-claimed')", [day])
    with Registry.open(workspace) as registry, _daemon(registry, "host-r:1") as daemon:
        counts = tasks.retention(daemon)
    kept = {item for (item,) in control.execute("SELECT item FROM work_leases WHERE kind = 'upkeep-segment'")}
    assert counts["lease_rows_deleted"] >= 2
    assert kept == {"done-just-now", "held", "held-stalled", "never-claimed"}
    for item in ("held", "held-stalled"):  # their holder's fence still holds: it completes them
        worker.complete(leases[item].token)
    with pytest.raises(LeaseLost):
        worker.complete(leases["stalled-long-ago"].token)
    assert worker.offer(["done-just-now"]) == 0  # a recently done item is not offered again


def test_the_retention_job_forgets_workers_gone_a_day_and_budget_days_past_a_week_and_keeps_the_live_ones(
        workspace_dir, control) -> None:
    control.execute("INSERT INTO worker_heartbeats (worker, role, seen_at) VALUES "
                    "('killed-yesterday', 'runner', now() - interval '25 hours'), "
                    "('beating', 'runner', now()), ('stalled-an-hour', 'runner', now() - interval '1 hour')")
    ledger = BudgetLedger(control)
    today = utcnow().date()
    for days_ago in (0, 7, 8, 30):
        ledger.reserve("shadow/forgetting", today - timedelta(days=days_ago), 1.0, 0.1)
    with Registry.open(load_workspace(workspace_dir)) as registry, _daemon(registry, "host-h:1") as daemon:
        counts = tasks.retention(daemon)
    workers = {worker for (worker,) in control.execute("SELECT worker FROM worker_heartbeats")}
    days = {(today - day).days for (day,) in control.execute(
        "SELECT day FROM budget_days WHERE scope = 'shadow/forgetting'")}
    assert {"beating", "stalled-an-hour"} <= workers and "killed-yesterday" not in workers
    assert days == {0, 7}
    assert counts["heartbeat_rows_deleted"] >= 1 and counts["budget_rows_deleted"] >= 2


# The judge's budget

@pytest.fixture(scope="module")
def grader() -> Iterator[SimulatorHandle]:
    """The simulator with the judge's grader models."""
    config = load_simulator_config(DEMO / "simulator.yaml").model_copy(update={"models": JUDGES, "seed": 5})
    with start_in_thread(config) as handle:
        yield handle


def test_two_scorers_judging_at_once_stop_at_the_judges_one_daily_budget(workspace_dir, grader, control) -> None:
    config = load_workspace(workspace_dir).config.distributed
    budget, key = 0.03, "judge:shared-budget"
    metric = JudgeMetric(type="judge", provider="sim", model="judge", rubric=RUBRIC, sample_rate=1.0, first_line=True,
                         daily_budget_usd=budget)
    providers = {"sim": ProviderConfig(base_url=grader.base_url, api_key_env=None, max_retries=1)}
    tickets = load_tickets(load_simulator_config(DEMO / "simulator.yaml").task)
    runs: dict[str, JudgeRun] = {}

    def spend(name: str, rows) -> None:  # each alone could spend the whole budget on its rows
        with run_cap(config, f"judge/{key}", budget, 0.0) as cap:
            runs[name] = run_judge(providers, PRICES, metric, key, rows, cap)

    spenders = [threading.Thread(target=spend, args=(name, answers(tickets[start:start + 30])))
                for name, start in (("a", 0), ("b", 30))]
    for spender in spenders:
        spender.start()
    for spender in spenders:
        spender.join(120)
    spent = sum(run.spent_usd for run in runs.values())
    day = BudgetLedger(control).day(f"judge/{key}", utcnow().date())
    assert budget / 2 < spent <= budget  # each alone would have spent up to the budget; estimates are worst cases
    assert runs["a"].skipped_for_budget + runs["b"].skipped_for_budget > 60  # more than one spender's rows wait
    assert day.spent_usd == pytest.approx(spent) and day.allotted_usd == pytest.approx(spent)  # the rest given back


# The lake's upkeep

def _answered(champion: str, prefix: str) -> tuple[list[bytes], list[bytes]]:
    """Six more requests the champion answered (`<prefix>-<n>`), and their labels."""
    now = utcnow()
    traffic = [TrafficRecord(
        request_id=f"{prefix}-{index}", slot=SLOT, received_at=now + timedelta(milliseconds=index),
        champion_version=champion, status=200, request={"messages": [{"role": "user", "content": ticket["input"]}]},
        output=ticket["expected"] if index % 2 else "other", usage={"prompt_tokens": 40, "completion_tokens": 2},
        latency_ms=300.0 + index) for index, ticket in enumerate(TICKETS[:6])]
    labels = [OutcomeRecord(request_key=f"{prefix}-{index}", value=ticket["expected"], received_at=now)
              for index, ticket in enumerate(TICKETS[:6])]
    return [r.model_dump_json().encode() for r in traffic], [r.model_dump_json().encode() for r in labels]


def _snapshot_ids(registry: Registry) -> list[int]:
    with registry.database.reading() as db:
        return [row[0] for row in db.execute("SELECT snapshot_id FROM ducklake_snapshots('lake') ORDER BY 1").fetchall()]


def test_lake_upkeep_expires_snapshots_below_the_oldest_watermark_and_the_next_refresh_still_equals_a_full_rescore(
        workspace_dir) -> None:
    workspace = load_workspace(workspace_dir)
    spool = spool_dir(workspace.state_dir)
    with Registry.open(workspace) as registry:
        scorer = Scorer(workspace, registry)
        champion = registry.champion(SLOT).version_id
        for round_ in range(3):  # several small commits, each its own files and snapshots, scored as they come
            traffic, labels = _answered(champion, f"upkeep{round_}")
            write_segment(spool, traffic)
            ingest_spool(registry.database, spool)
            replay(registry)
            if round_ < 2:
                scorer.refresh(SLOT)
            write_segment(spool, labels)
            ingest_spool(registry.database, spool)
        with registry.database.reading() as db:
            floor = oldest_needed(db)
        before = _snapshot_ids(registry)
        with _daemon(registry, "host-r:2") as daemon:
            recent = tasks.retention(daemon)["lake_snapshots_expired"]
            with psycopg.connect(workspace.config.distributed.postgres_url, autocommit=True) as catalog:
                # two days later, written into the catalog's rows: past the day of snapshots always kept
                catalog.execute("UPDATE ducklake_snapshot SET snapshot_time = snapshot_time - interval '2 days'")
            counts = tasks.retention(daemon)
        after = _snapshot_ids(registry)
        incremental = scorer.refresh(SLOT)  # reads the change feed since the watermark kept
        with registry.database.transaction() as db:
            forget_scored_evidence(db, [SLOT])
        full = scorer.refresh(SLOT)
    assert floor is not None and before[0] < floor
    assert recent == 0  # the last day's snapshots stay, whatever the floor
    assert counts["lake_snapshots_expired"] == sum(1 for snapshot in before if snapshot < floor) > 0
    assert min(after) == floor and set(before) - set(after) == {snapshot for snapshot in before if snapshot < floor}
    assert evidence(incremental) == evidence(full)
    pairs = {row.label: row.comparison.pairs for row in full.rows if row.comparison}
    assert pairs and all(count == len(TICKETS) + 2 + 18 for count in pairs.values()), pairs


def test_a_daemon_whose_marks_were_expired_while_it_was_paused_counts_on_and_makes_a_full_runner_pass(
        workspace_dir) -> None:
    workspace = load_workspace(workspace_dir)
    spool = spool_dir(workspace.state_dir)
    with Registry.open(workspace) as registry, _daemon(registry, "host-p:1") as paused:
        paused.start_metrics()
        held, _ = paused.runner_pass(None)  # the marks a daemon holds in memory, then it is paused
        traffic, labels = _answered(registry.champion(SLOT).version_id, "paused")
        for rows in (traffic, labels):  # two commits: the watermark lands past the snapshot after the held one
            write_segment(spool, rows)
            ingest_spool(registry.database, spool)
        Scorer(workspace, registry).refresh(SLOT)  # the watermark moves past the held marks
        with psycopg.connect(workspace.config.distributed.postgres_url, autocommit=True) as catalog:
            catalog.execute("UPDATE ducklake_snapshot SET snapshot_time = snapshot_time - interval '2 days'")
        with _daemon(registry, "host-r:3") as upkeep:
            assert tasks.retention(upkeep)["lake_snapshots_expired"] > 0
        assert held.value + 1 < min(_snapshot_ids(registry))  # the held marks' change feed is gone
        now, after_seq = paused.runner_pass(held)
        counted = tasks.ingest(paused)  # counts from the held mark: no error, and on from here
        kept = min(_snapshot_ids(registry))
    assert after_seq is None and now.value >= kept
    assert counted["segments"] == 0 and paused.metrics_mark == now
