"""Spool ingest: ready segments become `traffic` and `outcomes` rows in DuckDB, exactly once.

Segments are taken oldest first, in batches bounded by size so that a large backlog never
has to fit in memory (smaller ones where ingest workers share the object store, so that they
split a backlog). A batch is staged by DuckDB's own JSON reader (all its segments in
one parallel read) into a temp table, every field checked in bulk against the record
types. A segment the bulk reader cannot read, or with any line it is unsure of, is read
again line by line by `shadow.spool.read_lines`, and its records are staged one by one
where they cannot be staged together. A line that holds no storable record is quarantined
and counted while the good lines of its segment are stored; an entry that cannot be read
at all is quarantined whole. A batch that still fails is done again one segment at a
time, and a segment that fails alone is quarantined: one bad record never stops ingest. A failed
write is the store's, not the segment's, while the store does not answer a read right after it:
then the run fails and the segment waits (PostgreSQL restarting must not quarantine traffic).

The staged rows and the batch's `spool_segments` rows commit in one transaction, each
table appended in one statement; only then are the segments deleted (or archived). Keys
(`traffic.request_id`, `outcomes.outcome_id`, `spool_segments.segment`) make every step
idempotent: a segment seen twice, a record in two segments, or a crash anywhere re-does
work without duplicating a row. On the lake, which has no keys, two workers both holding a
segment (one lost its lease mid-commit) would each append its rows unseen by the other's
transaction: a batch is ingested holding a lock per segment in PostgreSQL, so the second
begins after the first committed and finds the segment in the ledger.

An outcome is stored joined to its request (`request_id`, `request_seq`) when that request is
stored already or comes in the same batch; one that arrived before its request is stored
unjoined, and joined by an UPDATE after the batch that stores the request (by this worker or,
when two commit at once, by whichever commits last). The UPDATE runs only when an unjoined
outcome has a request to join: on the lake an UPDATE is a delete, and DuckLake refuses
another worker's append to a table deleted from meanwhile (its whole batch would be done
again), so two ingest workers conflict only over labels sent before their requests.
Segments come from a `shadow.spool_source.SegmentSource`: the
local spool directory, or the object store the gateway hosts ship to, whose ledger keys
name the host as well (`<host>/<name>`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from registry import Database, canonical_json, sha256_text, utcnow
from registry.db import registered
from registry.keyed import insert_absent, upsert
from shadow.spool_records import STATUS_MAX, STATUS_MIN, SpoolRecord, TrafficRecord
from shadow.spool import CorruptSegment, RejectedLine, first_line, read_lines
from shadow.spool_source import BATCH_BYTES, LocalSpool, ReadySegment, SegmentSource, oldest_age_s
from shadow.tags import MAX_KEY_CHARS, MAX_TAGS, MAX_VALUE_CHARS, RESERVED_PREFIX
from shadow.toolcalls import calls_sql, tool_calls_json

_STORE_ERRORS = (duckdb.Error, pa.ArrowException, ValueError, OverflowError)
"""What storing a record that passed the record models can still raise (e.g. text that is not Unicode)."""
_STORE_UNAVAILABLE = (duckdb.IOException, duckdb.ConnectionException, duckdb.TransactionException,
                      duckdb.FatalException)
"""Errors of the store, not of a segment (PostgreSQL or the object store unreachable, a disk full, commits
refused for conflicts after the retries, a database DuckDB invalidated): the run fails and its segments
wait for the next, never quarantined."""
STAGING = "_spool_staging"
SEGMENT_LOCK = "segment "
"""The prefix of the lock (`Database.exclusive`) an ingest worker holds on a segment's key while it ingests it."""
log = logging.getLogger("shadowzoo.ingest")
ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (segments handled so far, segments ready when the run began)."""


@dataclass
class IngestReport:
    """What one run of `ingest_spool` did."""

    segments: int = 0
    traffic_rows: int = 0
    outcome_rows: int = 0
    duplicates: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    """(segment, why) for each segment with anything quarantined, whole or some of its lines."""
    quarantined_records: int = 0
    """Lines quarantined, plus one for each entry that could not be read at all."""
    joined_outcomes: int = 0
    """Outcomes this run joined to their traffic: stored joined (their request stored already or
    in the same batch), or stored earlier before their request and joined now it came."""
    already_ingested: int = 0
    lag_s: float = 0.0
    """Age of the oldest segment ready when the run began (0 when none was): on `backend:
    distributed` the oldest in the object store, whichever host shipped it."""


@dataclass
class _Batch:
    """One batch once staged: records per stored segment, and why anything was quarantined.

    `quarantined` holds the segments quarantined whole, `partial` the stored ones some of
    whose lines were quarantined; each maps to its notes, one line per quarantined record.
    """

    counts: dict[Path, int]
    quarantined: dict[Path, str] = field(default_factory=dict)
    partial: dict[Path, str] = field(default_factory=dict)
    records_quarantined: int = 0


def ingest_spool(
    database: Database,
    spool_dir: Path,
    archive_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    batch_bytes: int = BATCH_BYTES,
) -> IngestReport:
    """Ingest every ready segment of `spool_dir`; delete each afterwards, or move it to `archive_dir`."""
    return ingest_from(database, LocalSpool(spool_dir, archive_dir), progress, batch_bytes)


def ingest_from(
    database: Database,
    source: SegmentSource,
    progress: ProgressCallback | None = None,
    batch_bytes: int | None = None,
) -> IngestReport:
    """Ingest every segment `source` has ready, `batch_bytes` at a time (the source's own size by
    default); it disposes of each once its rows are committed.

    Safe to run again after a crash at any point. The database lock is held one batch at a
    time, so other work on the database interleaves with a long backlog.
    """
    segments = source.ready()
    report = IngestReport(lag_s=oldest_age_s(segments) or 0.0)
    handled = 0
    for batch in _batches(segments, batch_bytes or source.batch_bytes):
        paths = source.claim(batch)
        if paths:  # none when another worker holds (or has finished) them all
            with database.lock:
                _ingest_guarded(database, source, paths, report)
                report.joined_outcomes += join_outcomes(database)
        handled += len(batch)
        if progress is not None:
            progress(handled, len(segments))
    return report


def join_outcomes(database: Database) -> int:
    """Join the stored outcomes that arrived before their traffic to it, now that it is stored;
    returns how many were joined.

    Nothing is written when none has its traffic stored yet (the common case: outcomes of
    known requests are stored joined), so ingest workers appending at once never conflict
    with a join that changes nothing.
    """
    with database.reading() as db:
        if not db.execute(f"SELECT count(*) FROM ({_requests(_UNJOINED)})").fetchone()[0]:
            return 0
    return database.committed(_join_outcomes_in)


def _join_outcomes_in(db: duckdb.DuckDBPyConnection) -> int:
    """`join_outcomes`' transaction (done again when another ingest worker's join conflicts with it):
    only the unjoined outcomes whose request is stored are rewritten."""
    return db.execute(
        f"UPDATE outcomes SET request_id = known.request_id, request_seq = known.request_seq "
        f"FROM ({_requests(_UNJOINED)}) AS known "
        f"WHERE outcomes.request_id IS NULL AND outcomes.request_key = known.request_key"
    ).fetchall()[0][0]


_UNJOINED = "SELECT request_key FROM outcomes WHERE request_id IS NULL"


def _requests(keys: str) -> str:
    """SQL: the stored request each `request_key` of the query `keys` names, as (request_key,
    request_id, request_seq), for the keys that name one.

    A key that is shadowzoo's request id wins. Otherwise it is the client's own id, and when a
    client reused an id, the latest request carrying it is the answer its user saw. (A request
    stored twice on the lake, by two workers of a lost lease, is named by its lowest `seq`.)
    """
    latest = "(received_at, request_id, -seq)"
    return f"""
        WITH wanted AS (SELECT DISTINCT request_key FROM ({keys})),
        own AS (
            SELECT request_id AS request_key, request_id, min(seq) AS request_seq FROM traffic
            WHERE request_id IN (SELECT request_key FROM wanted) GROUP BY request_id)
        SELECT * FROM own
        UNION ALL
        SELECT client_request_id, arg_max(request_id, {latest}), arg_max(seq, {latest}) FROM traffic
        WHERE client_request_id IN (SELECT request_key FROM wanted EXCEPT SELECT request_key FROM own)
        GROUP BY client_request_id"""


def _batches(segments: list[ReadySegment], batch_bytes: int) -> Iterator[list[ReadySegment]]:
    """Consecutive runs of segments holding about `batch_bytes` (at least one segment each)."""
    batch: list[ReadySegment] = []
    size = 0
    for segment in segments:
        batch.append(segment)
        size += segment.size
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _WriteFailed(Exception):
    """Reading the ledger or committing a batch failed with an error that names no cause: the
    segment's content, or the store (PostgreSQL dropping its connections mid-query surfaces as a
    plain DuckDB error). `__cause__` is the error."""


@contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except _STORE_UNAVAILABLE:
        raise
    except _STORE_ERRORS as exc:
        raise _WriteFailed(first_line(exc)) from exc


def _ingest_guarded(database: Database, source: SegmentSource, paths: list[Path], report: IngestReport) -> None:
    """Ingest a batch; if it fails, each of its segments alone. A segment that cannot be staged alone
    is quarantined; one whose write fails is written once more while the store answers, and
    quarantined only when that fails too. When the store itself fails, the run fails, and the
    segments stay for the next."""
    failure = _ingest_caught(database, source, paths, report)
    if failure is None:
        return
    if len(paths) > 1:
        for path in paths:
            _ingest_guarded(database, source, [path], report)
        return
    if isinstance(failure, _WriteFailed):
        database.probe()  # the store's own error, when it is what failed
        log.info("writing spool segment %s failed, the store answers: once more (%s)", source.key(paths[0]), failure)
        failure = _ingest_caught(database, source, paths, report)
        if isinstance(failure, _WriteFailed):
            database.probe()
    if failure is not None:
        _quarantine_whole(source, paths[0], failure, report)


def _ingest_caught(database: Database, source: SegmentSource, paths: list[Path],
                   report: IngestReport) -> Exception | None:
    """Ingest a batch; the failure a segment may have caused, or None. The store's errors propagate."""
    try:
        _ingest_batch(database, source, paths, report)
    except _STORE_UNAVAILABLE:
        raise
    except (_WriteFailed, *_STORE_ERRORS) as exc:
        return exc
    return None


