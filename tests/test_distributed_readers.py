"""Readers of the lake with several writers (issue 16): ingest and runner workers take `seq` in
blocks and commit in any order, and a worker that lost its lease may commit the same work
again. The daemon's counters count every row once, the trace says truly whether a request
waits for the next refresh, a not-run call two runners both stored counts once (and not at
all beside the other runner's answer), a result stored twice is graded by the judge once,
the spool lag gauge describes the object store, and a segment two ingest workers commit at
once is stored once and scores as a single commit does."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

import polars as pl
import psycopg
import pytest

import shadow.ingest
from ops.operations import LocalOperations
from ops.prometheus_metrics import DaemonMetrics
from ops.tasks import TaskContext, ingest
from registry import Registry, load_workspace, utcnow
from registry.db import registered
from registry.keyed import insert_absent
from registry.workspace_config import DistributedConfig
from scorer.browse import MAX_LIMIT, RequestFilter, browse_requests
from scorer.export import ExportOptions, export_answers
from scorer.leaderboard_model import Leaderboard
from scorer.service import Scorer
from scorer.trace import trace_request
from shadow.ingest import ingest_spool
from shadow.results import RESULT_SCHEMA
from shadow.runner import RunFilters, ShadowRunner
from shadow.spool import spool_dir, write_segment
from shadow.spool_records import OutcomeRecord, TrafficRecord
from shadow.spool_source import object_store_spool
from tests.backends import evidence, replay
from tests.servers import champion_workspace, edit_config, wait_until
from tests.test_distributed_storage import SLOT, TICKETS, _own_lake, _traffic

pytestmark = pytest.mark.usefixtures("engine_credentials")  # the engines' and the simulator's keys, as an operator sets them

UNLABELLED = "req-01"
"""A request of the scenario whose label comes only in the trace's test."""
NOT_SCORED_YET = "not scored yet: the next refresh pairs it"


def _labels(skip: str) -> list[bytes]:
    """A label for every request of `_traffic` but `skip`, by shadowzoo's request id."""
    keys = [(f"req-{i:02d}", ticket["expected"]) for i, ticket in enumerate(TICKETS)]
    keys += [("observed", TICKETS[0]["expected"]), ("tool-call", TICKETS[1]["expected"])]
    return [OutcomeRecord(request_key=key, value=value, received_at=utcnow()).model_dump_json().encode()
            for key, value in keys if key != skip]


def _score(registry: Registry, labels: list[bytes]) -> Leaderboard:
    """Ingest the labels, replay the challengers and refresh the slot's board."""
    spool = spool_dir(registry.workspace.state_dir)
    write_segment(spool, labels)
    ingest_spool(registry.database, spool)
    replay(registry)
    return Scorer(registry.workspace, registry).refresh(SLOT)


def _lock_waiters(url: str) -> int:
    """Sessions of the PostgreSQL server waiting for an advisory lock another holds."""
    with psycopg.connect(url, autocommit=True) as session:
        return session.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]


class _BothInCommit:
    """Holds each ingest worker's transaction open after it wrote the ledger until the other
    worker has written it too (both commits then race, as after a lease lost mid-commit), or
    until the other waits for a lock (it cannot get that far before this one commits)."""

    def __init__(self, postgres_url: str) -> None:
        self.postgres_url = postgres_url
        self.arrived = 0
        self.guard = threading.Lock()
        self.upsert = shadow.ingest.upsert

    def __call__(self, db, table: str, *args: Any, **kwargs: Any) -> int:
        written = self.upsert(db, table, *args, **kwargs)
        if table == "spool_segments":
            with self.guard:
                self.arrived += 1
            wait_until(lambda: self.arrived >= 2 or _lock_waiters(self.postgres_url) > 0, timeout_s=60)
        return written


def _champion_workspace(directory: Path, simulator_url: str, settings: dict | None = None) -> Path:
    """The demo workspace with its champion, whose evidence counts from 10 pairs."""
    directory = champion_workspace(directory, simulator_url, settings=settings)
    edit_config(directory, lambda config: config["slots"][SLOT]["scoring"].update(min_samples=10))
    return directory


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory, simulator, postgres, object_store, lake_extensions) -> Path:
    """A distributed workspace on a lake of its own."""
    section = _own_lake(postgres, object_store, lake_extensions, "readers")
    return _champion_workspace(tmp_path_factory.mktemp("readers") / "lake", simulator.base_url,
                               {"backend": "distributed", "distributed": section})


