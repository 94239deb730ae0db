"""Exporting a slot's answers for offline evaluation, analysis and fine-tuning.

One row per (request, answer): the champion's live answer (from `traffic`) and each
replayed one (from `shadow_results`), with the request as captured (already redacted),
the request's latest label, each metric's value, and the answer's quality, cost and net
as `AnswerQuery` scores them, so the file says what the leaderboard counted.

Formats: `jsonl`, `parquet` and `csv` hold those rows; `openai-chat` holds the chat
fine-tuning shape, `{"messages": [...the request's messages..., {"role": "assistant", ...}]}`
(and the request's `tools` when it offered any), the assistant's turn being one version's
successful answer (its text and tool calls) or, with `answer="label"`, the request's label.

Rows stream: the requests are split into ranges of `traffic.seq`, each range is scored
and written on its own (DuckDB's `COPY … TO` for the text formats, Arrow batches into one
Parquet writer for `parquet`), so memory is bounded by a range, not by the export, and
progress is reported per range. The database is held for one range at a time, so the
daemon's own work goes on between them, and every range is read as the database stood
when the export began (`AnswerQuery.as_of`): rows written meanwhile are left out. The file is written beside its path and renamed into
place when complete: a failed export leaves no partial file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from registry import NotFound, Registry, Workspace
from registry.db import registered, sql_literal
from scorer.answer_query import AnswerQuery, variant_prices
from scorer.exportformat import ExportFormat
from scorer.quality_metrics import plan_quality
from scorer.changes import Mark, latest, on_lake
from shadow.pricing import workspace_prices

EPOCH = datetime(1970, 1, 1)
CHUNK_REQUESTS = 50_000
"""Requests scored and written at a time: bounds memory, and sets the progress steps."""
BATCH_ROWS = 65_536


class ExportOptions(BaseModel):
    """What to export; messages name the CLI option to fix."""

    model_config = ConfigDict(extra="forbid")

    slot: str
    format: ExportFormat = ExportFormat.jsonl
    since: datetime | None = Field(None, description="Only requests received since then (UTC).")
    version: str | None = Field(None, description="Only this version's answers (openai-chat: the answers to train on).")
    labelled: bool = Field(False, description="Only requests with a label.")
    answer: Literal["version", "label"] = Field(
        "version", description="openai-chat: the assistant's turn is the version's answer, or the request's label.")

    @model_validator(mode="after")
    def _consistent(self) -> "ExportOptions":
        if self.answer == "label" and self.format != ExportFormat.openai_chat:
            raise ValueError("--answer label is for --format openai-chat only (other formats carry every answer and the label)")
        if self.format == ExportFormat.openai_chat and self.answer == "version" and self.version is None:
            raise ValueError("--format openai-chat needs --version V (whose answers to train on) or --answer label")
        if self.answer == "label" and self.version is not None:
            raise ValueError("--version and --answer label exclude each other: the label is the answer")
        return self


class ExportProgress(BaseModel):
    """How far an export is: requests scored so far of all, and rows written."""

    requests_done: int = 0
    requests_total: int = 0
    rows: int = 0


class ExportSummary(ExportProgress):
    """What an export wrote."""

    path: str
    format: ExportFormat
    bytes: int


def export_answers(registry: Registry, options: ExportOptions, path: Path,
                   progress: Callable[[ExportProgress], None] = lambda p: None,
                   chunk_requests: int = CHUNK_REQUESTS) -> ExportSummary:
    """Write the slot's answers selected by `options` to `path` (replaced when complete),
    `chunk_requests` requests at a time, calling `progress` after each range."""
    variants = registry.variants(slot=options.slot)  # every status: old answers came from variants retired since
    if options.version is not None and options.version not in {v.version_id for v in variants}:
        raise NotFound(f"--version: {options.version!r} is not a version of slot {options.slot!r}")
    prices = variant_prices(variants, workspace_prices(registry.workspace)).to_arrow()
    with registry.database.reading() as db:
        as_of = latest(db)
        # with no request, one empty range still gives the file its header or schema
        chunks = request_chunks(db, options.slot, options.since or EPOCH, chunk_requests, as_of) or [(0, -1, 0)]
        rows = ExportRows(registry.workspace, options, as_of=as_of, duplicates=on_lake(db))
    done = ExportProgress(requests_total=sum(count for _, _, count in chunks))
    progress(done)
    with _staged(path) as staging, _writer(options.format, staging) as write:
        for low, high, count in chunks:
            with registry.database.reading() as db, registered(db, "variant_prices", prices):
                done.rows += write(db, rows.sql(f"seq BETWEEN {low} AND {high}"))
            done.requests_done += count
            progress(done)
    return ExportSummary(**done.model_dump(), path=str(path), format=options.format, bytes=path.stat().st_size)


class ExportRows:
    """The SQL of the exported rows, for one range of requests at a time."""

    def __init__(self, workspace: Workspace, options: ExportOptions, as_of: Mark | None = None,
                 duplicates: bool = False) -> None:
        self.options = options
        self.as_of = as_of  # read the rows as they stood at this mark
        self.duplicates = duplicates  # a result may be stored twice (the lake: `AnswerQuery.duplicates`)
        config = workspace.slot(options.slot)
        self.metrics = config.metrics
        self.plan = plan_quality(config.metrics, f"slots.{options.slot}.metrics")
        self.scoring = config.scoring

    def sql(self, requests: str) -> str:
        """The rows of the requests whose traffic `seq` satisfies the SQL condition `requests`."""
        query = AnswerQuery(slot=self.options.slot, since=self.options.since or EPOCH, plan=self.plan,
                            scoring=self.scoring, requests=requests, as_of=self.as_of, duplicates=self.duplicates)
        answers = (f"WITH live AS MATERIALIZED ({query.live_sql()}) "
                   f"SELECT * FROM live UNION ALL BY NAME SELECT * FROM ({query.replayed_sql('live')})")
        scored = f"SELECT *{self._metric_columns()} FROM ({answers})"
        joined = (f"FROM ({scored}) a JOIN (SELECT seq, slot, request_json FROM traffic WHERE {requests}) t "
                  f"ON t.seq = a.request_seq WHERE {self._where()} "
                  "ORDER BY a.request_seq, a.source <> 'live', a.version_id")
        if self.options.format == ExportFormat.openai_chat:
            return f"SELECT {_chat_example_sql(self.options.answer)} AS example {joined}"
        text = self.options.format != ExportFormat.jsonl  # csv and parquet hold JSON as its text
        json_column = (lambda expr, name: f"{expr}::VARCHAR AS {name}") if text else (lambda expr, name: f"{expr} AS {name}")
        columns = [
            "a.request_id", "t.slot", "a.received_at", "a.version_id", "a.source", "a.status",
            json_column("t.request_json", "request"), "a.output", json_column("a.tool_calls_json", "tool_calls"),
            json_column("a.label_json", "label"), "a.prompt_tokens", "a.completion_tokens", "a.cached_tokens",
            "a.reasoning_tokens", "a.latency_ms", *(f'a."{name}"' for name in self._metric_names()),
            "a.quality", "a.cost_usd", "a.latency_cost", "a.net",
        ]
        return f"SELECT {', '.join(columns)} {joined}"

    def _where(self) -> str:
        conditions = ["true"]
        if self.options.version is not None:
            conditions.append(f"a.version_id = {sql_literal(self.options.version)}")
        if self.options.labelled or self.options.answer == "label":
            conditions.append("a.labelled")
        if self.options.format == ExportFormat.openai_chat:
            # one example per request: the version's own answer (a control replay repeats the live one)
            conditions.append("a.source = 'live'" if self.options.answer == "label"
                              else "a.status = 'ok' AND a.source <> 'control'")
        return " AND ".join(conditions)

    def _metric_names(self) -> list[str]:
        """A column per metric, `metric:<name or type>` (numbered when two share a name)."""
        keys = [metric.key for metric in self.metrics]
        return [f"metric:{key}" if keys.count(key) == 1 else f"metric:{key}:{index}" for index, key in enumerate(keys)]

    def _metric_columns(self) -> str:
        """Each metric's value, as its term of the quality (NULL where a sampled judge does not grade)."""
        return "".join(f', ({sql}) AS "{name}"' if when is None else f', CASE WHEN {when} THEN ({sql}) END AS "{name}"'
                       for name, (sql, _, when) in zip(self._metric_names(), self.plan.terms))