def _quarantine_whole(source: SegmentSource, path: Path, exc: Exception, report: IngestReport) -> None:
    reason = f"{source.key(path)}: cannot be stored: {first_line(exc)}"
    log.warning("spool segment quarantined: %s", reason)
    source.quarantine(path, reason)
    report.quarantined.append((source.key(path), reason))
    report.quarantined_records += 1


def _ingest_batch(database: Database, source: SegmentSource, paths: list[Path], report: IngestReport) -> None:
    """Ingest a batch holding its segments' locks: a worker that lost a segment's lease and one
    that took it over commit it one after the other, so the second finds it in the ledger
    (`Database.exclusive`; nothing to wait for in a DuckDB file)."""
    with database.exclusive(*(f"{SEGMENT_LOCK}{source.key(path)}" for path in paths)):
        _ingest_held(database, source, paths, report)


def _ingest_held(database: Database, source: SegmentSource, paths: list[Path], report: IngestReport) -> None:
    db = database.connection
    with _writing():
        done = _already_ingested(db, source, paths)
    for path in done:
        source.dispose(path)
    report.already_ingested += len(done)
    todo = [path for path in paths if path not in done]
    if not todo:
        return
    db.execute(_CREATE_STAGING)
    try:
        batch = _stage(db, source, todo)
        with _writing():
            stored = _commit(database, source, batch)
    finally:
        db.execute(f"DROP TABLE IF EXISTS {STAGING}")
    for path, notes in batch.quarantined.items():
        source.quarantine(path, notes)
    report.quarantined += [(source.key(path), _summary(notes))
                           for path, notes in {**batch.quarantined, **batch.partial}.items()]
    report.quarantined_records += batch.records_quarantined
    for path in batch.counts:
        source.dispose(path)
    report.segments += len(batch.counts)
    report.traffic_rows += stored.traffic
    report.outcome_rows += stored.outcomes
    report.joined_outcomes += stored.joined
    report.duplicates += sum(batch.counts.values()) - stored.traffic - stored.outcomes


