"""Several writers on the lake at once (issue 16): ingest and runner workers on several hosts
append concurrently, their ids never collide, a result two runners both wrote (a lease lost
mid-flight) is read once, a worker killed mid-write loses nothing it committed, and the
scorer's incremental refresh after writers committed out of `seq` order equals a full rescore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import duckdb
import psycopg
import pytest

from registry import Registry, load_workspace, utcnow
from registry.db import registered
from registry.evidence import forget_scored_evidence
from registry.keyed import insert_absent
from scorer.leaderboard_model import Leaderboard
from scorer.service import Scorer
from shadow.ingest import ingest_spool, join_outcomes
from shadow.results import RESULT_SCHEMA
from shadow.spool import write_segment
from shadow.spool_records import OutcomeRecord, TrafficRecord
from tests.backends import evidence
from tests.servers import wait_until
from tests.test_distributed_storage import SLOT, TICKETS, _lake_workspace

pytestmark = pytest.mark.usefixtures("engine_credentials")  # the engines' and the simulator's keys, as an operator sets them

ROOT = Path(__file__).resolve().parent.parent
RESULT_KEY = ("request_id", "version_id")
WRITTEN = (*RESULT_SCHEMA, "seq")


@pytest.fixture(scope="module")
def workspace_dir(tmp_path_factory, simulator, postgres, object_store, lake_extensions) -> Path:
    """A distributed workspace on a lake of its own: the demo traffic ingested and replayed, not labelled yet."""
    return _lake_workspace(tmp_path_factory.mktemp("writers") / "ws", simulator, postgres, object_store,
                           lake_extensions, "writers")


@dataclass
class Scenario:
    stored_twice: int
    """Results the two runners of a lost lease both stored (rows beyond one per key)."""
    lost_lease_pairs: int
    """Pairs the scorer holds for the requests of those results."""
    incremental: Leaderboard
    full: Leaderboard
    labelled: int
    """Requests labelled, all of whose challenger answers pair."""


@pytest.fixture(scope="module")
def scenario(workspace_dir) -> Scenario:
    """Two runners write the same results (a lost lease); a label writer and a traffic writer
    commit out of `seq` order around a scorer refresh; the scorer refreshes incrementally, then
    rescores in full."""
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as scoring, Registry.open(workspace) as a, Registry.open(workspace) as b:
        scorer = Scorer(workspace, scoring)
        scorer.refresh(SLOT)
        stored_twice, lost = _lost_lease(scoring, a, b)
        labels = _labels()
        # worker A draws its ids first and commits last; B ingests new traffic meanwhile and a refresh runs
        with a.database.transaction() as late:
            a.database.reserve("change_seq", len(labels))
            late.execute(_insert_labels(labels))
            b_spool = workspace.state_dir / "b-spool"
            write_segment(b_spool, _new_traffic("late", 5))
            ingest_spool(b.database, b_spool)
            scorer.refresh(SLOT)
        incremental = scorer.refresh(SLOT)
        with scoring.database.reading() as db:
            lost_lease_pairs = db.execute("SELECT count(*) FROM paired WHERE request_seq IN (SELECT seq FROM traffic "
                                          "WHERE list_contains(?, request_id))", [lost]).fetchone()[0]
        with scoring.database.transaction() as db:
            forget_scored_evidence(db, [SLOT])
        full = scorer.refresh(SLOT)
    return Scenario(stored_twice, lost_lease_pairs, incremental, full, len(labels))


def _lost_lease(scoring: Registry, a: Registry, b: Registry) -> tuple[int, list[str]]:
    """Take the results of three requests back out, then have runners A and B both write them
    at once (each in a transaction open while the other writes): returns the rows stored beyond
    one per key, and the requests."""
    with scoring.database.reading() as db:
        lost = [row[0] for row in db.execute(
            "SELECT DISTINCT request_id FROM shadow_results WHERE request_id LIKE 'req-%' ORDER BY 1 LIMIT 3").fetchall()]
        rows = db.sql(f"SELECT {', '.join(RESULT_SCHEMA)} FROM shadow_results WHERE list_contains(?, request_id)",
                      params=[lost]).pl()
    with scoring.database.transaction() as db:
        db.execute("DELETE FROM shadow_results WHERE list_contains(?, request_id)", [lost])
    with a.database.transaction() as first, b.database.transaction() as second:
        for registry, connection in ((a, first), (b, second)):
            registry.database.reserve("change_seq", rows.height)
            with registered(connection, "lost_batch", rows.to_arrow()):
                insert_absent(connection, "shadow_results", RESULT_KEY, WRITTEN,
                              f"SELECT {', '.join(RESULT_SCHEMA)}, nextval('change_seq') FROM lost_batch")
    with scoring.database.reading() as db:
        stored, keys = db.execute("SELECT count(*), count(DISTINCT (request_id, version_id)) FROM shadow_results "
                                  "WHERE list_contains(?, request_id)", [lost]).fetchone()
    return stored - keys, lost


def _new_traffic(prefix: str, count: int) -> list[bytes]:
    """`count` answered requests of the slot, `<prefix>-<n>`, as a gateway host captures them."""
    now = utcnow()
    return [TrafficRecord(request_id=f"{prefix}-{index}", slot=SLOT, received_at=now + timedelta(milliseconds=index),
                          status=200, request={"messages": [{"role": "user", "content": f"hello {index}"}]},
                          output="x", latency_ms=10.0).model_dump_json().encode() for index in range(count)]


def _labels() -> list[OutcomeRecord]:
    now = utcnow()
    return [OutcomeRecord(request_key=f"req-{index:02d}", value=ticket["expected"], received_at=now)
            for index, ticket in enumerate(TICKETS)]


def _insert_labels(labels: list[OutcomeRecord]) -> str:
    """The labels as ingest writes outcomes whose request is known, each drawing its `seq`."""
    values = ", ".join(
        f"('{label.outcome_id}', '{label.request_key}', '{label.request_key}', 'label', "
        f"'{json.dumps(label.value)}', TIMESTAMP '{label.received_at.isoformat(sep=' ')}')" for label in labels)
    return ("INSERT INTO outcomes (outcome_id, request_key, request_id, kind, value_json, received_at, seq, request_seq) "
            f"SELECT o.*, nextval('change_seq'), t.seq FROM (VALUES {values}) o JOIN traffic t ON t.request_id = o.col2")


def test_a_result_two_runners_both_wrote_after_a_lost_lease_pairs_once(scenario) -> None:
    assert scenario.stored_twice > 0, "the lake has no keys: both runners' MERGEs insert the result"
    challengers = sum(1 for row in scenario.full.rows if row.comparison is not None)
    assert challengers > 0 and scenario.lost_lease_pairs == 3 * challengers


def test_an_incremental_refresh_after_writers_committed_out_of_seq_order_equals_a_full_rescore(scenario) -> None:
    pairs = {row.label: row.comparison.pairs for row in scenario.incremental.rows if row.comparison}
    assert pairs and all(count == scenario.labelled for count in pairs.values()), pairs
    assert evidence(scenario.incremental) == evidence(scenario.full)


def _writer_process(workspace_dir: Path, script: str, *args: str, stdout: Path) -> subprocess.Popen:
    """A separate Python process opening the workspace's registry and running `script` (with `registry` and `args`)."""
    code = ("import sys\nfrom pathlib import Path\nfrom registry import Registry, load_workspace\n"
            f"with Registry.open(load_workspace(Path({str(workspace_dir)!r}))) as registry:\n    args = sys.argv[1:]\n"
            + "".join(f"    {line}\n" for line in script.strip().splitlines()))
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=os.environ.copy(),
                            stdout=stdout.open("w"), stderr=subprocess.STDOUT)