def _chat_example_sql(answer: str) -> str:
    """One fine-tuning example: the request's messages, then the assistant's turn (and its tools)."""
    turn = _label_turn_sql() if answer == "label" else _answer_turn_sql()
    messages = f"list_append(CAST(json_extract(t.request_json, '$.messages') AS JSON[]), {turn})"
    tools = "json_extract(t.request_json, '$.tools')"
    return (f"CASE WHEN coalesce(json_type({tools}), 'NULL') = 'NULL' THEN json_object('messages', {messages}) "
            f"ELSE json_object('messages', {messages}, 'tools', {tools}) END")


def _answer_turn_sql() -> str:
    """The answer as an assistant message: its text, and its tool calls in OpenAI's shape (arguments as a string)."""
    arguments = ("CASE WHEN json_type(json_extract(c, '$.arguments')) = 'VARCHAR' THEN json_extract_string(c, '$.arguments') "
                 "ELSE json_extract(c, '$.arguments')::VARCHAR END")
    call = (f"json_object('id', 'call_' || i, 'type', 'function', 'function', "
            f"json_object('name', json_extract_string(c, '$.name'), 'arguments', {arguments}))")
    calls = f"list_transform(CAST(a.tool_calls_json AS JSON[]), lambda c, i: {call})"
    return (f"CASE WHEN coalesce(json_array_length(a.tool_calls_json), 0) = 0 "
            f"THEN json_object('role', 'assistant', 'content', coalesce(a.output, '')) "
            f"ELSE json_object('role', 'assistant', 'content', a.output, 'tool_calls', {calls}) END")