def _already_ingested(db: duckdb.DuckDBPyConnection, source: SegmentSource, paths: list[Path]) -> set[Path]:
    """Segments committed by an earlier run that stopped before disposing of them."""
    rows = db.execute(
        "SELECT segment FROM spool_segments WHERE status = 'ingested' AND segment IN (SELECT unnest(?))",
        [[source.key(path) for path in paths]],
    ).fetchall()
    keys = {row[0] for row in rows}
    return {path for path in paths if source.key(path) in keys}


# -- staging ----------------------------------------------------------------------------


def _stage(db: duckdb.DuckDBPyConnection, source: SegmentSource, paths: list[Path]) -> _Batch:
    """Fill the staging table with every good segment of `paths`: in bulk, then line by line where unsure."""
    batch = _Batch(_stage_in_bulk(db, paths))
    for path in paths:
        if path not in batch.counts:
            _stage_line_by_line(db, source, path, batch)
    return batch


def _stage_line_by_line(db: duckdb.DuckDBPyConnection, source: SegmentSource, path: Path, batch: _Batch) -> None:
    """Stage a segment's good lines and copy its bad ones to quarantine; quarantine it whole when nothing is good.

    The bad lines are copied before the batch commits, so a crash in between copies them again.
    """
    try:
        read = read_lines(path)
    except CorruptSegment as exc:
        batch.quarantined[path] = str(exc)
        batch.records_quarantined += 1
        return
    unstaged = _stage_records(db, path, read.records)
    rejected = sorted(read.rejected + unstaged, key=lambda line: line.number)
    batch.records_quarantined += len(rejected)
    notes = "\n".join(f"{source.key(path)}: line {line.number}: {line.reason}" for line in rejected)
    if rejected and len(rejected) == len(read.records) + len(read.rejected):
        batch.quarantined[path] = notes
        return
    if rejected:
        source.quarantine_lines(path, rejected)
        batch.partial[path] = notes
    batch.counts[path] = len(read.records) - len(unstaged)