INGEST = """
import logging
import time
from pathlib import Path
from shadow.ingest import ingest_spool
refused = []  # the commits the lake refused for a conflict (`Database.committed` logs each, then does it again)
logging.getLogger("shadowzoo.db").addHandler(logging.Handler())
logging.getLogger("shadowzoo.db").handlers[-1].emit = lambda record: refused.append(record.getMessage())
logging.getLogger("shadowzoo.db").setLevel(logging.INFO)
print("ready", flush=True)
for _ in range(600):  # both workers start together: they wait for the go file (at most a minute)
    if Path(args[1]).exists():
        break
    time.sleep(0.1)
report = ingest_spool(registry.database, Path(args[0]), batch_bytes=1)  # a commit per segment
print(report.traffic_rows, report.outcome_rows, report.joined_outcomes, flush=True)
print("refused:", [message for message in refused if "refused a commit" in message], flush=True)
"""


def test_two_ingest_processes_append_to_the_lake_at_once_and_both_commit_first_time(tmp_path, workspace_dir) -> None:
    spools, go = {}, tmp_path / "go"
    for host in ("a", "b"):
        records = _new_traffic(host, 40)
        spools[host] = tmp_path / host
        for start in range(0, 40, 5):  # several segments: several commits each, each with labels of its requests
            write_segment(spools[host], records[start:start + 5] + _labels_of(host, range(start, start + 5, 2)))
    workers = {host: _writer_process(workspace_dir, INGEST, str(spool), str(go), stdout=tmp_path / f"{host}.out")
               for host, spool in spools.items()}
    wait_until(lambda: all("ready" in (tmp_path / f"{host}.out").read_text() or worker.poll() is not None
                           for host, worker in workers.items()), timeout_s=120)
    go.touch()
    for host, worker in workers.items():
        assert worker.wait(timeout=120) == 0, (tmp_path / f"{host}.out").read_text()
    outputs = {host: (tmp_path / f"{host}.out").read_text().splitlines() for host in workers}
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        rows, keys, seqs = db.execute("SELECT count(*), count(DISTINCT request_id), count(DISTINCT seq) FROM traffic "
                                      "WHERE request_id LIKE 'a-%' OR request_id LIKE 'b-%'").fetchone()
        all_rows, all_seqs = db.execute("SELECT count(*), count(DISTINCT seq) FROM traffic").fetchone()
        labels, joined = db.execute("SELECT count(*), count(request_id) FROM outcomes WHERE request_key LIKE 'a-%' "
                                    "OR request_key LIKE 'b-%'").fetchone()
    assert rows == keys == seqs == 80
    assert all_rows == all_seqs, "every traffic row has its own seq across the writers"
    assert labels == joined == 48
    assert all(lines[-2:] == ["40 24 24", "refused: []"] for lines in outputs.values()), outputs