def _label_turn_sql() -> str:
    """The label as an assistant message: a text label as it is, any other label as its JSON text."""
    text = ("CASE WHEN json_type(a.label_json) = 'VARCHAR' THEN json_extract_string(a.label_json, '$') "
            "ELSE a.label_json::VARCHAR END")
    return f"json_object('role', 'assistant', 'content', {text})"


def request_chunks(db: duckdb.DuckDBPyConnection, slot: str, since: datetime, size: int,
                   as_of: Mark) -> list[tuple[int, int, int]]:
    """The slot's requests since `since`, as they stood at `as_of` (the mark the export reads at:
    on the lake a row committed later may hold a lower `seq`), as (first seq, last seq, count)
    ranges of at most `size` requests."""
    return [tuple(row) for row in db.execute(
        "SELECT min(seq), max(seq), count(*) FROM (SELECT seq, (row_number() OVER (ORDER BY seq) - 1) // ? AS chunk "
        f"FROM {as_of.table('traffic')} WHERE slot = ? AND received_at >= ? {as_of.written('seq')}) "
        "GROUP BY chunk ORDER BY 1", [size, slot, since]).fetchall()]


Write = Callable[[duckdb.DuckDBPyConnection, str], int]
"""Appends the rows of a query to the file being written; returns how many."""


@contextmanager
def _writer(fmt: ExportFormat, path: Path) -> Iterator[Write]:
    """A `Write` for `fmt` into `path`."""
    if fmt == ExportFormat.parquet:
        with _parquet_writer(path) as write:
            yield write
        return
    options = {ExportFormat.jsonl: "FORMAT json", ExportFormat.csv: "FORMAT csv, HEADER {header}",
               # one JSON document per line, as it is: JSON text holds no raw line break
               ExportFormat.openai_chat: "FORMAT csv, HEADER false, QUOTE '', ESCAPE ''"}[fmt]
    part = path.with_name(path.name + ".part")
    written = 0

    def write(db: duckdb.DuckDBPyConnection, sql: str) -> int:
        nonlocal written
        copy = options.format(header="false" if written else "true")
        count = db.execute(f"COPY ({sql}) TO {sql_literal(str(part))} ({copy})").fetchone()[0]
        _append(part, path)
        written += 1
        return int(count)

    try:
        yield write
    finally:
        part.unlink(missing_ok=True)


def _append(part: Path, path: Path) -> None:
    """Append the file `part` to `path`, copied inside the kernel (no pass through Python)."""
    with part.open("rb") as source, path.open("r+b") as target:  # copy_file_range refuses O_APPEND
        target.seek(0, os.SEEK_END)
        remaining = os.fstat(source.fileno()).st_size
        while remaining > 0:
            copied = os.copy_file_range(source.fileno(), target.fileno(), remaining)
            if copied == 0:
                break
            remaining -= copied


@contextmanager
def _parquet_writer(path: Path) -> Iterator[Write]:
    """Arrow batches of each query into one Parquet file (one writer, so one file)."""
    writer: pq.ParquetWriter | None = None

    def write(db: duckdb.DuckDBPyConnection, sql: str) -> int:
        nonlocal writer
        reader = db.sql(sql).to_arrow_reader(BATCH_ROWS)
        if writer is None:
            writer = pq.ParquetWriter(path, reader.schema, compression="snappy")
        count = 0
        for batch in reader:
            writer.write_batch(batch)
            count += batch.num_rows
        return count

    try:
        yield write
    finally:
        if writer is not None:
            writer.close()


@contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, renamed over it when the block succeeds, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