def _summary(notes: str) -> str:
    """The first line of a quarantine note, and how many more there are."""
    first, *more = notes.splitlines()
    return f"{first} (and {len(more)} more line(s) quarantined)" if more else first


def _stage_in_bulk(db: duckdb.DuckDBPyConnection, paths: list[Path]) -> dict[Path, int]:
    """Stage the segments DuckDB's reader reads and the bulk check finds clean; returns their record counts."""
    readable = paths if _read_in_bulk(db, paths) else [path for path in paths if _read_in_bulk(db, [path])]
    counts = {path: 0 for path in readable}
    by_name = {str(path): path for path in readable}
    for name, records, clean in db.execute(
        f"SELECT segment, count(*), bool_and(clean) FROM {STAGING} GROUP BY segment"
    ).fetchall():
        if clean:
            counts[by_name[name]] = records
        else:
            del counts[by_name[name]]
            db.execute(f"DELETE FROM {STAGING} WHERE segment = ?", [name])
    return counts


def _read_in_bulk(db: duckdb.DuckDBPyConnection, paths: list[Path]) -> bool:
    """Stage segments with DuckDB's JSON reader; False, with nothing staged, when one cannot be read so.

    The reader takes paths as glob patterns, so a path that would be one is left to the
    line-by-line reader.
    """
    names = [str(path) for path in paths]
    if any(char in name for name in names for char in "*?["):
        return False
    try:
        db.execute(_STAGE_SEGMENTS, [names])
    except duckdb.Error:
        return False
    return True


