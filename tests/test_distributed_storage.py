"""The distributed backend's storage (issue 16): the same ingest, runner, scorer and CLI on
DuckLake (data) and PostgreSQL (control), giving the leaderboard the embedded backend gives
on the same traffic, and duplicating nothing when work is done again."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import openai
import psycopg
import pytest

from registry import Registry, load_workspace, utcnow
from registry.db import Database
from registry.keyed import insert_absent, upsert
from registry.migrations import MIGRATIONS
from registry.planes import CONTROL_TABLES, LAKE_TABLES, split_migration
from registry.workspace_config import DistributedConfig
from scorer.leaderboard_model import Leaderboard
from scorer.service import Scorer
from shadow.ingest import IngestReport, ingest_spool
from shadow.spool import spool_dir, write_segment
from shadow.spool_records import OutcomeRecord, TrafficRecord
from shadow.toolcalls import ToolCall
from tests.backends import evidence, replay
from tests.clirun import run_in_process
from tests.engines import distributed_section
from tests.servers import Served, champion_workspace, edit_config, wait_until

pytestmark = pytest.mark.usefixtures("engine_credentials")  # the engines' and the simulator's keys, as an operator sets them

SLOT = "support-triage"
TICKETS = [json.loads(line) for line in
           (Path(__file__).resolve().parent.parent / "examples" / "demo" / "tickets.jsonl").read_text().splitlines()][:18]
TOOLS = [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}]
# each table of the lake with the key it has in a DuckDB file
LAKE_KEYS = {"traffic": "request_id", "outcomes": "outcome_id", "shadow_results": "request_id, version_id",
             "metric_values": "request_id, version_id, metric_key, label_key", "spool_segments": "segment",
             "paired": "period_id, request_seq, version_id", "pair_moments": "period_id, version_id, measure",
             "answer_stats": "period_id, version_id, source, latency_bucket", "scoring_watermarks": "slot"}


@dataclass
class Run:
    """What one backend made of the traffic."""

    workspace_dir: Path
    board: Leaderboard
    board_again: Leaderboard
    same_segment: IngestReport
    same_records: IngestReport
    same_labels: IngestReport
    key_counts: dict[str, tuple[int, int]]
    """Per lake table: (rows, distinct keys)."""
    traffic_in: str
    """The database holding `traffic`: `lake` on the distributed backend."""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, simulator, postgres, object_store, lake_extensions) -> dict[str, Run]:
    """The same traffic through a workspace of each backend."""
    root = tmp_path_factory.mktemp("storage")
    distributed = {"backend": "distributed", "distributed": distributed_section(postgres, object_store, lake_extensions)}
    return {backend: _run(champion_workspace(root / backend, simulator.base_url, settings=settings))
            for backend, settings in (("embedded", {}), ("distributed", distributed))}


def _own_lake(postgres, object_store, lake_extensions, name: str, blank: bool = False) -> dict:
    """A `distributed:` section with a database and a lake prefix of its own on the module's servers (the
    database named after the module's too: the servers are shared by the modules a pytest worker runs).
    The lake is migrated and empty, or with `blank` not made yet (the first open makes it)."""
    database, prefix = f"{postgres.name}_{name}", f"{name}/"
    if blank:
        own = postgres.server.create_database(database)
    else:
        own = postgres.server.create_lake_database(database, f"s3://{object_store.bucket}/{prefix}", lake_extensions)
    section = distributed_section(postgres, object_store, lake_extensions)
    return section | {"postgres_url": own.url, "lake_prefix": prefix}


def _lake_workspace(directory: Path, simulator, postgres, object_store, lake_extensions, name: str,
                    labelled: bool = False) -> Path:
    """The demo workspace (`min_samples` 10) on a lake of its own named `name`: the demo traffic
    ingested (with its labels when `labelled`) and replayed, not scored yet."""
    section = _own_lake(postgres, object_store, lake_extensions, name)
    workspace_dir = champion_workspace(directory, simulator.base_url,
                                       settings={"backend": "distributed", "distributed": section})
    edit_config(workspace_dir, lambda config: config["slots"][SLOT]["scoring"].update(min_samples=10))
    workspace = load_workspace(workspace_dir)
    spool = spool_dir(workspace.state_dir)
    with Registry.open(workspace) as registry:
        write_segment(spool, _traffic(registry.champion(SLOT).version_id))
        if labelled:
            write_segment(spool, _labels())
        ingest_spool(registry.database, spool)
        replay(registry)
    return workspace_dir


def _run(workspace_dir: Path) -> Run:
    """Traffic (gateway answers, an observed exchange, a tool-call answer) ingested, then the same
    segment and the same records again; replayed and scored; the labels, late, twice; scored again.
    Latency costs nothing: each backend's replay measures latencies of its own, which a loaded
    machine may push past the SLO."""
    edit_config(workspace_dir, lambda config: config["slots"][SLOT]["scoring"].update(min_samples=10,
                                                                                        latency_cost_per_s=0))
    workspace = load_workspace(workspace_dir)
    spool = spool_dir(workspace.state_dir)
    with Registry.open(workspace) as registry:
        traffic = _traffic(registry.champion(SLOT).version_id)
        segment = write_segment(spool, traffic)
        kept = segment.read_bytes()
        ingest_spool(registry.database, spool)
        segment.write_bytes(kept)  # a crash after the commit, before the segment was deleted
        same_segment = ingest_spool(registry.database, spool)
        write_segment(spool, traffic)  # the same records in another segment
        same_records = ingest_spool(registry.database, spool)
        replay(registry)
        scorer = Scorer(workspace, registry)
        scorer.refresh(SLOT)
        for _ in range(2):  # the labels come late, and twice
            write_segment(spool, _labels())
            same_labels = ingest_spool(registry.database, spool)
        replay(registry)
        board = scorer.refresh(SLOT)
        board_again = scorer.refresh(SLOT)
        with registry.database.reading() as db:
            key_counts = {table: db.execute(f"SELECT count(*), count(DISTINCT ({key})) FROM {table}").fetchone()
                          for table, key in LAKE_KEYS.items()}
            traffic_in = db.execute("SELECT database_name FROM duckdb_tables() WHERE table_name = 'traffic'").fetchone()[0]
    return Run(workspace_dir, board, board_again, same_segment, same_records, same_labels, key_counts, traffic_in)


def _traffic(champion: str) -> list[bytes]:
    now = utcnow()
    records = [TrafficRecord(
        request_id=f"req-{index:02d}", client_request_id=f"app-{index:02d}", slot=SLOT,
        received_at=now + timedelta(milliseconds=index), champion_version=champion, status=200,
        request={"messages": [{"role": "user", "content": ticket["input"]}]},
        output=ticket["expected"] if index % 3 else "other", usage={"prompt_tokens": 40 + index, "completion_tokens": 2},
        latency_ms=300.0 + index) for index, ticket in enumerate(TICKETS)]
    records.append(TrafficRecord(  # an exchange the application reported itself: the champion's then
        request_id="observed", slot=SLOT, received_at=now + timedelta(seconds=1), source="capture", status=200,
        request={"messages": [{"role": "user", "content": TICKETS[0]["input"]}]}, output=TICKETS[0]["expected"],
        usage={"prompt_tokens": 40, "completion_tokens": 2}, latency_ms=250.0))
    records.append(TrafficRecord(  # an answer that only calls a tool
        request_id="tool-call", slot=SLOT, received_at=now + timedelta(seconds=2), champion_version=champion,
        status=200, request={"tools": TOOLS, "messages": [{"role": "user", "content": TICKETS[1]["input"]}]},
        tool_calls=[ToolCall(name="refund", arguments={"order": "A1"})],
        usage={"prompt_tokens": 50, "completion_tokens": 8}, latency_ms=400.0))
    return [record.model_dump_json().encode() for record in records]


def _labels() -> list[bytes]:
    """Labels for every request: half by shadowzoo's request id, half by the client's own."""
    keys = [(f"req-{i:02d}" if i % 2 else f"app-{i:02d}", ticket["expected"]) for i, ticket in enumerate(TICKETS)]
    keys += [("observed", TICKETS[0]["expected"]), ("tool-call", TICKETS[1]["expected"])]
    return [OutcomeRecord(request_key=key, value=value, received_at=utcnow()).model_dump_json().encode()
            for key, value in keys]


def test_the_leaderboard_on_the_lake_equals_the_embedded_ones_on_the_same_traffic(runs) -> None:
    assert not load_workspace(runs["distributed"].workspace_dir).db_path.exists(), "no DuckDB file on distributed"
    embedded, distributed = evidence(runs["embedded"].board), evidence(runs["distributed"].board)
    assert distributed == embedded
    pairs = {label: row["comparison"]["pairs"] for label, row in distributed.items() if row["comparison"]}
    assert pairs and all(count == len(TICKETS) + 2 for count in pairs.values()), pairs
    # past min_samples: each challenger's interval is tested (20 pairs of the demo are too few to decide)
    assert {row["status_detail"] for row in distributed.values() if row["comparison"]} == {"collecting (inconclusive)"}


def test_ingesting_and_replaying_again_duplicates_nothing_on_the_lake(runs) -> None:
    assert runs["distributed"].traffic_in == "lake"
    for backend, run in runs.items():
        assert (run.same_segment.already_ingested, run.same_segment.traffic_rows) == (1, 0), backend
        assert (run.same_records.traffic_rows, run.same_records.duplicates) == (0, len(TICKETS) + 2), backend
        assert (run.same_labels.outcome_rows, run.same_labels.duplicates) == (0, len(TICKETS) + 2), backend
        assert all(rows == keys for rows, keys in run.key_counts.values()), (backend, run.key_counts)
        assert evidence(run.board_again) == evidence(run.board), backend
    latency_free = set(LAKE_KEYS) - {"answer_stats"}  # its rows are per latency bucket, which varies by run
    assert ({table: runs["distributed"].key_counts[table] for table in latency_free}
            == {table: runs["embedded"].key_counts[table] for table in latency_free})


def test_each_table_sits_on_its_plane_and_the_control_plane_keeps_its_keys(runs, postgres) -> None:
    with Registry.open(load_workspace(runs["distributed"].workspace_dir)) as registry, registry.database.reading() as db:
        catalogs = dict(db.execute("SELECT table_name, database_name FROM duckdb_tables() "
                                   "WHERE database_name IN ('lake', 'control')").fetchall())
    assert {table: catalogs.get(table) for table in CONTROL_TABLES} == dict.fromkeys(CONTROL_TABLES, "control")
    placed = LAKE_TABLES - {"scores", "metric_values_keyed"}  # dropped or renamed by later migrations
    assert {table: catalogs.get(table) for table in placed} == dict.fromkeys(placed, "lake")
    with psycopg.connect(postgres.url) as control:
        keyed = {row[0] for row in control.execute(
            "SELECT table_name FROM information_schema.table_constraints WHERE constraint_type = 'PRIMARY KEY'")}
    assert CONTROL_TABLES <= keyed


def test_duckdb_spills_into_the_workspace_s_state_dir_on_either_backend(runs) -> None:
    """What exceeds the daemon's memory limit (a first refresh over a long history) goes to disk in
    the state dir, not in whatever directory the process was started from."""
    for run in runs.values():
        workspace = load_workspace(run.workspace_dir)
        with Registry.open(workspace) as registry, registry.database.reading() as db:
            assert db.execute("SELECT current_setting('temp_directory')").fetchone()[0] == str(workspace.spill_dir)


def test_every_table_of_the_migrations_has_a_plane() -> None:
    for migration in MIGRATIONS:
        parts = split_migration(migration.sql)  # raises on a table placed nowhere
        assert not any("PRIMARY KEY" in statement.upper() or "INDEX" in statement.upper()
                       for statement in parts["lake"]), migration.name


def _keyed_writes(database: Database) -> list[tuple]:
    """Each kind of keyed write, on a keyed table of the scorer's."""
    columns = ("slot", "period_id", "seq")
    with database.transaction() as db:
        inserted = [insert_absent(db, "scoring_watermarks", ("slot",), columns, rows) for rows in (
            "VALUES ('a', 1, 1), ('a', 1, 1), ('b', 1, 3)",  # a record twice in one batch
            "VALUES ('a', 9, 9), ('c', 1, 4)")]  # a stored key is kept
        upsert(db, "scoring_watermarks", ("slot",), columns, "VALUES ('b', 2, 5), ('c', 2, 6), ('d', 2, 7)",
               when="excluded.seq > 5")  # b stays, c is replaced, d is new
        upsert(db, "scoring_watermarks", ("slot",), columns, "VALUES ('a', 1, 7)",
               update="seq = scoring_watermarks.seq + excluded.seq")
        return [tuple(inserted), *db.execute("SELECT * FROM scoring_watermarks ORDER BY slot").fetchall()]


