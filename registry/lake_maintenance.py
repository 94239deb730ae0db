"""The lake's upkeep (`backend: distributed`): DuckLake keeps every snapshot, and every small
file a writer added, until told otherwise; the retention leader tells it (`maintain_lake`).

- Small files are merged (`ducklake_merge_adjacent_files`): rows keep the snapshot that
  wrote them, so the change feed and time travel read the same rows after it.
- Snapshots older than the oldest one a reader still needs are expired
  (`ducklake_expire_snapshots`): the caller says which (`floor`: the scorer's oldest
  watermark, whose change feed and time travel its next refresh reads); with none, every
  snapshot but the current one may go. A snapshot at or after the floor is never expired,
  nor one taken in the last `SNAPSHOTS_KEPT_S` (a read under way, or a mark a reader holds
  in memory for a moment, still finds its snapshot).
  The floor is read in the transaction that expires, which is fenced by the leader's epoch
  (`registry.fences`); a watermark only moves forward, so a floor read a moment ago is
  never above what is needed.
- Files no snapshot references any more are deleted (`ducklake_cleanup_old_files`) once they
  were scheduled for deletion `FILES_KEPT_S` ago, so a read still scanning them finishes first.

A merge is a compaction, which DuckLake commits in a transaction of its own (one that also
writes rows, such as a fencing row, is refused), so it runs unfenced: it changes no row,
only how rows are stored, and a stale leader's merge is as good as a new one's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from registry.distributed import LAKE
from registry.fences import fenced

if TYPE_CHECKING:
    import duckdb

    from registry.db import Database

SNAPSHOTS_KEPT_S = 86_400.0
"""Snapshots this recent are kept, whatever the floor: a daemon's marks held in memory (its
counters', its runner passes') are seconds old, unless it was stopped (paused) for longer."""
FILES_KEPT_S = 3600.0
"""How long a file no snapshot references is kept before it is deleted: longer than any read of the lake."""

Floor = Callable[["duckdb.DuckDBPyConnection"], "int | None"]


def maintain_lake(database: Database, floor: Floor, files_kept_s: float = FILES_KEPT_S) -> dict[str, int]:
    """Merge small files, expire the snapshots below `floor(db)` (or all but the current one when
    it is None), delete the files unreferenced for `files_kept_s`; returns how many of each.
    Run inside the retention leader's `fenced` block: the expiry is fenced, the merge cannot be."""
    with fenced(None):  # a compaction commits alone: no fencing row beside it
        merged = database.committed(lambda db: int(db.execute(
            f"SELECT coalesce(sum(files_processed), 0) FROM ducklake_merge_adjacent_files('{LAKE}')").fetchone()[0]))
    expired = database.committed(lambda db: _expire_below(db, floor(db)))
    with database.transaction() as db:
        deleted = db.execute(f"SELECT count(*) FROM ducklake_cleanup_old_files('{LAKE}', "
                             "older_than => now() - to_seconds(?))", [files_kept_s]).fetchone()[0]
    return {"lake_files_merged": merged, "lake_snapshots_expired": expired, "lake_files_deleted": deleted}


def _expire_below(db: duckdb.DuckDBPyConnection, floor: int | None) -> int:
    current = int(db.execute(f"SELECT id FROM {LAKE}.current_snapshot()").fetchone()[0])
    below = min(floor, current) if floor is not None else current
    versions = [row[0] for row in db.execute(
        f"SELECT snapshot_id FROM ducklake_snapshots('{LAKE}') WHERE snapshot_id < ? "
        "AND snapshot_time < now() - to_seconds(?) ORDER BY 1", [below, SNAPSHOTS_KEPT_S]).fetchall()]
    if not versions:
        return 0
    listed = ", ".join(str(int(version)) for version in versions)
    return int(db.execute(f"SELECT count(*) FROM ducklake_expire_snapshots('{LAKE}', versions => [{listed}])").fetchone()[0])