def _stage_records(
    db: duckdb.DuckDBPyConnection, path: Path, records: list[tuple[int, bytes, SpoolRecord]]
) -> list[RejectedLine]:
    """Stage records parsed one by one, in the same shape as bulk-staged ones: all at once,
    else one at a time. Returns the lines of those the staging table cannot hold, with why."""
    try:
        _insert_staged(db, [_staging_row(str(path), record) for _, _, record in records])
        return []
    except _STORE_ERRORS:
        pass
    unstaged = []
    for number, raw, record in records:
        try:
            _insert_staged(db, [_staging_row(str(path), record)])
        except _STORE_ERRORS as exc:
            unstaged.append(RejectedLine(number, raw, f"cannot be stored: {first_line(exc)}"))
    return unstaged


def _insert_staged(db: duckdb.DuckDBPyConnection, rows: list[dict]) -> None:
    frame = pa.Table.from_pylist(rows, schema=_STAGING_SCHEMA)
    with registered(db, "_spool_records", frame):
        db.execute(f"INSERT INTO {STAGING} BY NAME SELECT * FROM _spool_records")


def _staging_row(segment: str, record: SpoolRecord) -> dict:
    row: dict = {"segment": segment, "type": record.type, "clean": True, "received_at": _naive_utc(record.received_at)}
    if isinstance(record, TrafficRecord):
        row.update(
            request_id=record.request_id, client_request_id=record.client_request_id, slot=record.slot,
            request_json=_json(record.request), champion_version=record.champion_version,
            status=record.status, output=record.output, tool_calls_json=tool_calls_json(record.tool_calls),
            usage_json=None if record.usage is None else _json(record.usage),
            latency_ms=record.latency_ms, stream=record.stream, partial=record.partial,
            error=record.error, source=record.source, tags_json=None if record.tags is None else _json(record.tags),
        )
    else:
        row.update(request_key=record.request_key, kind=record.kind, value_json=_json(record.value))
    return row


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _naive_utc(moment: datetime) -> datetime:
    """Timestamps are stored as naive UTC: an aware time is converted, a naive one is taken as UTC."""
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


# -- committing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stored:
    """Rows one batch's commit added: traffic, outcomes, and the outcomes among them stored joined."""

    traffic: int
    outcomes: int
    joined: int


def _commit(database: Database, source: SegmentSource, batch: _Batch) -> _Stored:
    """Append the staged rows and record the segments, in one transaction; returns rows added.

    A plain INSERT is tried first: into the keyed table it costs about 40 % less CPU than
    INSERT OR IGNORE (bench/ingest.py), and a backlog rarely holds a duplicate. On a key
    conflict the transaction is rolled back and done again, ignoring duplicates. (On the
    lake, which has no keys, duplicates are left out the first time: `registry.keyed`.)
    """
    now = utcnow()
    try:
        return _append(database, source, batch, now, assume_new=True)
    except duckdb.ConstraintException:
        return _append(database, source, batch, now, assume_new=False)


def _append(database: Database, source: SegmentSource, batch: _Batch, now: datetime,
            assume_new: bool) -> _Stored:
    return database.committed(lambda db: _append_in(database, db, source, batch, now, assume_new))


def _append_in(database: Database, db: duckdb.DuckDBPyConnection, source: SegmentSource, batch: _Batch,
               now: datetime, assume_new: bool) -> _Stored:
    """`_append`'s transaction: every staged row takes a change counter value; the ledger keys
    each segment as its source names it (`<host>/<name>` from the object store)."""
    database.reserve("change_seq", db.execute(f"SELECT count(*) FROM {STAGING}").fetchone()[0])
    traffic_rows = insert_absent(db, "traffic", ("request_id",), _TRAFFIC_COLUMNS, _STAGED_TRAFFIC, [now],
                                 assume_new=assume_new)
    joined, unjoined = _insert_outcomes(db)
    rows = [(source.key(path), records, "ingested", _summary(batch.partial[path]) if path in batch.partial else None,
             now) for path, records in batch.counts.items()]
    rows += [(source.key(path), 0, "quarantined", _summary(notes), now) for path, notes in batch.quarantined.items()]
    with registered(db, "_spool_ledger", pa.Table.from_pylist(
            [dict(zip(_LEDGER_SCHEMA.names, row)) for row in rows], schema=_LEDGER_SCHEMA)):
        upsert(db, "spool_segments", ("segment",), _LEDGER_SCHEMA.names, "SELECT * FROM _spool_ledger")
    return _Stored(traffic_rows, joined + unjoined, joined)