@pytest.fixture(scope="module")
def embedded_dir(tmp_path_factory, simulator) -> Path:
    return _champion_workspace(tmp_path_factory.mktemp("readers") / "embedded", simulator.base_url)


@pytest.fixture(scope="module")
def boards(lake_dir, embedded_dir, tmp_path_factory) -> dict[str, Any]:
    """One segment of traffic committed by two ingest workers at once on the lake (both held it:
    one lost its lease mid-commit), and once in a DuckDB file; each labelled (all but
    `UNLABELLED`), replayed and scored."""
    workspace = load_workspace(lake_dir)
    root = tmp_path_factory.mktemp("segments")
    with Registry.open(workspace) as a, Registry.open(workspace) as b:
        segment = write_segment(root / "a", _traffic(a.champion(SLOT).version_id))
        (root / "b").mkdir()
        shutil.copy(segment, root / "b" / segment.name)
        embedded_spool = spool_dir(load_workspace(embedded_dir).state_dir)
        embedded_spool.mkdir(parents=True, exist_ok=True)
        shutil.copy(segment, embedded_spool / segment.name)
        with pytest.MonkeyPatch.context() as patch, ThreadPoolExecutor(2) as workers:
            patch.setattr(shadow.ingest, "upsert", _BothInCommit(workspace.config.distributed.postgres_url))
            reports = list(workers.map(lambda worker: ingest_spool(worker[0].database, root / worker[1]),
                                       [(a, "a"), (b, "b")]))
        with a.database.reading() as db:
            stored, keys = db.execute("SELECT count(*), count(DISTINCT request_id) FROM traffic").fetchone()
        labels = _labels(skip=UNLABELLED)
        lake = _score(a, labels)
    with Registry.open(load_workspace(embedded_dir)) as registry:
        embedded = _score(registry, labels)
    return {"reports": reports, "stored": stored, "keys": keys, "lake": lake, "embedded": embedded}


def test_a_segment_two_ingest_workers_commit_at_once_is_stored_once_and_scores_as_one_commit(boards) -> None:
    assert boards["stored"] == boards["keys"] == len(TICKETS) + 2
    assert sorted(report.traffic_rows for report in boards["reports"]) == [0, len(TICKETS) + 2]
    lake, embedded = evidence(boards["lake"]), evidence(boards["embedded"])
    assert lake == embedded
    pairs = {label: row["comparison"]["pairs"] for label, row in lake.items() if row["comparison"]}
    assert pairs and all(count == len(TICKETS) + 1 for count in pairs.values()), pairs  # all but UNLABELLED


@pytest.mark.parametrize("backend", ["lake", "embedded"])
def test_a_request_labelled_after_the_last_refresh_is_not_scored_yet_rather_than_left_out(
        boards, backend, lake_dir, embedded_dir) -> None:
    workspace = load_workspace(lake_dir if backend == "lake" else embedded_dir)
    with Registry.open(workspace) as registry:
        before = trace_request(registry, UNLABELLED)
        spool = spool_dir(workspace.state_dir)
        write_segment(spool, [OutcomeRecord(request_key=UNLABELLED, value=TICKETS[1]["expected"],
                                            received_at=utcnow()).model_dump_json().encode()])
        ingest_spool(registry.database, spool)
        after = trace_request(registry, UNLABELLED)
        Scorer(workspace, registry).refresh(SLOT)
        paired = trace_request(registry, UNLABELLED)
    assert {answer.pair.reason for answer in before.challengers if answer.pair} == {"waits for the request's label"}
    assert {answer.pair.reason for answer in after.challengers if answer.pair} == {NOT_SCORED_YET}
    assert all(answer.pair.entered for answer in paired.challengers if answer.pair)


def _traffic_rows(prefix: str, champion: str, count: int) -> list[bytes]:
    now = utcnow()
    return [TrafficRecord(request_id=f"{prefix}-{index}", slot=SLOT, received_at=now + timedelta(milliseconds=index),
                          champion_version=champion, status=200, output="x", latency_ms=10.0,
                          request={"messages": [{"role": "user", "content": f"hello {index}"}]},
                          usage={"prompt_tokens": 3, "completion_tokens": 1}).model_dump_json().encode()
                  for index in range(count)]


def _counted(context: TaskContext, champion: str) -> float:
    """The champion's live answers the daemon's latency histogram has counted."""
    return context.metrics.registry.get_sample_value(
        "shadowzoo_upstream_latency_seconds_count", {"slot": SLOT, "version": champion, "role": "champion"}) or 0.0


