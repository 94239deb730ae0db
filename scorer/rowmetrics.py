"""Metrics evaluated in Python, one answer at a time, into `metric_values`.

`python` metrics call the user's `module:function(request, output, outcome)`, adding the
keyword `answer` (the whole answer: `{"content": text or None, "tool_calls": [{name,
arguments}, ...]}`) when the function takes it; `json_valid` with a schema validates the
text with jsonschema. Each value is computed once per (request, version, metric
settings) and then joined into the SQL scoring like any other column. A metric that
reads the label (`uses_label`) waits for it and is computed again for a corrected label;
each value is kept under the label it read, so the incremental scorer can still score an
answer as it stood before the correction. A metric that raises, or returns something
outside 0..1, records that row's error and moves on: the row is not scored, and the
error is counted on the leaderboard.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import jsonschema
import polars as pl

from registry import ConfigError, Database, utcnow
from registry.db import frame, registered, sql_literal
from registry.keyed import insert_absent
from registry.workspace_config import JsonValidMetric, Metric, PythonMetric
from registry.entrypoints import load_entrypoint
from scorer.answer_query import AnswerQuery
from scorer.quality_metrics import label_key_sql, uses_label

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

VALUE_COLUMNS = {"request_id": pl.Utf8, "version_id": pl.Utf8, "metric_key": pl.Utf8, "label_key": pl.Utf8,
                 "value": pl.Float64, "error": pl.Utf8, "cost_usd": pl.Float64}


@dataclass(frozen=True)
class RowValue:
    """One metric's verdict on one answer."""

    value: float | None
    error: str | None = None
    cost_usd: float | None = None


Answer = dict[str, Any]
"""An answer as metrics see it: `{"content": text or None, "tool_calls": [{"name", "arguments"}, ...]}`."""
RowEvaluator = Callable[[dict[str, Any], Answer, Any], RowValue]


def answer_of(output: str | None, tool_calls_json: str | None) -> Answer:
    """The answer object of a stored row: its text and its tool calls (an empty list when it made none)."""
    return {"content": output, "tool_calls": json.loads(tool_calls_json) if tool_calls_json else []}


def evaluator_for(metric: Metric, where: str, roots: list[Path]) -> RowEvaluator | None:
    """A function scoring one answer for `metric`, or None when another module handles it (the judge).

    A python metric's module is looked up under `roots` (the workspace and its python_path).
    """
    if isinstance(metric, PythonMetric):
        return _python_evaluator(metric, where, roots)
    if isinstance(metric, JsonValidMetric) and metric.json_schema is not None:
        return _schema_evaluator(metric)
    return None


def _python_evaluator(metric: PythonMetric, where: str, roots: list[Path]) -> RowEvaluator:
    try:
        function = load_entrypoint(metric.entrypoint, roots)
    except ConfigError as exc:
        raise ConfigError(f"{where}.entrypoint: {exc}") from None
    takes_answer = _takes_answer(function)

    def evaluate(request: dict[str, Any], answer: Answer, outcome: Any) -> RowValue:
        extra = {"answer": answer} if takes_answer else {}
        try:
            value = float(function(request, answer["content"], outcome, **extra))
        except Exception as exc:  # noqa: BLE001 - a user's metric may fail in any way; record it and move on
            return RowValue(None, f"{metric.entrypoint} raised {type(exc).__name__}: {exc}")
        if not 0.0 <= value <= 1.0:
            return RowValue(None, f"{metric.entrypoint} returned {value}, outside 0..1")
        return RowValue(value)

    return evaluate