def _insert_outcomes(db: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """Insert the staged outcomes not stored yet, after the batch's traffic: each joined to its
    request when that is stored (or was just inserted), the others unjoined for `join_outcomes`.
    Returns (joined, unjoined) rows inserted. Nothing is read when the batch has no outcome."""
    outcomes = _outcome_frame(db)
    if not outcomes.num_rows:
        return 0, 0
    with registered(db, "_spool_outcomes", outcomes):
        resolved = db.execute(_RESOLVED_OUTCOMES).to_arrow_table()
    with registered(db, "_spool_resolved", resolved):
        joined, unjoined = (insert_absent(db, "outcomes", ("outcome_id",), _OUTCOME_COLUMNS,
                                          f"{_STAGED_OUTCOMES} WHERE request_id IS {which}")
                            for which in ("NOT NULL", "NULL"))
    return joined, unjoined


def _outcome_frame(db: duckdb.DuckDBPyConnection) -> pa.Table:
    """Staged outcomes with their ids, computed by `OutcomeRecord.outcome_id`'s rule."""
    rows = db.execute(
        f"SELECT request_key, kind, value_json, received_at FROM {STAGING} WHERE type = 'outcome'"
    ).fetchall()
    return pa.Table.from_pylist(
        [
            {"outcome_id": _outcome_id(key, kind, value), "request_key": key, "kind": kind,
             "value_json": value, "received_at": received_at}
            for key, kind, value, received_at in rows
        ],
        schema=_OUTCOME_SCHEMA,
    )


def _outcome_id(request_key: str, kind: str, value_json: str) -> str:
    """`OutcomeRecord.outcome_id`, without building a record per outcome."""
    return sha256_text(canonical_json([request_key, kind, json.loads(value_json)]))


# -- SQL --------------------------------------------------------------------------------
# Every field is read as raw JSON so that its JSON type can be checked: a line is "clean"
# only when each field has exactly the type the record model declares (a field with a
# default must be present). Anything else goes to the line-by-line reader, which decides.

_RAW_FIELDS = (
    "type", "request_id", "client_request_id", "slot", "received_at", "request", "champion_version", "status",
    "output", "tool_calls", "usage", "latency_ms", "stream", "partial", "error", "source", "request_key", "kind",
    "value", "tags",
)
_STAGING_SCHEMA = pa.schema([
    ("segment", pa.string()), ("type", pa.string()), ("clean", pa.bool_()),
    ("request_id", pa.string()), ("client_request_id", pa.string()), ("slot", pa.string()),
    ("received_at", pa.timestamp("us")), ("request_json", pa.string()), ("champion_version", pa.string()),
    ("status", pa.int32()), ("output", pa.string()), ("tool_calls_json", pa.string()), ("usage_json", pa.string()),
    ("latency_ms", pa.float64()),
    ("stream", pa.bool_()), ("partial", pa.bool_()), ("error", pa.string()), ("source", pa.string()),
    ("request_key", pa.string()), ("kind", pa.string()), ("value_json", pa.string()), ("tags_json", pa.string()),
])
_LEDGER_SCHEMA = pa.schema([
    ("segment", pa.string()), ("records", pa.int64()), ("status", pa.string()), ("reason", pa.string()),
    ("ingested_at", pa.timestamp("us")),
])
_OUTCOME_SCHEMA = pa.schema([
    ("outcome_id", pa.string()), ("request_key", pa.string()), ("kind", pa.string()),
    ("value_json", pa.string()), ("received_at", pa.timestamp("us")),
])
_CREATE_STAGING = f"""
CREATE OR REPLACE TEMP TABLE {STAGING} (
    segment VARCHAR, type VARCHAR, clean BOOLEAN, request_id VARCHAR, client_request_id VARCHAR,
    slot VARCHAR, received_at TIMESTAMP, request_json JSON, champion_version VARCHAR, status INTEGER,
    output VARCHAR, tool_calls_json JSON, usage_json JSON, latency_ms DOUBLE, stream BOOLEAN, partial BOOLEAN,
    error VARCHAR,
    source VARCHAR, request_key VARCHAR, kind VARCHAR, value_json JSON, tags_json JSON
)"""


def _string(column: str, optional: bool = False) -> str:
    """A JSON string (the raw text of one starts with a quote, of any other value never)."""
    check = f"starts_with({column}::VARCHAR, '\"')"
    return f"({column} IS NULL OR {check})" if optional else f"coalesce({check}, false)"


def _boolean(column: str) -> str:
    return f"coalesce({column}::VARCHAR IN ('true', 'false'), false)"


def _one_of(column: str, *values: str) -> str:
    return f"coalesce(({column}->>'$') IN ({', '.join(repr(value) for value in values)}), false)"


_ISO_TIME = r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)?"
_TRAFFIC_CLEAN = " AND ".join([
    _string("request_id"), _string("client_request_id", True), _string("slot"),
    "coalesce(starts_with(request::VARCHAR, '{'), false)", _string("champion_version", True),
    "(status IS NULL OR (json_type(status) IN ('UBIGINT', 'BIGINT')"
    f" AND coalesce(TRY_CAST(status AS INTEGER) BETWEEN {STATUS_MIN} AND {STATUS_MAX}, false)))",
    _string("output", True), f"(tool_calls IS NULL OR {calls_sql('tool_calls')})",
    "(usage IS NULL OR starts_with(usage::VARCHAR, '{'))",
    "(latency_ms IS NULL OR json_type(latency_ms) IN ('UBIGINT', 'BIGINT', 'DOUBLE'))",
    _boolean("stream"), _boolean("partial"),
    _string("error", True), _one_of("source", "gateway", "capture", "file"),
    # an object of strings (a duplicate key, which the cast refuses, is for the models to decide)
    "(tags IS NULL OR coalesce(TRY_CAST(tags AS MAP(VARCHAR, JSON)) IS NOT NULL AND list_bool_and(list_transform("
    "map_values(TRY_CAST(tags AS MAP(VARCHAR, JSON))), lambda v: coalesce(json_type(v) = 'VARCHAR', false))) "
    "IS NOT false, false))",
])
_OUTCOME_CLEAN = " AND ".join([_string("request_key"), _one_of("kind", "label", "reaction"), "value IS NOT NULL"])
_RAW_COLUMNS = "{" + ", ".join(f"'{name}': 'JSON'" for name in _RAW_FIELDS) + "}"
_STAGE_SEGMENTS = f"""
INSERT INTO {STAGING}
WITH raw AS (
    SELECT *, received_at->>'$' AS received_text
    FROM read_json(?, format = 'newline_delimited', filename = true, columns = {_RAW_COLUMNS})
), timed AS (
    SELECT *, CASE
        WHEN NOT ({_string("received_at")} AND coalesce(regexp_full_match(received_text, '{_ISO_TIME}'), false))
            THEN NULL
        WHEN substr(received_text, -6, 1) IN ('+', '-')
            THEN timezone('UTC', TRY_CAST(received_text AS TIMESTAMPTZ))
        ELSE TRY_CAST(received_text AS TIMESTAMP)
    END AS received_time
    FROM raw
)
SELECT
    filename, type->>'$',
    received_time IS NOT NULL AND CASE type->>'$'
        WHEN 'traffic' THEN {_TRAFFIC_CLEAN}
        WHEN 'outcome' THEN {_OUTCOME_CLEAN}
        ELSE false
    END,
    request_id->>'$', client_request_id->>'$', slot->>'$', received_time, request,
    champion_version->>'$', TRY_CAST(status AS INTEGER), output->>'$', tool_calls, usage,
    TRY_CAST(latency_ms AS DOUBLE),
    TRY_CAST(stream AS BOOLEAN), TRY_CAST(partial AS BOOLEAN), error->>'$', source->>'$',
    request_key->>'$', kind->>'$', value, tags
FROM timed
"""
# The token counts the scorer prices, read from the usage object once, at ingest.
_USAGE_TOKENS = ("json_extract_string(usage_json, ['$.prompt_tokens', '$.completion_tokens', "
                "'$.prompt_tokens_details.cached_tokens', '$.completion_tokens_details.reasoning_tokens'])")