def _labels_of(prefix: str, indexes: range) -> list[bytes]:
    """Labels of the requests `<prefix>-<n>`, as the application sends them once it knows."""
    now = utcnow()
    return [OutcomeRecord(request_key=f"{prefix}-{index}", value="billing", received_at=now).model_dump_json().encode()
            for index in indexes]


def test_an_ingest_worker_storing_requests_with_their_labels_refuses_no_other_writers_commit(
    tmp_path, workspace_dir
) -> None:
    """Worker B ingests segments of requests and their labels while worker A's append to `outcomes`
    is open: A's commit goes through first time (B wrote only appends: nothing of the lake to
    conflict with)."""
    spool = tmp_path / "b"
    records = _new_traffic("along", 4)
    write_segment(spool, records[:2] + _labels_of("along", range(2)))  # labels in their requests' segment
    write_segment(spool, records[2:])
    write_segment(spool, _labels_of("along", range(2, 4)))  # labels of requests stored by the batch before
    attempts, reports = [], []
    with Registry.open(load_workspace(workspace_dir)) as a, Registry.open(load_workspace(workspace_dir)) as b:
        def append(db) -> None:
            attempts.append(len(attempts) + 1)
            a.database.reserve("change_seq", 1)
            _note(db, "appended-alongside")
            if len(attempts) == 1:
                reports.append(ingest_spool(b.database, spool, batch_bytes=1))

        a.database.committed(append)
    assert attempts == [1]
    assert (reports[0].segments, reports[0].outcome_rows, reports[0].joined_outcomes) == (3, 4, 4)


