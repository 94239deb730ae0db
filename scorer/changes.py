"""What the scorer's refresh finds new: marks in the data's history, the requests touched
since one, and the rows as they stood at one.

In a DuckDB file one process writes, so the change counter `seq` every traffic, outcome,
shadow-result and metric-value row takes grows in commit order: the newest `seq` marks the
data's state, and the rows with `seq` at most a mark are the data as it stood then. On the
lake several workers commit at once, each drawing `seq` from a block reserved ahead
(`registry.planes.LakeIds`), so a row with a lower `seq` may commit after one with a higher.
There a mark is a DuckLake snapshot id (the one a transaction reads): what was committed
after it is read off DuckLake's change feed (`ducklake_table_insertions`, which reads the
files and inlined rows those snapshots added, nothing older), and the data as it stood is
read by time travel (`AT (VERSION => …)`). The scoring SQL is the same on both: it names its
tables through `Mark.table` and its as-of conditions through `Mark.written`. The lake's upkeep
keeps every snapshot from the oldest watermark on (`oldest_needed`, `registry.lake_maintenance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from registry.distributed import LAKE

CHANGED_TABLES = ("traffic", "outcomes", "shadow_results", "metric_values")
"""The tables whose rows take `seq`: what a refresh scores again when they change."""


@dataclass(frozen=True)
class Mark:
    """A point in the data's history: a `seq` (a DuckDB file) or a lake snapshot id (`snapshot`)."""

    value: int
    snapshot: bool = False

    def table(self, name: str, alias: str | None = None) -> str:
        """The table `name` (named `alias`, by default its name) as it stood at this mark, with
        `written`'s condition on its rows."""
        named = f"{name} AS {alias or name}"
        return f"{named} AT (VERSION => {self.value})" if self.snapshot else named

    def written(self, seq: str) -> str:
        """The condition (` AND …`, or nothing) keeping the rows of `table` written by this mark,
        given their `seq` column."""
        return "" if self.snapshot else f"AND {seq} <= {self.value}"


def on_lake(db: duckdb.DuckDBPyConnection) -> bool:
    """Whether the connection works in the lake (the distributed backend)."""
    return db.execute("SELECT current_database()").fetchone()[0] == LAKE


def latest(db: duckdb.DuckDBPyConnection) -> Mark:
    """The mark of the data as this connection's transaction sees it."""
    if on_lake(db):
        return Mark(int(db.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()[0]), snapshot=True)
    highest = ", ".join(f"(SELECT max(seq) FROM {table})" for table in CHANGED_TABLES)
    return Mark(int(db.execute(f"SELECT greatest({highest}, 0)").fetchone()[0] or 0))


def oldest_needed(db: duckdb.DuckDBPyConnection) -> int | None:
    """The oldest lake snapshot a refresh still reads (the lowest watermark: its change feed starts
    there, and its rows as they stood then), or None before any slot was scored."""
    row = db.execute("SELECT min(seq) FROM scoring_watermarks").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def still_readable(db: duckdb.DuckDBPyConnection, since: Mark | None) -> Mark | None:
    """`since`, or None when the lake's upkeep has expired a snapshot after it: a mark a process
    held in memory (a daemon's counters, its runner's last pass) while paused past the snapshots
    kept, whose change feed can no longer be read. A scorer watermark is never expired."""
    if since is None or not since.snapshot:
        return since
    oldest = db.execute(f"SELECT min(snapshot_id) FROM ducklake_snapshots('{LAKE}')").fetchone()[0]
    return since if oldest is None or since.value + 1 >= oldest else None


def touched_requests(since: Mark, now: Mark) -> str:
    """SQL for the `request_seq` of the requests whose rows changed after `since`, up to `now`."""
    new = {table: written_after(table, since, now) for table in CHANGED_TABLES}
    return (
        f"SELECT seq AS request_seq FROM {new['traffic']} "
        f"UNION SELECT request_seq FROM {new['shadow_results']} WHERE request_seq IS NOT NULL "
        f"UNION SELECT request_seq FROM {new['outcomes']} WHERE request_seq IS NOT NULL "
        f"UNION SELECT seq FROM traffic WHERE request_id IN (SELECT request_id FROM {new['metric_values']})"
    )


def request_touched(since: Mark, now: Mark, request_seq: int, request_id: str) -> tuple[str, list[str]]:
    """SQL (and its parameters) for whether a row of one request (its traffic, a result, an
    outcome or a metric value) was written after `since`, up to `now`: on the lake off the
    change feed, whatever its `seq`."""
    rows = {"traffic": f"seq = {int(request_seq)}", "shadow_results": f"request_seq = {int(request_seq)}",
            "outcomes": f"request_seq = {int(request_seq)}", "metric_values": "request_id = ?"}
    return "SELECT " + " OR ".join(f"EXISTS (SELECT 1 FROM {written_after(table, since, now)} WHERE {condition})"
                                   for table, condition in rows.items()), [request_id]


def written_after(table: str, since: Mark | None, now: Mark) -> str:
    """The rows of `table` written after `since` (all of them when None) and by `now`, as a relation:
    in a DuckDB file by their `seq`, on the lake by the snapshot that committed them."""
    if since is None:
        return f"(SELECT * FROM {now.table(table)} WHERE true {now.written('seq')})"
    if since.snapshot:
        return f"ducklake_table_insertions('{LAKE}', 'main', '{table}', {since.value + 1}, {now.value})"
    return f"(SELECT * FROM {table} WHERE seq > {since.value} AND seq <= {now.value})"