# A request's tags: its explicit ones, then `user` and `metadata.<key>` read from the stored
# request (strings only, within OpenAI's own bounds: a user of at most 256 characters, the
# first 16 metadata entries with keys of at most 64 and values of at most 512), which win;
# NULL when it has none. Slices filter on this column alone, never on the request bodies.
_DERIVED_TAGS = f"""map_concat(
    TRY_CAST(tags_json AS MAP(VARCHAR, VARCHAR)),
    CASE WHEN json_type(request_json, '$.user') = 'VARCHAR' AND length(request_json->>'$.user') <= {MAX_VALUE_CHARS}
         THEN map(['user'], [request_json->>'$.user']) END,
    map_from_entries(list_slice(list_transform(list_filter(
        map_entries(TRY_CAST(request_json->'$.metadata' AS MAP(VARCHAR, JSON))),
        lambda e: coalesce(json_type(e.value) = 'VARCHAR', false) AND length(e.key) <= {MAX_KEY_CHARS}
                  AND length(e.value->>'$') <= {2 * MAX_VALUE_CHARS}),
        lambda e: struct_pack(key := '{RESERVED_PREFIX}' || e.key, value := e.value->>'$')), 1, {MAX_TAGS})))"""
# An observed exchange (posted to /v1/capture or loaded from a file) that names no version
# is the answer of the slot's champion when it was received: the target of the slot's last
# promotion or rollback at `received_at` (none before the first promotion).
_TRAFFIC_COLUMNS = (
    "request_id", "client_request_id", "slot", "received_at", "request_json", "champion_version", "status", "output",
    "tool_calls_json", "prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "usage_json",
    "latency_ms", "stream", "partial", "error", "source", "ingested_at", "tags", "seq",
)
_STAGED_TRAFFIC = f"""
SELECT
    request_id, client_request_id, slot, received_at, request_json,
    CASE WHEN champion_version IS NULL AND source <> 'gateway' THEN champion_then ELSE champion_version END,
    status, output, tool_calls_json, TRY_CAST(tokens[1] AS BIGINT), TRY_CAST(tokens[2] AS BIGINT),
    TRY_CAST(tokens[3] AS BIGINT),
    TRY_CAST(tokens[4] AS BIGINT), usage_json, latency_ms, stream, partial, error, source, ?::TIMESTAMP,
    CASE WHEN cardinality(tags) > 0 THEN tags END, nextval('change_seq')
FROM (SELECT *, {_USAGE_TOKENS} AS tokens, {_DERIVED_TAGS} AS tags FROM {STAGING} WHERE type = 'traffic') staged
ASOF LEFT JOIN (
    SELECT slot AS champion_slot, moved_at, to_version AS champion_then
    FROM promotions WHERE action IN ('promote', 'rollback')
) moves ON staged.slot = moves.champion_slot AND staged.received_at >= moves.moved_at
"""
_RESOLVED_OUTCOMES = ("SELECT o.*, r.request_id, r.request_seq FROM _spool_outcomes o "
                      f"LEFT JOIN ({_requests('SELECT request_key FROM _spool_outcomes')}) r USING (request_key)")
_OUTCOME_COLUMNS = (
    "outcome_id", "request_key", "request_id", "kind", "value_json", "received_at", "seq", "request_seq",
)
_STAGED_OUTCOMES = ("SELECT outcome_id, request_key, request_id, kind, value_json, received_at, nextval('change_seq'), "
                    "request_seq FROM _spool_resolved")
