"""The registry on a real DuckDB file: identity, the champion alias, the audit log, routes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest

from registry import DatabaseError, NewVariant, NotFound, Refused, Registry, load_workspace, read_routes, sha256_text
from registry.db import Database
from registry.migrations import LATEST
from zoo import load_zoo, register_specs


def _chat(model: str = "sim-large", skill: str | None = "Answer with one category.", label: str = "v") -> NewVariant:
    return NewVariant(
        slot="support-triage", label=label, kind="chat",
        config={"kind": "chat", "provider": "sim", "model": model, "params": {"temperature": 0}},
        skill_text=skill,
    )


def _register_demo(registry: Registry) -> dict[str, str]:
    workspace = registry.workspace
    zoo = load_zoo(workspace.specs_dir)
    outcomes = register_specs(zoo.specs, zoo, workspace, registry)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    return {o.spec_file.spec.name: o.registration.variant.version_id for o in outcomes}


def test_version_id_is_label_date_and_a_hash_of_slot_and_fingerprint(registry: Registry) -> None:
    variant = registry.register(_chat(label="baseline")).variant
    assert re.fullmatch(r"baseline-\d{8}-[0-9a-f]{8}", variant.version_id)
    assert variant.version_id.endswith(sha256_text(f"support-triage:{variant.fingerprint}")[:8])
    assert variant.version_id.split("-")[1] == f"{variant.created_at:%Y%m%d}"


def test_registering_the_same_config_twice_returns_the_existing_id(registry: Registry) -> None:
    first = registry.register(_chat(label="a"))
    second = registry.register(_chat(label="b"))
    assert first.created and not second.created
    assert second.variant.version_id == first.variant.version_id
    assert len(registry.variants()) == 1


def test_a_one_character_skill_change_is_a_new_variant(registry: Registry) -> None:
    first = registry.register(_chat(skill="Answer with one category.")).variant
    second = registry.register(_chat(skill="Answer with one category!")).variant
    assert first.version_id != second.version_id


def test_skills_are_stored_once_by_sha256(registry: Registry, workspace_dir: Path) -> None:
    registry.register(_chat(model="sim-large"))
    registry.register(_chat(model="sim-mini"))
    registry.close()
    with duckdb.connect(str(load_workspace(workspace_dir).db_path)) as db:
        assert db.execute("SELECT count(*) FROM skills").fetchone()[0] == 1


def test_registering_never_changes_the_champion(registry: Registry) -> None:
    ids = _register_demo(registry)
    assert registry.champion("support-triage") is None
    registry.promote("support-triage", ids["baseline"], "alice", "initial", None)
    registry.register(_chat(model="another-model"))
    assert registry.champion("support-triage").version_id == ids["baseline"]


def test_promote_and_rollback_write_audit_rows_with_actor_reason_and_evidence(registry: Registry) -> None:
    ids = _register_demo(registry)
    registry.promote("support-triage", ids["baseline"], "alice", "initial champion", {"forced": False})
    registry.promote("support-triage", ids["careful-large"], "bob", "better", {"leaderboard": [1]})
    registry.rollback("support-triage", "carol", "complaints")
    history = registry.history("support-triage")
    assert [(m.action, m.from_version, m.to_version, m.actor, m.reason) for m in history] == [
        ("promote", None, ids["baseline"], "alice", "initial champion"),
        ("promote", ids["baseline"], ids["careful-large"], "bob", "better"),
        ("rollback", ids["careful-large"], ids["baseline"], "carol", "complaints"),
    ]
    assert history[1].evidence == {"leaderboard": [1]}
    assert registry.champion("support-triage").version_id == ids["baseline"]


def test_each_rollback_steps_one_promotion_further_back(registry: Registry) -> None:
    ids = _register_demo(registry)
    for name in ("baseline", "cheap-mini", "careful-large"):
        registry.promote("support-triage", ids[name], "alice", None, None)
    registry.rollback("support-triage", "alice", None)
    assert registry.champion("support-triage").version_id == ids["cheap-mini"]
    registry.rollback("support-triage", "alice", None)
    assert registry.champion("support-triage").version_id == ids["baseline"]
    with pytest.raises(Refused, match="no previous champion"):
        registry.rollback("support-triage", "alice", None)


def test_rollback_with_no_history_is_refused(registry: Registry) -> None:
    with pytest.raises(Refused, match="no previous champion"):
        registry.rollback("support-triage", "alice", None)


def test_promote_refuses_unknown_retired_and_other_slot_versions(registry: Registry) -> None:
    ids = _register_demo(registry)
    with pytest.raises(NotFound, match="did you mean"):
        registry.promote("support-triage", ids["baseline"][:-1], "a", None, None)
    registry.retire(ids["flash"], "a", "errors")
    with pytest.raises(Refused, match="retired"):
        registry.promote("support-triage", ids["flash"], "a", None, None)
    with pytest.raises(Refused, match="belongs to slot 'support-triage'"):
        registry.promote("other-slot", ids["baseline"], "a", None, None)


def test_python_variants_can_never_become_champion(registry: Registry, workspace_dir: Path) -> None:
    (workspace_dir / "pkg").mkdir()
    (workspace_dir / "pkg" / "__init__.py").write_text("")
    (workspace_dir / "pkg" / "mod.py").write_text("def fn(request):\n    return 'billing'\n")
    variant = registry.register(NewVariant(
        slot="support-triage", label="rules", kind="python",
        config={"kind": "python", "entrypoint": "pkg.mod:fn", "params": {}},
    )).variant
    with pytest.raises(Refused, match="never users"):
        registry.promote("support-triage", variant.version_id, "a", None, None)


def test_retire_refuses_the_champion_and_an_already_retired_variant(registry: Registry) -> None:
    ids = _register_demo(registry)
    registry.promote("support-triage", ids["baseline"], "a", None, None)
    with pytest.raises(Refused, match="is the champion"):
        registry.retire(ids["baseline"], "a", None)
    registry.retire(ids["flash"], "a", None)
    with pytest.raises(Refused, match="already retired"):
        registry.retire(ids["flash"], "a", None)
    assert registry.variant(ids["flash"]).status == "retired"


def test_concurrent_promotions_of_one_slot_leave_a_consistent_alias(registry: Registry) -> None:
    ids = _register_demo(registry)
    registry.promote("support-triage", ids["baseline"], "a", None, None)
    targets = [ids["cheap-mini"], ids["careful-large"], ids["flash"]] * 4
    barrier = threading.Barrier(len(targets))
    errors: list[Exception] = []

    def promote(version: str) -> None:
        barrier.wait()
        try:
            registry.promote("support-triage", version, "a", None, None)
        except Refused as exc:  # "already the champion" when a twin won the race
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    moves = registry.history("support-triage")[1:]
    assert len(moves) + len(errors) == len(targets)
    for before, after in zip(moves, moves[1:]):
        assert after.from_version == before.to_version, "a promotion saw a stale champion"
    assert registry.champion("support-triage").version_id == moves[-1].to_version


def test_alias_moves_rewrite_routes_json_with_the_champion_config(registry: Registry) -> None:
    ids = _register_demo(registry)
    registry.promote("support-triage", ids["careful-large"], "a", None, None)
    routes = read_routes(registry.workspace.routes_path)
    route = routes.slots["support-triage"]
    assert route.version_id == ids["careful-large"]
    assert route.model == "sim-large" and route.base_url == "http://127.0.0.1:8700/v1"
    assert "Think carefully" in route.skill
    assert route.api_key_env == "SIM_API_KEY" and route.timeout_s == 10
    leftovers = [p.name for p in registry.workspace.routes_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_a_database_from_a_newer_shadowzoo_is_refused(workspace_dir: Path) -> None:
    workspace = load_workspace(workspace_dir)
    Registry.open(workspace).close()
    with duckdb.connect(str(workspace.db_path)) as db:
        db.execute("INSERT INTO schema_migrations VALUES (?, 'future', now())", [LATEST + 1])
    with pytest.raises(DatabaseError, match=f"schema version {LATEST + 1}.*newer shadowzoo"):
        Registry.open(workspace)


def test_a_new_database_whose_process_was_killed_right_after_opening_it_opens_again(tmp_path: Path) -> None:
    path = tmp_path / "shadowzoo.duckdb"
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from pathlib import Path; from registry.db import Database; "
         "database = Database.open(Path(sys.argv[1])); os.kill(os.getpid(), signal.SIGKILL)", str(path)])
    assert killed.returncode == -signal.SIGKILL
    database = Database.open(path)
    with database.reading() as db:
        assert db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0] == LATEST
    database.close()


def test_a_locked_database_names_the_process_holding_it(workspace_dir: Path) -> None:
    workspace = load_workspace(workspace_dir)
    Registry.open(workspace).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
         str(workspace.db_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatabaseError) as caught:
            Registry.open(workspace, lock_wait_s=0.2)
        message = str(caught.value)
        assert f"locked by process {holder.pid}" in message
        assert "stop it, then retry" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_shadowzoo_duckdb_threads_caps_every_connection_and_a_bad_value_is_named(workspace_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHADOWZOO_DUCKDB_THREADS", "3")
    with Registry.open(load_workspace(workspace_dir)) as registry:
        with registry.database.reading() as db:
            assert db.execute("SELECT current_setting('threads')").fetchone()[0] == 3
    monkeypatch.setenv("SHADOWZOO_DUCKDB_THREADS", "many")
    with pytest.raises(DatabaseError, match="SHADOWZOO_DUCKDB_THREADS='many': expected a whole number of threads"):
        Registry.open(load_workspace(workspace_dir))


def test_routes_json_lists_only_slots_with_a_champion(registry: Registry) -> None:
    _register_demo(registry)
    registry.write_routes()
    assert json.loads(registry.workspace.routes_path.read_text())["slots"] == {}


class _PandasLookups:
    """The last import finder: counts the lookups of pandas that every other finder, the search of
    the path included, passed on."""

    def __init__(self) -> None:
        self.count = 0

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        self.count += name == "pandas"


def test_a_parameterised_query_does_not_search_the_path_for_pandas_each_time(registry: Registry) -> None:
    lookups = _PandasLookups()
    with registry.database.reading() as db:
        query = "SELECT count(*) FROM range(100) AS t(i) WHERE i IN (?, ?, ?)"
        db.execute(query, [1, 2, 3]).fetchall()  # whatever a first query loads stays loaded
        sys.meta_path.append(lookups)
        try:
            for _ in range(20):
                db.execute(query, [1, 2, 3]).fetchall()
        finally:
            sys.meta_path.remove(lookups)
    assert lookups.count == 0
