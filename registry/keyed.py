"""Keyed writes on both backends: insert the rows whose key is not stored yet, or upsert by key.

In a DuckDB file, and on the control plane, every keyed table has its key: these are the
native `INSERT … ON CONFLICT` statements. DuckLake has no keys (`registry.planes`), so on
a lake table the same write is one `MERGE`: the incoming rows are first cut to one per key,
then a key already stored is left alone (or updated in place) and a new one inserted. One
statement in the caller's transaction, so a write done again after a crash changes nothing it
did before. Two writers whose transactions overlap may both insert one key on the lake (each
MERGE sees only what was committed when it began, and DuckLake commits both appends): that
happens when a lease is lost mid-flight, and the scorer reads the first row written of such a
result (`scorer.answer_query.AnswerQuery.duplicates`).

`rows` is a query yielding one value per column of `columns`, in that order. An update is
written as assignments over the stored row (named by its table) and the incoming one
(named `excluded`), the same text in both dialects.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from registry.distributed import LAKE
from registry.planes import LAKE_TABLES


def insert_absent(db: duckdb.DuckDBPyConnection, table: str, key: Sequence[str], columns: Sequence[str], rows: str,
                  params: list | None = None, assume_new: bool = False) -> int:
    """Insert the rows whose key `table` does not hold yet, one of several with one key (which
    one is left to the engine: they are one record sent twice); returns how many were inserted.

    With `assume_new`, a keyed table takes a plain INSERT, cheaper, which raises
    `duckdb.ConstraintException` on a stored key (the caller then writes again without it);
    on the lake the key is checked all the same."""
    names = ", ".join(columns)
    if _on_lake(db, table):
        return _count(db, f"{_merge(table, key, columns, rows)} "
                          f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({_incoming(columns)})", params)
    if assume_new:
        return _count(db, f"INSERT INTO {table} ({names}) SELECT * FROM ({rows})", params)
    return _count(db, f"INSERT INTO {table} ({names}) SELECT * FROM ({rows}) ON CONFLICT DO NOTHING", params)


def upsert(db: duckdb.DuckDBPyConnection, table: str, key: Sequence[str], columns: Sequence[str], rows: str,
           params: list | None = None, update: str | None = None, when: str | None = None) -> int:
    """Insert the rows; one whose key is stored updates that row instead: by the assignments
    `update` (by default every other column from `excluded`), and only where the condition
    `when` holds. Returns how many rows were inserted or updated."""
    names = ", ".join(columns)
    update = update or ", ".join(f"{column} = excluded.{column}" for column in columns if column not in key)
    if _on_lake(db, table):
        matched = f"WHEN MATCHED AND ({when})" if when else "WHEN MATCHED"
        return _count(db, f"{_merge(table, key, columns, rows)} {matched} THEN UPDATE SET {update} "
                          f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({_incoming(columns)})", params)
    condition = f" WHERE {when}" if when else ""
    return _count(db, f"INSERT INTO {table} ({names}) SELECT * FROM ({rows}) "
                      f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {update}{condition}", params)


def _on_lake(db: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether `table` is a lake table of this connection (the distributed backend works in the lake)."""
    return table in LAKE_TABLES and db.execute("SELECT current_database()").fetchone()[0] == LAKE


def _merge(table: str, key: Sequence[str], columns: Sequence[str], rows: str) -> str:
    """The head of a MERGE of the rows, one per key, into `table`, matched on the key."""
    partition = ", ".join(key)
    on = " AND ".join(f"{table}.{column} = excluded.{column}" for column in key)
    return (f"MERGE INTO {table} USING (SELECT * FROM ({rows}) AS incoming({', '.join(columns)}) "
            f"QUALIFY row_number() OVER (PARTITION BY {partition}) = 1) AS excluded ON {on}")


def _incoming(columns: Sequence[str]) -> str:
    return ", ".join(f"excluded.{column}" for column in columns)


def _count(db: duckdb.DuckDBPyConnection, statement: str, params: list | None) -> int:
    """Run a write; how many rows it wrote (its result read to the end)."""
    return int(db.execute(statement, params).fetchall()[0][0])
