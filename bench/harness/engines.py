"""The distributed backend's engines for a benchmark: PostgreSQL, an S3 server and the DuckDB
extensions, started as the tests start them (`tests.engines`, the one way to start them), on
loopback, and stopped by the `ExitStack` that started them."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from tests.engines import PostgresServer, S3Server, distributed_section, wheel_extension_directory


@dataclass(frozen=True)
class Engines:
    """Running engines, and the `distributed:` section naming them."""

    postgres: PostgresServer
    store: S3Server
    extensions: Path

    def section(self, host: str | None = None, lake: str | None = None) -> dict:
        """The `distributed:` section of a shadowzoo.yaml, as gateway host `host` when given; with
        `lake`, on a fresh PostgreSQL database and bucket prefix of that name (an empty lake and
        control plane, so that rounds of a benchmark start alike)."""
        section = distributed_section(self.postgres, self.store, self.extensions, host)
        if lake is None:
            return section
        return section | {"postgres_url": self._database(lake), "lake_prefix": f"{lake}/lake/",
                          "spool_prefix": f"{lake}/spool/"}

    def _database(self, name: str) -> str:
        """The URL of a new database `name` on the PostgreSQL server."""
        import psycopg

        with psycopg.connect(self.postgres.url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.postgres.url.rsplit("/", 1)[0] + f"/{name}"


def start_engines(stack: contextlib.ExitStack, scratch: Path) -> Engines:
    """PostgreSQL and `weed mini` (data under `scratch`), each stopped by `stack`; the object
    store's credentials (and the simulator's key) put in this process's environment, which the
    processes it starts inherit."""
    postgres = PostgresServer()
    stack.callback(postgres.close)
    store = S3Server(scratch / "s3")
    stack.callback(store.stop)
    os.environ.update({**store.credentials_env, "SIM_API_KEY": "sim"})
    return Engines(postgres, store, wheel_extension_directory(scratch / "extensions"))
