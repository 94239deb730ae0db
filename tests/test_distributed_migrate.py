"""`shadowzoo migrate --to distributed` (issue 16): an embedded workspace's history copied into
PostgreSQL and DuckLake, giving the same answers there, resumable after a crash without a
duplicate, refusing what would lose or mix history."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from registry import Registry, load_workspace, utcnow
from registry.history_copy import RESCORED, copy_history
from registry.planes import CONTROL_TABLES, LAKE_TABLES
from scorer.leaderboard_model import Leaderboard
from shadow.ingest import ingest_spool
from shadow.spool import spool_dir, write_segment
from shadow.spool_records import TrafficRecord
from tests.backends import evidence, replay
from tests.clirun import SHADOWZOO, call_environment, run_in_process
from tests.servers import champion_workspace, edit_config
# the simulator, and the object store's and simulator's keys in the environment: that module's fixtures
from tests.test_distributed_storage import SLOT, _own_lake, _run

pytestmark = pytest.mark.usefixtures("engine_credentials")  # the engines' and the simulator's keys, as an operator sets them


@dataclass
class Answers:
    """What the CLI says about a workspace's history."""

    board: Leaderboard
    history: list
    variants: list
    trace: dict


def answers(workspace_dir: Path) -> Answers:
    def shown(*args: str):
        result = run_in_process(args, workspace_dir)
        assert result.code == 0, result.err
        return result.json()

    return Answers(Leaderboard.model_validate(shown("leaderboard", "--slot", SLOT, "--format", "json")),
                   shown("history", SLOT, "--json"), shown("variants", "list", "--json"),
                   shown("trace", "req-04", "--json"))


@pytest.fixture(scope="module")
def source(tmp_path_factory, simulator) -> Path:
    """An embedded workspace with history: variants, traffic with late labels, results, scored
    pairs, a promotion and a board of the new period."""
    workspace_dir = champion_workspace(tmp_path_factory.mktemp("migrate") / "source", simulator.base_url)
    _run(workspace_dir)
    promoted = run_in_process(("promote", SLOT, "careful-mini", "--force", "--reason", "try it"), workspace_dir)
    assert promoted.code == 0, promoted.err
    with Registry.open(load_workspace(workspace_dir)) as registry:
        replay(registry)
    return workspace_dir


def copy_of(source: Path, target: Path, section: dict) -> Path:
    """The source workspace (its DuckDB file too) at `target`, naming `section` as its distributed backend,
    the backend still embedded."""
    shutil.copytree(source, target)
    edit_config(target, lambda config: config.update(distributed=section))
    return target


@pytest.fixture(scope="module")
def migrated(source, tmp_path_factory, postgres, object_store, lake_extensions) -> dict:
    """The source's answers, its migration's output, a re-run's, then the answers on the distributed backend."""
    section = _own_lake(postgres, object_store, lake_extensions, "migrated", blank=True)
    workspace_dir = copy_of(source, tmp_path_factory.mktemp("migrated") / "ws", section)
    before = answers(workspace_dir)
    counts = row_counts(workspace_dir)
    pairs = row_counts(workspace_dir, RESCORED)
    first = run_in_process(("migrate", "--to", "distributed"), workspace_dir)
    again = run_in_process(("migrate", "--to", "distributed", "--switch"), workspace_dir)
    assert load_workspace(workspace_dir).config.backend == "distributed"
    copied = row_counts(workspace_dir)  # before the answers below write their snapshots
    return {"dir": workspace_dir, "section": section, "before": before, "counts": counts, "first": first, "again": again, "copied": copied,
            "after": answers(workspace_dir), "pairs": pairs}


COPIED_WHOLE = (CONTROL_TABLES | LAKE_TABLES) - RESCORED - {"scoring_watermarks"}
"""The tables a migration copies whole (the scorer's pairs and sums it copies for past periods only)."""


def row_counts(workspace_dir: Path, tables: frozenset[str] = (CONTROL_TABLES | LAKE_TABLES) - {"scoring_watermarks"}
               ) -> dict[str, int]:
    """Rows per table of `tables` (by default every table a migration copies, its watermarks aside), on the
    workspace's backend."""
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        present = {row[0] for row in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in sorted(present & tables)}


def test_a_migrated_workspace_answers_as_the_embedded_one_did(migrated) -> None:
    assert migrated["first"].code == 0, migrated["first"].err
    before, after = migrated["before"], migrated["after"]
    assert before.board.rows, "the source has a board to compare"
    assert (after.board.champion, after.board.period_id) == (before.board.champion, before.board.period_id)
    assert evidence(after.board) == evidence(before.board)
    assert after.history == before.history and len(after.history) >= 2
    assert after.variants == before.variants
    assert row_counts(migrated["dir"], RESCORED) == migrated["pairs"]  # the current period paired again, the past copied
    assert after.trace == before.trace
    assert not load_workspace(migrated["dir"]).db_path.with_suffix(".duckdb.wal").exists()