def test_keyed_writes_mean_the_same_in_a_duckdb_file_and_on_the_lake(tmp_path, postgres, object_store,
                                                                    lake_extensions) -> None:
    lake = DistributedConfig.model_validate(_own_lake(postgres, object_store, lake_extensions, "keyed"))
    for database in (Database.open(tmp_path / "keyed.duckdb"), Database.open_distributed(lake, tmp_path / "spill")):
        try:
            assert _keyed_writes(database) == [(2, 1), ("a", 1, 8), ("b", 1, 3), ("c", 2, 6), ("d", 2, 7)]
        finally:
            database.close()


def test_a_migration_cut_between_its_lake_and_control_commits_is_finished_on_the_next_open(
        tmp_path, postgres, object_store, lake_extensions) -> None:
    lake = DistributedConfig.model_validate(_own_lake(postgres, object_store, lake_extensions, "migrated"))
    Database.open_distributed(lake, tmp_path).close()
    with psycopg.connect(lake.postgres_url, autocommit=True) as control:  # as if the control commit never came
        control.execute("DELETE FROM schema_migrations WHERE version = %s", [MIGRATIONS[-1].version])
    database = Database.open_distributed(lake, tmp_path)
    database.close()
    with psycopg.connect(lake.postgres_url) as control:
        versions = [row[0] for row in control.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [migration.version for migration in MIGRATIONS]


def test_the_cli_lists_variants_shows_the_board_and_promotes_on_a_distributed_workspace(runs) -> None:
    run = runs["distributed"]
    listed = run_in_process(("variants", "list", "--slot", SLOT), run.workspace_dir)
    assert listed.code == 0, listed.err
    assert all(row.label in listed.out for row in run.board.rows)
    shown = run_in_process(("leaderboard", "--slot", SLOT, "--format", "json"), run.workspace_dir)
    assert shown.code == 0, shown.err
    assert evidence(Leaderboard.model_validate(shown.json())) == evidence(run.board)
    status = run_in_process(("status", "--json"), run.workspace_dir)
    assert status.code == 0, status.err
    assert status.json()["database"].startswith("postgresql://")
    promoted = run_in_process(("promote", SLOT, "careful-mini", "--force", "--reason", "try it"), run.workspace_dir)
    assert promoted.code == 0, promoted.err
    after = Leaderboard.model_validate(
        run_in_process(("leaderboard", "--slot", SLOT, "--format", "json"), run.workspace_dir).json())
    assert after.champion.startswith("careful-mini") and after.period_id == run.board.period_id + 1
    assert not load_workspace(run.workspace_dir).db_path.exists()



@pytest.mark.slow
def test_serve_takes_a_distributed_workspace_from_gateway_traffic_to_a_scored_board(
        tmp_path, simulator, postgres, object_store, lake_extensions) -> None:
    section = _own_lake(postgres, object_store, lake_extensions, "served")
    workspace_dir = champion_workspace(tmp_path / "served", simulator.base_url, daemon={"score_interval_s": 1},
                                       settings={"backend": "distributed", "distributed": section})
    served = Served(workspace_dir)
    try:
        client = openai.OpenAI(base_url=f"{served.gateway}/v1", api_key="x", max_retries=0, timeout=30)
        for index, ticket in enumerate(TICKETS[:12]):
            client.chat.completions.create(model=SLOT, messages=[{"role": "user", "content": ticket["input"]}],
                                           extra_headers={"x-shadowzoo-request-id": f"c{index}"})
            body = json.dumps({"request_id": f"c{index}", "label": ticket["expected"]}).encode()
            urllib.request.urlopen(urllib.request.Request(f"{served.gateway}/v1/feedback", data=body)).read()

        def paired() -> bool:
            status, board = served.call(f"/admin/leaderboard?slot={SLOT}")
            return status == 200 and all(row["comparison"]["pairs"] == 12 for row in board["rows"] if row["comparison"])

        wait_until(paired, timeout_s=90, interval_s=0.5)
        status, answer = served.call("/admin/status")
        assert status == 200 and {"ingest", "score", "retention"} <= set(answer["last_runs"]), answer
    finally:
        log = served.stop()
    assert '"outcome": "error"' not in log, log
    assert not load_workspace(workspace_dir).db_path.exists()