class _Meanwhile:
    """Runs `other` (another writer's whole commit) once, inside this writer's open ingest
    transaction, after its rows took their seqs."""

    def __init__(self, other: Callable[[], None]) -> None:
        self.other: Callable[[], None] | None = other
        self.upsert = shadow.ingest.upsert

    def __call__(self, db, table: str, *args: Any, **kwargs: Any) -> int:
        written = self.upsert(db, table, *args, **kwargs)
        if table == "spool_segments" and self.other is not None:
            other, self.other = self.other, None
            other()
        return written


def test_the_daemon_counts_every_row_once_when_two_writers_commit_out_of_seq_order(boards, lake_dir, tmp_path) -> None:
    workspace = load_workspace(lake_dir)
    with Registry.open(workspace) as daemon, Registry.open(workspace) as a, Registry.open(workspace) as b:
        champion = daemon.champion(SLOT).version_id
        context = TaskContext(workspace, LocalOperations(daemon), DaemonMetrics())
        context.start_metrics()
        write_segment(tmp_path / "a", _traffic_rows("early", champion, 4))
        write_segment(tmp_path / "b", _traffic_rows("late", champion, 3))
        between = []

        def b_commits_and_the_daemon_counts() -> None:
            ingest_spool(b.database, tmp_path / "b")
            ingest(context)
            between.append(_counted(context, champion))

        # worker A draws its seqs first and commits last; B commits meanwhile and the daemon counts
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shadow.ingest, "upsert", _Meanwhile(b_commits_and_the_daemon_counts))
            ingest_spool(a.database, tmp_path / "a")
        ingest(context)
        ingest(context)  # nothing new: nothing counted again
        with daemon.database.reading() as db:
            seqs = dict(db.execute("SELECT split_part(request_id, '-', 1), max(seq) FROM traffic "
                                   "WHERE request_id LIKE 'early-%' OR request_id LIKE 'late-%' GROUP BY 1").fetchall())
    assert seqs["early"] < seqs["late"], "A's rows took the lower seqs and committed after B's"
    assert between == [3]
    assert _counted(context, champion) == 7


def test_a_call_not_run_that_two_runners_both_stored_counts_once_on_the_board(boards, lake_dir, tmp_path) -> None:
    workspace = load_workspace(lake_dir)
    with Registry.open(workspace) as scoring, Registry.open(workspace) as a, Registry.open(workspace) as b:
        champion = scoring.champion(SLOT).version_id
        challenger = next(v.version_id for v in scoring.variants(slot=SLOT, status="active") if v.version_id != champion)
        write_segment(tmp_path, _traffic_rows("skipped", champion, 1))
        ingest_spool(scoring.database, tmp_path)
        scorer = Scorer(workspace, scoring)
        before = next(row.not_run for row in scorer.refresh(SLOT).rows if row.version_id == challenger)
        with scoring.database.reading() as db:
            request_seq = db.execute("SELECT seq FROM traffic WHERE request_id = 'skipped-0'").fetchone()[0]
        result = {column: None for column in RESULT_SCHEMA} | {
            "request_id": "skipped-0", "request_seq": request_seq, "version_id": challenger, "role": "challenger",
            "status": "not_run", "error": "budget: the slot's daily shadow budget is spent", "attempts": 0,
            "finished_at": utcnow()}
        # both runners held the pair (one lost its lease): each writes it, neither sees the other's row
        with a.database.transaction() as first, b.database.transaction() as second:
            for registry, connection in ((a, first), (b, second)):
                registry.database.reserve("change_seq", 1)
                with registered(connection, "lost_batch", pl.DataFrame([result], schema=RESULT_SCHEMA).to_arrow()):
                    insert_absent(connection, "shadow_results", ("request_id", "version_id"), (*RESULT_SCHEMA, "seq"),
                                  f"SELECT {', '.join(RESULT_SCHEMA)}, nextval('change_seq') FROM lost_batch")
        with scoring.database.reading() as db:
            stored = db.execute("SELECT count(*) FROM shadow_results WHERE request_id = 'skipped-0'").fetchone()[0]
        after = next(row.not_run for row in scorer.refresh(SLOT).rows if row.version_id == challenger)
    assert stored == 2, "the lake has no keys: both runners' rows are stored"
    assert after == before + 1


def _oldest_age_s(settings: DistributedConfig, probe: Path) -> float:
    """Seconds since the object store received its oldest spool segment (as the test reads the bucket)."""
    store = object_store_spool(settings, probe)
    return time.time() - min(segment.written_at for segment in store.ready())