def test_every_table_arrives_with_the_sources_rows_and_a_rerun_copies_nothing(migrated) -> None:
    expected = migrated["counts"]
    past = {table: rows for table, rows in migrated["copied"].items() if table not in RESCORED}
    assert past == {table: rows for table, rows in expected.items() if table not in RESCORED}
    assert expected["traffic"] and expected["paired"] and expected["promotions"]
    assert "traffic (lake)" in migrated["first"].err and f"{expected['traffic']}/{expected['traffic']} rows copied" \
        in migrated["first"].err
    assert f"{sum(expected.values())} rows copied" in migrated["first"].out
    assert migrated["again"].code == 0, migrated["again"].err
    assert "0 rows copied" in migrated["again"].out and "copy " not in migrated["again"].err


def test_new_history_after_the_migration_continues_the_ids_periods_and_change_counter(migrated) -> None:
    workspace_dir = migrated["dir"]
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        with registry.database.reading() as db:
            highest_seq = db.execute("SELECT max(seq) FROM traffic").fetchone()[0]
        record = TrafficRecord(request_id="after-migration", slot=SLOT, received_at=utcnow(), source="capture",
                               status=200, request={"messages": [{"role": "user", "content": "hello"}]}, output="x")
        spool = spool_dir(workspace.state_dir)
        write_segment(spool, [record.model_dump_json().encode()])
        assert ingest_spool(registry.database, spool).traffic_rows == 1
        with registry.database.reading() as db:
            assert db.execute("SELECT seq FROM traffic WHERE request_id = 'after-migration'").fetchone()[0] > highest_seq
    promoted = run_in_process(("promote", SLOT, "baseline", "--force", "--reason", "back"), workspace_dir)
    assert promoted.code == 0, promoted.err
    board = Leaderboard.model_validate(
        run_in_process(("leaderboard", "--slot", SLOT, "--format", "json"), workspace_dir).json())
    assert board.period_id == migrated["before"].board.period_id + 1
    with psycopg.connect(migrated["section"]["postgres_url"]) as control:
        ids = [row[0] for row in control.execute("SELECT id FROM promotions ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) == len(migrated["before"].history) + 1, ids


def test_an_interrupted_migration_completes_on_a_rerun_with_exactly_the_sources_rows(
        source, tmp_path, postgres, object_store, lake_extensions) -> None:
    workspace_dir = copy_of(source, tmp_path / "ws",
                            _own_lake(postgres, object_store, lake_extensions, "cut", blank=True))
    copied: list[str] = []

    def stop_after_three(entry, index, total) -> None:
        if entry.state == "copied":
            copied.append(entry.table)
            if len(copied) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        copy_history(load_workspace(workspace_dir), progress=stop_after_three)
    resumed = copy_history(load_workspace(workspace_dir))
    assert {entry.table for entry in resumed if entry.state == "already copied"} == set(copied)
    assert all(entry.state in ("copied", "empty") for entry in resumed if entry.table not in copied)
    edit_config(workspace_dir, lambda config: config.update(backend="distributed"))
    assert row_counts(workspace_dir, COPIED_WHOLE) == row_counts(source, COPIED_WHOLE)


def test_a_migration_killed_mid_copy_completes_on_a_rerun_without_duplicates(
        source, tmp_path, postgres, object_store, lake_extensions) -> None:
    workspace_dir = copy_of(source, tmp_path / "ws",
                            _own_lake(postgres, object_store, lake_extensions, "killed", blank=True))
    process = subprocess.Popen([str(SHADOWZOO), "migrate", "--to", "distributed"], cwd=workspace_dir,
                               env=call_environment(None), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:  # ends when the process does
            if "(lake): copy" in line:  # the first lake table has begun
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    rerun = run_in_process(("migrate", "--to", "distributed"), workspace_dir)
    assert rerun.code == 0, rerun.err
    assert "rows copied" in rerun.err  # what the killed run had not committed
    edit_config(workspace_dir, lambda config: config.update(backend="distributed"))
    assert row_counts(workspace_dir, COPIED_WHOLE) == row_counts(source, COPIED_WHOLE)


def test_a_target_holding_another_history_is_refused_and_replaced_only_with_force(
        migrated, source, tmp_path, simulator) -> None:
    other = champion_workspace(tmp_path / "other", simulator.base_url)  # its own variants, registered at other times
    edit_config(other, lambda config: config.update(distributed=migrated["section"]))
    refused = run_in_process(("migrate", "--to", "distributed"), other)
    assert refused.code == 1
    assert "distributed.postgres_url" in refused.err and "already holds another history" in refused.err
    assert "variants (" in refused.err and "--force" in refused.err
    forced = run_in_process(("migrate", "--to", "distributed", "--force"), other)
    assert forced.code == 0, forced.err
    assert "replaced" in forced.out
    expected = row_counts(other)
    edit_config(other, lambda config: config.update(backend="distributed"))
    assert row_counts(other) == expected


def test_a_dry_run_lists_what_it_would_copy_and_writes_nothing(source, tmp_path, postgres, object_store,
                                                               lake_extensions) -> None:
    section = _own_lake(postgres, object_store, lake_extensions, "dry", blank=True)
    workspace_dir = copy_of(source, tmp_path / "ws", section)
    dry = run_in_process(("migrate", "--to", "distributed", "--dry-run", "--switch"), workspace_dir)
    assert dry.code == 0, dry.err
    expected = row_counts(source, COPIED_WHOLE) | _past_periods(source)
    assert f"{sum(expected.values())} rows in {len(expected)} tables to copy" in dry.out
    assert "nothing was written" in dry.out
    with psycopg.connect(section["postgres_url"]) as control:
        assert control.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
    assert load_workspace(workspace_dir).config.backend == "embedded"


def _past_periods(workspace_dir: Path) -> dict[str, int]:
    """Rows of the scorer's pairs and sums outside each slot's current period (what a migration copies of them)."""
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        return {table: db.execute(f"SELECT count(*) FROM {table} WHERE period_id NOT IN "
                                  "(SELECT period_id FROM scoring_watermarks)").fetchone()[0] for table in RESCORED}


def test_migrate_names_the_missing_distributed_section(cli, workspace_dir) -> None:
    refused = cli("migrate", "--to", "distributed")
    assert refused.code == 1
    assert "shadowzoo.yaml: distributed: section missing" in refused.err


def test_migrate_refuses_while_another_process_holds_the_database(source, tmp_path, postgres, object_store,
                                                                  lake_extensions) -> None:
    workspace_dir = copy_of(source, tmp_path / "ws",
                            _own_lake(postgres, object_store, lake_extensions, "busy", blank=True))
    database = load_workspace(workspace_dir).db_path
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, duckdb; db = duckdb.connect(sys.argv[1]); print('open', flush=True); "
                               "sys.stdin.read()", str(database)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        refused = run_in_process(("migrate", "--to", "distributed"), workspace_dir,
                                 env={"SHADOWZOO_LOCK_WAIT_S": "0.2"})
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert refused.code == 1
    assert f"is locked by process {holder.pid}" in refused.err and str(database) in refused.err


def test_migrate_refuses_while_the_daemon_owns_the_workspace(source, tmp_path) -> None:
    from ops.state import DaemonInfo, DaemonLock

    workspace_dir = copy_of(source, tmp_path / "ws", {"postgres_url": "postgresql://nobody@127.0.0.1:1/none",
                                                      "object_store": {"bucket": "unused"}})
    lock = DaemonLock(load_workspace(workspace_dir))  # the claim a running daemon holds
    lock.acquire()
    try:
        lock.publish(DaemonInfo(pid=os.getpid(), admin_url="http://127.0.0.1:1", metrics_url="", started_at="now"))
        refused = run_in_process(("migrate", "--to", "distributed"), workspace_dir)
    finally:
        lock.release()
    said = " ".join(refused.err.split())  # the message wraps where the workspace's path makes it long
    assert refused.code == 1
    assert f"`shadowzoo daemon` (pid {os.getpid()}) is running" in said and "shadowzoo stop" in said


def test_switch_sets_the_backend_and_keeps_the_files_comments(tmp_path) -> None:
    from ops.cli_migrate import switch_backend

    path = tmp_path / "shadowzoo.yaml"
    original = ("# my workspace\nstate_dir: .shadowzoo\nbackend: embedded  # for now\n"
                "distributed:\n  postgres_url: postgresql://me@db/sz\n  object_store: {bucket: lake-bucket}\n")
    path.write_text(original)
    switch_backend(path)
    assert path.read_text() == original.replace("backend: embedded  # for now", "backend: distributed  # for now")
    path.write_text(original.replace("backend: embedded  # for now\n", ""))
    switch_backend(path)
    assert "backend: distributed\ndistributed:" in path.read_text() and path.read_text().startswith("# my workspace")
    assert load_workspace(tmp_path).config.backend == "distributed"