def _takes_answer(function: Callable[..., Any]) -> bool:
    """Whether a metric function accepts the keyword `answer` (by name, or through **kwargs)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "answer" and p.kind is not p.POSITIONAL_ONLY) for p in parameters)


def _schema_evaluator(metric: JsonValidMetric) -> RowEvaluator:
    validator = jsonschema.Draft202012Validator(metric.json_schema)

    def evaluate(request: dict[str, Any], answer: Answer, outcome: Any) -> RowValue:
        try:
            document = json.loads(answer["content"] or "")
        except ValueError:
            return RowValue(0.0)
        return RowValue(1.0 if validator.is_valid(document) else 0.0)

    return evaluate


def pending_answers(database: Database, query: AnswerQuery, key: str, metric: Metric, only: str | None = None) -> pl.DataFrame:
    """Answers (ok status) with no value yet for metric `key` (and matching `only`, a SQL predicate).

    A metric that reads the label waits for it, and is pending again once the label is
    corrected (its values are kept per label: `label_key`); the others see no label. One
    answer per value key: a value is stored per (request, version), so the champion's live
    answer is evaluated and not also its control replay, which a judge would be paid to
    grade for a value `metric_values` does not keep (a result two runners both stored is
    read once by `query` itself, `AnswerQuery.duplicates`)."""
    label_key = label_key_sql(metric, "a.label_json")
    labelled = "AND a.label_json IS NOT NULL " if uses_label(metric) else ""
    label_json = "a.label_json" if uses_label(metric) else "NULL::VARCHAR"
    extra = f"AND {only} " if only else ""
    with database.reading() as db:
        return frame(db, f"""
            SELECT a.request_id, a.version_id, a.output, a.tool_calls_json, {label_json} AS label_json,
                   {label_key} AS label_key, t.request_json
            FROM ({query.sql()}) a JOIN traffic t ON t.request_id = a.request_id
            WHERE a.status = 'ok' {labelled}{extra}AND NOT EXISTS (
                SELECT 1 FROM metric_values m WHERE m.request_id = a.request_id AND m.version_id = a.version_id
                AND m.metric_key = {sql_literal(key)} AND m.label_key = {label_key})
            QUALIFY row_number() OVER (PARTITION BY a.request_id, a.version_id, {label_key}
                                       ORDER BY a.source = 'control') = 1
        """)


def value_key(row: dict[str, Any], key: str) -> dict[str, Any]:
    """The `metric_values` key of metric `key`'s value for a pending answer."""
    return {"request_id": row["request_id"], "version_id": row["version_id"], "metric_key": key,
            "label_key": row.get("label_key") or ""}


def evaluate_rows(rows: pl.DataFrame, key: str, evaluate: RowEvaluator) -> pl.DataFrame:
    """Apply `evaluate` to each pending answer; the frame to store in `metric_values`."""
    out = []
    for row in rows.iter_rows(named=True):
        outcome = json.loads(row["label_json"]) if row["label_json"] is not None else None
        result = evaluate(json.loads(row["request_json"]), answer_of(row["output"], row["tool_calls_json"]), outcome)
        out.append({**value_key(row, key), "value": result.value, "error": result.error, "cost_usd": result.cost_usd})
    return pl.DataFrame(out, schema=VALUE_COLUMNS)


def store_values(database: Database, values: pl.DataFrame) -> None:
    """Append a batch of metric values in one statement; existing keys are kept."""
    if values.is_empty():
        return
    frame = values.with_columns(computed_at=pl.lit(utcnow())).to_arrow()
    database.committed(lambda db: _store_in(database, db, frame))


def _store_in(database: Database, db: duckdb.DuckDBPyConnection, values: pa.Table) -> None:
    """`store_values`' transaction: each value takes a change counter value."""
    database.reserve("change_seq", values.num_rows)
    with registered(db, "new_metric_values", values):
        insert_absent(db, "metric_values", ("request_id", "version_id", "metric_key", "label_key"),
                      ("request_id", "version_id", "metric_key", "label_key", "value", "error", "cost_usd",
                       "computed_at", "seq"),
                      "SELECT request_id, version_id, metric_key, coalesce(label_key, ''), value, error, cost_usd, "
                      "computed_at, nextval('change_seq') FROM new_metric_values")