def test_the_spool_lag_gauge_is_the_age_of_the_oldest_segment_waiting_in_the_object_store(boards, lake_dir) -> None:
    workspace = load_workspace(lake_dir)
    settings = workspace.config.distributed
    store = object_store_spool(settings, workspace.state_dir / "probe")
    with Registry.open(workspace) as daemon:
        champion = daemon.champion(SLOT).version_id
        body = b"".join(line + b"\n" for line in _traffic_rows("shipped", champion, 2))
        store.client.put_object(Bucket=store.bucket, Key=f"{settings.spool_prefix}gw-far/{int(time.time() * 1000):013d}"
                                                         f"-1-00000000.jsonl", Body=body)
        waited = wait_until(lambda: (age := _oldest_age_s(settings, workspace.state_dir / "probe")) > 0.5 and age)
        context = TaskContext(workspace, LocalOperations(daemon), DaemonMetrics())
        ingest(context)
        lag = context.metrics.registry.get_sample_value("shadowzoo_spool_lag_seconds")
        with daemon.database.reading() as db:
            stored = db.execute("SELECT count(*) FROM traffic WHERE request_id LIKE 'shipped-%'").fetchone()[0]
    assert not spool_dir(workspace.state_dir).exists() or not list(spool_dir(workspace.state_dir).glob("*.jsonl"))
    assert stored == 2
    assert lag >= waited


def test_the_daemons_next_runner_pass_takes_traffic_committed_late_with_lower_seqs(boards, lake_dir, tmp_path) -> None:
    workspace = load_workspace(lake_dir)
    with Registry.open(workspace) as daemon, Registry.open(workspace) as a, Registry.open(workspace) as b:
        champion = daemon.champion(SLOT).version_id
        context = TaskContext(workspace, LocalOperations(daemon), DaemonMetrics())
        previous, _ = context.runner_pass(None)  # where the previous pass began
        write_segment(tmp_path / "a", _traffic_rows("slow", champion, 2))
        write_segment(tmp_path / "b", _traffic_rows("quick", champion, 2))
        with pytest.MonkeyPatch.context() as patch:  # A draws its seqs first, B commits before A
            patch.setattr(shadow.ingest, "upsert", _Meanwhile(lambda: ingest_spool(b.database, tmp_path / "b")))
            ingest_spool(a.database, tmp_path / "a")
        _, after_seq = context.runner_pass(previous)
        asyncio.run(_pass(daemon, after_seq))
        with daemon.database.reading() as db:
            slow, quick = db.execute("SELECT min(seq) FILTER (request_id LIKE 'slow-%'), "
                                     "min(seq) FILTER (request_id LIKE 'quick-%') FROM traffic").fetchone()
            answered = dict(db.execute("SELECT split_part(request_id, '-', 1), count(DISTINCT request_id) "
                                       "FROM shadow_results WHERE request_id LIKE 'slow-%' OR request_id LIKE 'quick-%' "
                                       "GROUP BY 1").fetchall())
    assert slow < quick
    assert after_seq < slow, "the pass looks at every row committed since the previous one began"
    assert answered == {"slow": 2, "quick": 2}


def test_traffic_ingested_by_a_host_whose_clock_runs_ahead_is_shadowed_by_the_next_pass(
        boards, lake_dir, tmp_path) -> None:
    workspace = load_workspace(lake_dir)
    with Registry.open(workspace) as daemon, Registry.open(workspace) as ahead:
        champion = daemon.champion(SLOT).version_id
        context = TaskContext(workspace, LocalOperations(daemon), DaemonMetrics())
        previous, _ = context.runner_pass(None)
        write_segment(tmp_path / "ahead", _traffic_rows("ahead", champion, 2))
        with pytest.MonkeyPatch.context() as patch:  # the ingest host's clock is ten minutes ahead
            patch.setattr(shadow.ingest, "utcnow", lambda: utcnow() + timedelta(minutes=10))
            ingest_spool(ahead.database, tmp_path / "ahead")
        _, after_seq = context.runner_pass(previous)
        asyncio.run(_pass(daemon, after_seq))
        with daemon.database.reading() as db:
            answered = db.execute("SELECT count(DISTINCT request_id) FROM shadow_results "
                                  "WHERE request_id LIKE 'ahead-%'").fetchone()[0]
    assert answered == 2


async def _pass(registry: Registry, after_seq: int | None) -> None:
    """One pass of the daemon's shadow runner over the traffic after `after_seq`."""
    async with ShadowRunner(registry) as runner:
        await runner.run_once(RunFilters(after_seq=after_seq))