def test_a_label_committed_while_another_worker_stores_its_request_is_joined_by_the_last_to_commit(
    tmp_path, workspace_dir
) -> None:
    """Worker A stores a label unjoined (its request not committed yet) while worker B ingests the
    request; B's join, done before A committed, cannot see the label: A's, after its batch
    (as `ingest_from` does), joins it."""
    spool = tmp_path / "b"
    write_segment(spool, _new_traffic("crossed", 1))
    label = OutcomeRecord(request_key="crossed-0", value="billing", received_at=utcnow())
    reports = []
    with Registry.open(load_workspace(workspace_dir)) as a, Registry.open(load_workspace(workspace_dir)) as b:
        def append(db) -> None:
            a.database.reserve("change_seq", 1)
            db.execute("INSERT INTO outcomes (outcome_id, request_key, request_id, kind, value_json, received_at, seq) "
                       "VALUES (?, ?, NULL, 'label', '\"billing\"', ?, nextval('change_seq'))",
                       [label.outcome_id, label.request_key, label.received_at])
            reports.append(ingest_spool(b.database, spool))

        a.database.committed(append)
        joined = join_outcomes(a.database)
        with a.database.reading() as db:
            stored = db.execute("SELECT o.request_id, o.request_seq = t.seq FROM outcomes o JOIN traffic t "
                                "ON t.request_id = 'crossed-0' WHERE o.outcome_id = ?", [label.outcome_id]).fetchall()
    assert (reports[0].traffic_rows, reports[0].joined_outcomes, joined) == (1, 0, 1)
    assert stored == [("crossed-0", True)]


RESULTS = """
import asyncio
from registry import utcnow
from shadow.results import RESULT_SCHEMA, ResultWriter
async def write() -> None:
    # batches of 10 results of a variant the scorer does not know; each batch is reported once written
    writer = ResultWriter(registry.database, lambda rows: print(rows[0]["request_id"].split("-")[1], flush=True),
                          batch_rows=10, interval_s=60)
    for batch in range(1000):
        for i in range(10):
            await writer.add(dict.fromkeys(RESULT_SCHEMA) | {
                "request_id": f"kill-{batch}-{i}", "request_seq": -1, "version_id": "ghost", "role": "challenger",
                "status": "ok", "output": "x", "attempts": 1, "finished_at": utcnow(), "replaces": None})
asyncio.run(write())
"""


def test_a_runner_killed_mid_write_loses_no_committed_result_and_duplicates_none(tmp_path, workspace_dir) -> None:
    out = tmp_path / "runner.out"
    worker = _writer_process(workspace_dir, RESULTS, stdout=out)
    try:
        wait_until(lambda: len(out.read_text().split()) >= 3 or worker.poll() is not None, timeout_s=120)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    committed = [int(line) for line in out.read_text().split() if line.isdigit()]
    assert len(committed) >= 3, out.read_text()
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        batches = dict(db.execute("SELECT split_part(request_id, '-', 2)::INT, count(*) FROM shadow_results "
                                  "WHERE version_id = 'ghost' GROUP BY 1").fetchall())
        rows, keys, seqs = db.execute("SELECT count(*), count(DISTINCT request_id), count(DISTINCT seq) "
                                      "FROM shadow_results WHERE version_id = 'ghost'").fetchone()
    assert all(batches.get(batch) == 10 for batch in committed), "every batch reported committed is stored whole"
    assert set(batches.values()) == {10}, "a batch cut by the kill is stored whole or not at all"
    assert rows == keys == seqs


def _note(db, outcome_id: str) -> None:
    """An outcome for no known request (a reaction), drawing its `seq`."""
    db.execute("INSERT INTO outcomes (outcome_id, request_key, request_id, kind, value_json, received_at, seq) "
               "SELECT ?, 'nobody', NULL, 'reaction', '1', now()::TIMESTAMP, nextval('change_seq')", [outcome_id])


def test_a_commit_the_lake_refuses_for_a_conflict_with_another_writer_is_done_again(workspace_dir) -> None:
    workspace = load_workspace(workspace_dir)
    attempts = []
    with Registry.open(workspace) as a, Registry.open(workspace) as b:
        b.database.committed(lambda db: (b.database.reserve("change_seq", 1), _note(db, "conflict-base")))

        def write(db) -> None:
            attempts.append(len(attempts) + 1)
            a.database.reserve("change_seq", 1)
            _note(db, "conflict-retried")
            if len(attempts) == 1:  # meanwhile B rewrites an outcome: DuckLake refuses A's insert into the table
                with b.database.transaction() as other:
                    other.execute("UPDATE outcomes SET value_json = '2' WHERE outcome_id = 'conflict-base'")

        a.database.committed(write)
        with a.database.reading() as db:
            stored = db.execute("SELECT count(*) FROM outcomes WHERE outcome_id = 'conflict-retried'").fetchone()[0]
    assert attempts == [1, 2] and stored == 1


