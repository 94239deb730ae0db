"""The distributed backend's engines: DuckLake with its catalog in PostgreSQL and its data in
object storage, PostgreSQL's control tables beside it in one DuckDB connection, and the
config that names them (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest
import yaml

from registry import lake_instances, load_workspace
from registry.distributed import attach_engines, connect_control, object_store_client
from registry.errors import ConfigError
from registry.workspace_config import DistributedConfig
from tests.engines import distributed_section


@pytest.fixture
def settings(postgres, object_store, lake_extensions, monkeypatch) -> DistributedConfig:
    for name, value in object_store.credentials_env.items():
        monkeypatch.setenv(name, value)
    return DistributedConfig.model_validate(distributed_section(postgres, object_store, lake_extensions))


def _engines(settings: DistributedConfig) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    attach_engines(connection, settings)
    return connection


def test_the_lake_keeps_its_rows_in_the_object_store_and_its_catalog_in_postgres(settings) -> None:
    writer = _engines(settings)
    writer.execute("CREATE TABLE captured (request_id VARCHAR, output VARCHAR)")
    writer.execute("INSERT INTO captured SELECT 'r' || i, 'technical' FROM range(5000) t(i)")  # past inlining
    writer.close()

    reader = _engines(settings)  # another process would see the same: nothing is local
    assert reader.execute("SELECT count(*), count(DISTINCT request_id) FROM captured").fetchall() == [(5000, 5000)]
    listed = object_store_client(settings.object_store).list_objects_v2(
        Bucket=settings.object_store.bucket, Prefix=settings.lake_prefix)
    assert any(item["Key"].endswith(".parquet") for item in listed.get("Contents", []))
    with connect_control(settings) as control:
        catalog = control.execute("SELECT count(*) FROM information_schema.tables "
                                  "WHERE table_name LIKE 'ducklake_%'").fetchone()[0]
    assert catalog > 0


def test_one_connection_joins_lake_and_control_tables_by_their_plain_names(settings) -> None:
    connection = _engines(settings)
    connection.execute("CREATE TABLE control.public.champions (slot VARCHAR PRIMARY KEY, version_id VARCHAR)")
    connection.execute("INSERT INTO champions VALUES ('support', 'v1')")
    connection.execute("INSERT INTO champions VALUES ('support', 'v2') "
                       "ON CONFLICT (slot) DO UPDATE SET version_id = excluded.version_id")
    connection.execute("CREATE TABLE answered (slot VARCHAR, version_id VARCHAR)")
    connection.execute("INSERT INTO answered VALUES ('support', 'v2'), ('support', 'v1')")
    assert connection.execute("SELECT a.version_id FROM answered a JOIN champions c USING (slot, version_id)"
                              ).fetchall() == [("v2",)]


def test_a_lake_instance_comes_back_for_the_next_open_detached_reset_and_spilling_where_that_open_says(
        settings, tmp_path: Path) -> None:
    first = lake_instances.take(settings.extension_directory, tmp_path / "first")
    connection = first.connect()
    attach_engines(connection, settings)
    connection.execute(f"SET threads = {int(first.defaults['threads']) + 1}; ATTACH ':memory:' AS scratch")
    connection.close()
    lake_instances.give_back(first)

    again = lake_instances.take(settings.extension_directory, tmp_path / "second")
    assert again is first, "the instance is kept, its extensions loaded"
    root = again.root
    assert root.execute("SELECT list(database_name ORDER BY database_name) FROM duckdb_databases() "
                        "WHERE NOT internal").fetchone()[0] == ["memory"]
    assert root.execute("SELECT count(*) FROM duckdb_secrets()").fetchone()[0] == 0
    assert str(root.execute("SELECT current_setting('threads')").fetchone()[0]) == first.defaults["threads"]
    assert root.execute("SELECT current_setting('temp_directory')").fetchone()[0] == str(tmp_path / "second")
    beside = lake_instances.take(settings.extension_directory, tmp_path / "beside")
    assert beside is not again, "an open at the same time gets an instance of its own"
    for instance in (again, beside):
        lake_instances.give_back(instance)


def _session_names(settings: DistributedConfig) -> dict[str, str]:
    """The `application_name` of each PostgreSQL session an open makes: DuckDB's to the control
    plane and to the lake's catalog, and psycopg's to the control plane."""
    lake = _engines(settings)
    asked = "SELECT * FROM postgres_query({!r}, 'SELECT current_setting(''application_name'')')"
    names = {database: lake.execute(asked.format(database)).fetchone()[0]
             for database in ("control", "__ducklake_metadata_lake")}
    lake.close()
    with connect_control(settings) as control:
        return names | {"psycopg": control.execute("SHOW application_name").fetchone()[0]}


def test_every_postgresql_session_is_named_after_the_process_holding_it(settings) -> None:
    names = _session_names(settings.model_copy(update={"host": "worker-7"}))
    assert names == dict.fromkeys(("control", "__ducklake_metadata_lake", "psycopg"), f"shadowzoo worker-7:{os.getpid()}")


def test_the_urls_own_session_parameters_reach_every_session(settings) -> None:
    url = settings.postgres_url + "?application_name=ops%20east&sslmode=disable"
    names = _session_names(settings.model_copy(update={"postgres_url": url}))
    assert names == dict.fromkeys(("control", "__ducklake_metadata_lake", "psycopg"), "ops east")


def test_object_store_credentials_are_read_from_the_variables_the_config_names(settings, monkeypatch) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match="secret_key_env: environment variable AWS_SECRET_ACCESS_KEY is not set"):
        _engines(settings)


def test_an_unreachable_postgres_is_an_error_naming_the_url(settings) -> None:
    unreachable = settings.model_copy(update={"postgres_url": "postgresql://shadowzoo@127.0.0.1:1/shadowzoo"})
    with pytest.raises(ConfigError, match=r"distributed.postgres_url: cannot connect to postgresql://shadowzoo@127.0.0.1:1"):
        connect_control(unreachable)
    with pytest.raises(ConfigError, match="cannot attach the lake"):
        _engines(unreachable)


def test_an_extension_directory_without_ducklake_is_an_error_naming_the_setting(settings, tmp_path: Path) -> None:
    empty = settings.model_copy(update={"extension_directory": str(tmp_path)})
    with pytest.raises(ConfigError, match="distributed.extension_directory: DuckDB extension 'ducklake' not found"):
        _engines(empty)


def _config_error(workspace_dir: Path, change: dict) -> str:
    path = workspace_dir / "shadowzoo.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load(path.read_text()) | change))
    with pytest.raises(ConfigError) as raised:
        load_workspace(workspace_dir)
    return str(raised.value)


def test_a_distributed_backend_without_its_engines_is_a_config_error(workspace_dir: Path) -> None:
    message = _config_error(workspace_dir, {"backend": "distributed"})
    assert "shadowzoo.yaml" in message and "no `distributed:` section" in message


def test_a_password_in_the_postgres_url_is_refused_with_where_to_put_it(workspace_dir: Path) -> None:
    message = _config_error(workspace_dir, {"distributed": {
        "postgres_url": "postgresql://app:hunter2@db:5432/shadowzoo", "object_store": {"bucket": "lake-bucket"}}})
    assert "distributed.postgres_url" in message and "PGPASSWORD" in message and "hunter2" not in message


def test_control_plane_migrations_apply_once_however_many_processes_start(settings) -> None:
    from registry.control_plane import CONTROL_LATEST, migrate_control

    for _ in range(2):
        with connect_control(settings) as control:
            migrate_control(control)
    with connect_control(settings) as control:
        assert control.execute("SELECT coalesce(max(version), 0), count(*) FROM control_migrations").fetchone() == (
            CONTROL_LATEST, CONTROL_LATEST)
