"""Connections to the distributed backend's engines: PostgreSQL (control plane and the lake's
catalog), DuckLake over object storage (data plane), and the object store itself.

One DuckDB connection sees both planes: the lake attached as `lake` and PostgreSQL as
`control`, with a search path over both, so the scoring SQL names tables exactly as on the
embedded backend. Credentials come from the environment variables the config names. Every
PostgreSQL session is named (`application_name`) after the process that holds it, so that
`pg_stat_activity` tells an operator which host's process holds a session or waits on a lock.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from registry.db import sql_literal
from registry.errors import ConfigError
from registry.workspace_config import DistributedConfig, ObjectStoreConfig

if TYPE_CHECKING:
    import duckdb
    import psycopg

LAKE = "lake"
CONTROL = "control"
EXTENSIONS = ("ducklake", "postgres", "httpfs")
_SECRET = "shadowzoo_object_store"


def libpq_dsn(config: DistributedConfig) -> str:
    """`postgres_url` as a libpq key=value string (the form DuckDB's postgres and ducklake extensions
    take), with its query parameters (`sslmode`, `sslrootcert`, ...) and the session's name: the
    same session settings psycopg reads from the URL itself."""
    parts = urlsplit(config.postgres_url)
    fields = {"host": parts.hostname, "port": parts.port, "dbname": unquote(parts.path.lstrip("/")) or None,
              "user": unquote(parts.username) if parts.username else None}
    fields |= _url_parameters(config.postgres_url) | _session_name(config)
    return " ".join(f"{key}={_libpq_value(str(value))}" for key, value in fields.items() if value)


def _session_name(config: DistributedConfig) -> dict[str, str]:
    """`application_name` for a new session: `shadowzoo <host>:<pid>`, as leaders and lease holders
    are named; none when the URL names its sessions itself."""
    if "application_name" in _url_parameters(config.postgres_url):
        return {}
    return {"application_name": f"shadowzoo {host_name(config)}:{os.getpid()}"}


def _url_parameters(postgres_url: str) -> dict[str, str]:
    """The URL's query parameters, decoded as libpq decodes them (%XX only: a + stays a +)."""
    items = (item.partition("=") for item in urlsplit(postgres_url).query.split("&") if item)
    return {unquote(key): unquote(value) for key, _, value in items}


def _libpq_value(value: str) -> str:
    """A value as libpq's key=value syntax takes it: quoted when empty or holding a space, quote or backslash."""
    if value and not any(char.isspace() or char in "'\\" for char in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def host_name(config: DistributedConfig) -> str:
    """This host's name among the gateway hosts: `distributed.host`, else the machine's hostname."""
    return config.host or socket.gethostname()


def object_store_credentials(store: ObjectStoreConfig) -> tuple[str, str]:
    """The access key id and secret from the variables the config names, or an error naming the missing one."""
    values = []
    for key, variable in (("access_key_env", store.access_key_env), ("secret_key_env", store.secret_key_env)):
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"distributed.object_store.{key}: environment variable {variable} is not set "
                              "(it must hold the object store's credentials)")
        values.append(value)
    return values[0], values[1]


def connect_control(config: DistributedConfig, **options: Any) -> "psycopg.Connection":
    """A psycopg connection to the control plane, or a ConfigError saying why there is none."""
    import psycopg

    try:
        return psycopg.connect(config.postgres_url, **({"connect_timeout": 5} | _session_name(config) | options))
    except psycopg.OperationalError as exc:
        raise ConfigError(f"distributed.postgres_url: cannot connect to {config.postgres_url}: {exc}".strip()) from None


def attach_engines(connection: "duckdb.DuckDBPyConnection", config: DistributedConfig) -> None:
    """Load the extensions, hand DuckDB the object store's credentials, attach the lake and the
    control plane, and put both on the search path (lake first: new tables go there)."""
    import duckdb

    load_extensions(connection, config.extension_directory)
    store = config.object_store
    key_id, secret = object_store_credentials(store)
    endpoint = urlsplit(store.endpoint) if store.endpoint else None
    secret_options = {"KEY_ID": key_id, "SECRET": secret, "REGION": store.region, "URL_STYLE": store.url_style}
    if endpoint:
        secret_options |= {"ENDPOINT": endpoint.netloc, "USE_SSL": endpoint.scheme == "https"}
    connection.execute(f"CREATE OR REPLACE SECRET {_SECRET} (TYPE s3, "
                       + ", ".join(f"{key} {sql_literal(value)}" for key, value in secret_options.items()) + ")")
    dsn = libpq_dsn(config)
    data_path = f"s3://{store.bucket}/{config.lake_prefix}"
    try:
        connection.execute(f"ATTACH {sql_literal('ducklake:postgres:' + dsn)} AS {LAKE} "
                           f"(DATA_PATH {sql_literal(data_path)})")
        connection.execute(f"ATTACH {sql_literal(dsn)} AS {CONTROL} (TYPE postgres)")
    except duckdb.Error as exc:
        raise ConfigError(f"distributed: cannot attach the lake ({data_path}, catalog at "
                          f"{config.postgres_url}): {exc}") from None
    connection.execute(f"USE {LAKE}; SET search_path = '{LAKE}.main,{CONTROL}.public'")


def detach_engines(connection: "duckdb.DuckDBPyConnection") -> None:
    """Undo `attach_engines` (and any other ATTACH made since) on a connection whose current
    database is still its own: detach every attached database and drop the object store's credentials."""
    own = connection.execute("SELECT current_database()").fetchone()[0]
    for (name,) in connection.execute("SELECT database_name FROM duckdb_databases() "
                                      "WHERE NOT internal AND database_name <> ?", [own]).fetchall():
        connection.execute(f'DETACH DATABASE "{name}"')
    connection.execute(f"DROP SECRET IF EXISTS {_SECRET}")


def object_store_client(store: ObjectStoreConfig) -> Any:
    """A boto3 S3 client for the configured store (for shipping spool segments)."""
    import boto3

    key_id, secret = object_store_credentials(store)
    return boto3.client("s3", endpoint_url=store.endpoint, region_name=store.region,
                        aws_access_key_id=key_id, aws_secret_access_key=secret,
                        config=_boto_config(store))


def _boto_config(store: ObjectStoreConfig) -> Any:
    from botocore.config import Config

    return Config(s3={"addressing_style": "path" if store.url_style == "path" else "virtual"},
                  retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=30)


def load_extensions(connection: "duckdb.DuckDBPyConnection", extension_directory: str | None) -> None:
    """LOAD each extension: from `extension_directory` only when one is set (no download), else
    installing it from DuckDB's repository first if needed. Loading verifies each extension's
    signature once per DuckDB instance (`registry.lake_instances` keeps loaded instances); a
    connection to an instance that has them loaded costs nothing more."""
    import duckdb

    if extension_directory:
        connection.execute(f"SET extension_directory = {sql_literal(extension_directory)}; "
                           "SET autoinstall_known_extensions = false")
    for name in EXTENSIONS:
        try:
            if not extension_directory:
                connection.execute(f"INSTALL {name}")
            connection.execute(f"LOAD {name}")
        except duckdb.Error as exc:
            where = f"in {extension_directory}" if extension_directory else "from DuckDB's repository"
            raise ConfigError(f"distributed.extension_directory: DuckDB extension {name!r} not found {where} "
                              f"(DuckDB {duckdb.__version__}): {exc}") from None
