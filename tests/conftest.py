"""Shared fixtures: a fresh workspace copied from the demo, and the CLI run on it.

Conventions that keep the suite fast (tests/README.md says more):
- `cli(*args, cwd=..., env=...)` runs a CLI command in this process (see tests/clirun.py):
  use it for every command that ends by itself. `env` values of None unset a variable.
- `cli_script(...)`, same signature and result, spawns the installed console script: for the
  long-running commands (serve, daemon, gateway, sim, demo) and for what only a separate
  process shows (exit status of the real entry point, concurrency between processes).
- Servers live in tests/servers.py; share one per module (a module-scoped fixture) wherever
  the tests only read from it or write what no other test looks at. `make test` runs three
  pytest-xdist workers with `--dist loadfile`: a file's tests run on one worker, in file
  order, so a module-scoped fixture starts once; the longest files start first (`LONGEST_FIRST`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops.workspace_init import init_workspace
from registry import Registry, load_workspace
from tests.clirun import SHADOWZOO, CliResult, Env, run_in_process, run_script

__all__ = ["SHADOWZOO", "CliResult"]

os.environ.setdefault("SHADOWZOO_DUCKDB_THREADS", "1")
"""One DuckDB thread per connection, in this process and the servers it starts: three workers and
their servers share two cores, where DuckDB's default of a thread per core on each connection
cost about a tenth of the suite's CPU in contention (the daemons keep `daemon.duckdb_threads`)."""

LONGEST_FIRST = (
    "test_daemon.py", "test_distributed_runner.py", "test_distributed_acceptance.py", "test_distributed_storage.py",
    "test_distributed_readers.py", "test_gateway.py", "test_operate.py", "test_distributed_writers.py",
    "test_distributed_spool.py", "test_distributed_migrate.py", "test_runner.py", "test_distributed_upkeep.py",
    "test_distributed_routes.py", "test_distributed_roles.py", "test_scorer.py", "test_prometheus_live.py",
    "test_inspect.py", "test_train.py", "test_ingest.py", "test_fuzz.py", "test_console_browser.py",
    "test_outcome_join.py", "test_realistic.py", "test_slices.py",
)
"""The files that take longest (a quiet run's durations on one worker, each file's tests summed), longest first.

`make test` hands files to its workers in collection order (`--dist loadfile
--no-loadscope-reorder`), so these start first and the short files even out the end. xdist's
own order, most tests first, put the long files of one to four tests last, where one worker
ran one of them alone for a minute. Add a file here when it grows long; order is all it changes."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files of `LONGEST_FIRST` first, in its order; every file's tests keep their own order."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture
def workspace_dir(tmp_path: Path) -> Path:
    """A new workspace made by `shadowzoo init`'s own code, from examples/demo."""
    return init_workspace(tmp_path / "ws")


@pytest.fixture
def registry(workspace_dir: Path):
    """The workspace's registry, open in this process."""
    with Registry.open(load_workspace(workspace_dir)) as reg:
        yield reg


@pytest.fixture
def cli(workspace_dir: Path):
    """Run a `shadowzoo` command in this process, in the workspace unless `cwd` says otherwise."""

    def run(*args: str, cwd: Path | None = None, env: Env | None = None) -> CliResult:
        return run_in_process(args, cwd or workspace_dir, env)

    return run


@pytest.fixture(scope="session")
def lake_extensions(tmp_path_factory) -> Path:
    """DuckDB's ducklake, postgres and httpfs extensions, from their wheels, as an extension directory."""
    from tests.engines import wheel_extension_directory

    return wheel_extension_directory(tmp_path_factory.mktemp("duckdb-extensions"))


@pytest.fixture(scope="session")
def postgres_server():
    """The PostgreSQL server of this pytest worker (tests/engines.py); modules take a database on it."""
    from tests.engines import PostgresServer

    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """The S3 server (`weed mini`) of this pytest worker (tests/engines.py); modules take a bucket on it."""
    from tests.engines import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def postgres(postgres_server, object_store, lake_extensions, request):
    """A PostgreSQL database of the module's own (named after it) on the worker's server: `.url`. It
    holds the module's lake (files in the module's bucket under `lake/`, the default `lake_prefix`),
    migrated and empty, as a first open leaves it.

    A test that stops, kills or restarts PostgreSQL starts a `PostgresServer` of its own instead."""
    return postgres_server.create_lake_database(request.module.__name__.rsplit(".", 1)[-1],
                                                f"s3://{object_store.bucket}/lake/", lake_extensions)


@pytest.fixture(scope="module")
def object_store(s3_server, request):
    """An S3 bucket of the module's own (named after it) on the worker's server: `.endpoint`, `.bucket`,
    `.credentials_env`. A test that stops or kills the object store starts an `S3Server` of its own instead."""
    return s3_server.create_bucket(request.module.__name__.rsplit(".", 1)[-1].replace("_", "-"))


@pytest.fixture(scope="module")
def simulator():
    """The bundled simulator, answering at once, shared by a module's tests (a module may define its own)."""
    from tests.servers import start_simulator

    server = start_simulator(fast=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine_credentials(object_store):
    """The object store's and the simulator's keys in the environment, as an operator sets them."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**object_store.credentials_env, "SIM_API_KEY": "sim"}.items():
            patch.setenv(name, value)
        yield


@pytest.fixture
def cli_script(workspace_dir: Path):
    """Run the installed `shadowzoo` console script, as a user would, in the workspace unless `cwd` says otherwise."""

    def run(*args: str, cwd: Path | None = None, env: Env | None = None) -> CliResult:
        return run_script(args, cwd or workspace_dir, env)

    return run