def _readings(registry: Registry, version: str, path: Path) -> dict[str, Any]:
    """What the readers of answers show for the slot's requests: a view board's numbers, the
    requests a browse page of `version` lists, the exported rows and the trace's answers of req-02."""
    view = Scorer(registry.workspace, registry).refresh(SLOT, since=datetime(2000, 1, 1))
    with registry.database.reading() as db:
        page = browse_requests(db, RequestFilter(slot=SLOT, version=version, limit=MAX_LIMIT))
    exported = export_answers(registry, ExportOptions(slot=SLOT, version=version), path)
    traced = trace_request(registry, "req-02")
    return {"view": evidence(view), "page": sorted(row.request_id for row in page.requests),
            "exported": exported.rows, "traced": sorted(answer.version_id for answer in traced.challengers)}


def test_a_result_two_runners_both_stored_is_read_once_by_views_pages_exports_and_traces(
        boards, lake_dir, tmp_path) -> None:
    workspace = load_workspace(lake_dir)
    with Registry.open(workspace) as registry, Registry.open(workspace) as late:
        champion = registry.champion(SLOT).version_id
        challenger = next(v.version_id for v in registry.variants(slot=SLOT, status="active")
                          if v.version_id != champion)
        before = _readings(registry, challenger, tmp_path / "before.jsonl")
        with registry.database.reading() as db:
            rows = db.sql(f"SELECT {', '.join(RESULT_SCHEMA)} FROM shadow_results WHERE request_id = 'req-02' "
                          "AND version_id = ?", params=[challenger]).pl()
        # the runner that lost its lease stores its answer too, after the one that took it over
        with late.database.transaction() as db, registered(db, "lost_batch", rows.to_arrow()):
            late.database.reserve("change_seq", rows.height)
            db.execute(f"INSERT INTO shadow_results ({', '.join(RESULT_SCHEMA)}, seq) "
                       f"SELECT *, nextval('change_seq') FROM lost_batch")
        after = _readings(registry, challenger, tmp_path / "after.jsonl")
        with registry.database.reading() as db:
            stored = db.execute("SELECT count(*) FROM shadow_results WHERE request_id = 'req-02' AND version_id = ?",
                                [challenger]).fetchone()[0]
    assert rows.height == 1 and stored == 2
    assert "req-02" in before["page"]
    assert after == before


def _challenger_row(board: Leaderboard, version: str) -> tuple[int, int]:
    """A challenger's (not-run calls, pairs) on the board."""
    row = next(row for row in board.rows if row.version_id == version)
    return row.not_run, row.comparison.pairs if row.comparison else 0


def test_a_pair_one_runner_answered_and_the_other_stored_as_not_run_is_scored_and_shown_answered_everywhere(
        boards, lake_dir, tmp_path) -> None:
    workspace = load_workspace(lake_dir)
    with Registry.open(workspace) as registry, Registry.open(workspace) as lost:
        champion = registry.champion(SLOT).version_id
        challenger = next(v.version_id for v in registry.variants(slot=SLOT, status="active") if v.version_id != champion)
        label = OutcomeRecord(request_key="both-0", value=TICKETS[0]["expected"], received_at=utcnow())
        write_segment(tmp_path, [*_traffic_rows("both", champion, 1), label.model_dump_json().encode()])
        ingest_spool(registry.database, tmp_path)
        scorer = Scorer(workspace, registry)
        before = _challenger_row(scorer.refresh(SLOT), challenger)
        with lost.database.transaction():  # the runner about to lose its lease drew its ids first
            lost.database.reserve("change_seq", 1)
        replay(registry)  # the runner that took the pair over answers it
        with registry.database.reading() as db:
            request_seq, answered = db.execute("SELECT request_seq, status FROM shadow_results "
                                               "WHERE request_id = 'both-0' AND version_id = ?", [challenger]).fetchone()
        not_run = {column: None for column in RESULT_SCHEMA} | {
            "request_id": "both-0", "request_seq": request_seq, "version_id": challenger, "role": "challenger",
            "status": "not_run", "error": "budget: the slot's daily shadow budget is spent", "attempts": 0,
            "finished_at": utcnow()}
        # then the lost lease's runner, finding the budget spent, stores its call as not run, with its lower seq
        with lost.database.transaction() as db, registered(
                db, "lost_batch", pl.DataFrame([not_run], schema=RESULT_SCHEMA).to_arrow()):
            db.execute(f"INSERT INTO shadow_results ({', '.join(RESULT_SCHEMA)}, seq) "
                       "SELECT *, nextval('change_seq') FROM lost_batch")
        with registry.database.reading() as db:
            stored = db.execute("SELECT status FROM shadow_results WHERE request_id = 'both-0' AND version_id = ? "
                                "ORDER BY seq", [challenger]).fetchall()
            page = browse_requests(db, RequestFilter(slot=SLOT, version=challenger, limit=MAX_LIMIT))
        after = _challenger_row(scorer.refresh(SLOT), challenger)
        traced = next(a for a in trace_request(registry, "both-0").challengers if a.version_id == challenger)
        exported = export_answers(registry, ExportOptions(slot=SLOT, version=challenger), tmp_path / "both.jsonl")
    assert answered == "ok" and stored == [("not_run",), ("ok",)], "the not-run row was written with the lower seq"
    assert after == (before[0], before[1] + 1), "scored as one pair, not counted as not run"
    assert (traced.status, traced.reason, traced.pair.entered) == ("ok", None, True)
    assert next(row.status for row in page.requests if row.request_id == "both-0") == "ok"
    answers = [json.loads(line) for line in (tmp_path / "both.jsonl").read_text().splitlines()]
    assert exported.rows == len(answers) and [a["status"] for a in answers if a["request_id"] == "both-0"] == ["ok"]