SCORE = """
from scorer.service import Scorer
print("ready", flush=True)
Scorer(registry.workspace, registry).refresh(args[0])
print("scored", flush=True)
"""


def test_two_scorer_candidates_refreshing_one_slot_at_once_pair_each_request_once(tmp_path, workspace_dir,
                                                                                 scenario) -> None:
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        with registry.database.transaction() as db:
            forget_scored_evidence(db, [SLOT])  # both find the labelled period (`scenario`) to score from the start
        candidates = [_writer_process(workspace_dir, SCORE, SLOT, stdout=tmp_path / f"{n}.out") for n in range(2)]
        for n, candidate in enumerate(candidates):
            assert candidate.wait(timeout=180) == 0, (tmp_path / f"{n}.out").read_text()
        with registry.database.reading() as db:
            rows, keys = db.execute("SELECT count(*), count(DISTINCT (period_id, request_seq, version_id)) FROM paired "
                                    "WHERE period_id = (SELECT max(period_id) FROM evaluation_periods)").fetchone()
            moments = dict(db.execute("SELECT version_id, n FROM pair_moments WHERE measure = 'net' AND period_id = "
                                      "(SELECT max(period_id) FROM evaluation_periods)").fetchall())
            paired = dict(db.execute("SELECT version_id, count(*) FROM paired WHERE period_id = "
                                     "(SELECT max(period_id) FROM evaluation_periods) GROUP BY 1").fetchall())
    assert rows == keys > 0
    assert moments == paired


_LOSE_CONNECTION_ONCE = """
CREATE SEQUENCE catalog_reads;
CREATE TABLE connection_loss (at_read bigint);
CREATE FUNCTION lose_connection_once() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF nextval('catalog_reads') = (SELECT at_read FROM connection_loss) THEN
        PERFORM pg_terminate_backend(pg_backend_pid());
    END IF;
    RETURN true;
END $$;
ALTER TABLE ducklake_data_file RENAME TO ducklake_data_file_stored;
CREATE VIEW ducklake_data_file AS SELECT * FROM ducklake_data_file_stored WHERE lose_connection_once();
"""
_KEEP_CONNECTION = """
DROP VIEW ducklake_data_file;
ALTER TABLE ducklake_data_file_stored RENAME TO ducklake_data_file;
DROP FUNCTION lose_connection_once; DROP TABLE connection_loss; DROP SEQUENCE catalog_reads;
"""


def test_a_segment_whose_write_loses_its_postgresql_connection_is_stored_by_the_next_ingest_not_quarantined(
    tmp_path, workspace_dir
) -> None:
    """PostgreSQL drops the connection DuckLake reads its catalog on (a restart, a failover), at each
    of an ingest's first catalog reads in turn: the run may fail, the segment is never quarantined,
    and the next run stores it."""
    workspace = load_workspace(workspace_dir)
    with psycopg.connect(workspace.config.distributed.postgres_url, autocommit=True) as control:
        control.execute(_LOSE_CONNECTION_ONCE)
        try:
            with Registry.open(workspace) as registry:
                for read in range(1, 7):
                    spool = tmp_path / f"lost-at-{read}"
                    write_segment(spool, _new_traffic(f"lost-at-{read}", 3))
                    control.execute("DELETE FROM connection_loss; SELECT setval('catalog_reads', 1, false)")
                    control.execute("INSERT INTO connection_loss VALUES (%s)", [read])
                    try:
                        ingest_spool(registry.database, spool)
                    except duckdb.Error:
                        pass  # the run failed: its segment waits
                    assert control.execute("SELECT last_value >= %s FROM catalog_reads", [read]).fetchone()[0]
                    control.execute("DELETE FROM connection_loss")
                    ingest_spool(registry.database, spool)
                    with registry.database.reading() as db:
                        stored = db.execute("SELECT count(*) FROM traffic WHERE request_id LIKE ?",
                                            [f"lost-at-{read}-%"]).fetchone()[0]
                    assert (stored, list(spool.rglob("*.jsonl"))) == (3, []), read  # none waits, none quarantined
        finally:
            control.execute(_KEEP_CONNECTION)