def _judged(config: dict) -> None:
    """Quality judged by the simulator's grader on every answer, the champion replayed on every request."""
    config["prices"]["sim-judge"] = {"input_cost_per_token": 1.0e-6, "output_cost_per_token": 4.0e-6}
    config["slots"][SLOT]["metrics"] = [{"type": "judge", "provider": "sim", "model": "sim-judge", "sample_rate": 1.0,
                                         "rubric": "The first line must be the ticket's category."}]
    config["slots"][SLOT]["shadow"]["champion_control_rate"] = 1.0


def test_a_result_two_runners_both_stored_is_graded_once_and_the_judges_spend_is_what_its_values_cost(
        simulator, postgres, object_store, lake_extensions, tmp_path) -> None:
    section = _own_lake(postgres, object_store, lake_extensions, "judged")
    directory = _champion_workspace(tmp_path / "judged", simulator.base_url,
                                    {"backend": "distributed", "distributed": section})
    edit_config(directory, _judged)
    workspace = load_workspace(directory)
    with Registry.open(workspace) as registry, Registry.open(workspace) as lost:
        champion = registry.champion(SLOT).version_id
        versions = {champion} | {v.version_id for v in registry.variants(slot=SLOT, status="active")}
        challenger = sorted(versions - {champion})[0]
        label = OutcomeRecord(request_key="graded-0", value=TICKETS[0]["expected"], received_at=utcnow())
        write_segment(tmp_path / "spool", [*_traffic_rows("graded", champion, 1), label.model_dump_json().encode()])
        ingest_spool(registry.database, tmp_path / "spool")
        replay(registry)
        with registry.database.reading() as db:
            rows = db.sql(f"SELECT {', '.join(RESULT_SCHEMA)} FROM shadow_results WHERE request_id = 'graded-0' "
                          "AND version_id = ?", params=[challenger]).pl()
            replayed = db.execute("SELECT count(*) FROM shadow_results WHERE status = 'ok'").fetchone()[0]
        with lost.database.transaction() as db, registered(db, "lost_batch", rows.to_arrow()):  # a lost lease's copy
            lost.database.reserve("change_seq", rows.height)
            db.execute(f"INSERT INTO shadow_results ({', '.join(RESULT_SCHEMA)}, seq) "
                       "SELECT *, nextval('change_seq') FROM lost_batch")
        [judge] = Scorer(workspace, registry).refresh(SLOT).judges
        with registry.database.reading() as db:
            values, stored_cost = db.execute("SELECT count(*), sum(cost_usd) FROM metric_values "
                                             "WHERE request_id = 'graded-0'").fetchone()
    with psycopg.connect(section["postgres_url"]) as control:
        spent = control.execute("SELECT spent_usd FROM budget_days WHERE scope = %s",
                                [f"judge/{judge.metric_key}"]).fetchone()[0]
    assert rows.height == 1 and rows["status"][0] == "ok" and replayed >= 3  # the challengers' and the control's
    assert values == len(versions)  # one per (request, version): the live answer's for the champion
    assert spent == pytest.approx(stored_cost) and judge.spent_today_usd == pytest.approx(stored_cost)
    assert judge.unjudged == 0
