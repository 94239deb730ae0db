"""Metrics evaluated in Python, one answer at a time, into `metric_values`.

`python` metrics call the user's `module:function(request, output, outcome)`; `json_valid`
with a schema validates with jsonschema. Each value is computed once per (request,
version, metric settings) and then joined into the SQL scoring like any other column. A
metric that raises, or returns something outside 0..1, records that row's error and
moves on: the row is not scored, and the error is counted on the leaderboard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jsonschema
import polars as pl

from registry import ConfigError, Database, utcnow
from registry.db import frame, registered
from registry.config import JsonValidMetric, Metric, PythonMetric
from registry.entrypoints import load_entrypoint
from scorer.answers import AnswerQuery
from scorer.metrics import sql_literal

VALUE_COLUMNS = {"request_id": pl.Utf8, "version_id": pl.Utf8, "metric_key": pl.Utf8, "value": pl.Float64,
                 "error": pl.Utf8, "cost_usd": pl.Float64}


@dataclass(frozen=True)
class RowValue:
    """One metric's verdict on one answer."""

    value: float | None
    error: str | None = None
    cost_usd: float | None = None


RowEvaluator = Callable[[dict[str, Any], str | None, Any], RowValue]


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

    def evaluate(request: dict[str, Any], output: str | None, outcome: Any) -> RowValue:
        try:
            value = float(function(request, output, outcome))
        except Exception as exc:  # noqa: BLE001 - a user's metric may fail in any way; record it and move on
            return RowValue(None, f"{metric.entrypoint} raised {type(exc).__name__}: {exc}")
        if not 0.0 <= value <= 1.0:
            return RowValue(None, f"{metric.entrypoint} returned {value}, outside 0..1")
        return RowValue(value)

    return evaluate


def _schema_evaluator(metric: JsonValidMetric) -> RowEvaluator:
    validator = jsonschema.Draft202012Validator(metric.json_schema)

    def evaluate(request: dict[str, Any], output: str | None, outcome: Any) -> RowValue:
        try:
            document = json.loads(output or "")
        except ValueError:
            return RowValue(0.0)
        return RowValue(1.0 if validator.is_valid(document) else 0.0)

    return evaluate


def pending_answers(database: Database, query: AnswerQuery, key: str, only: str | None = None) -> pl.DataFrame:
    """Answers (ok status) with no value yet for metric `key` (and matching `only`, a SQL predicate)."""
    extra = f"AND {only} " if only else ""
    with database.reading() as db:
        return frame(db, f"""
            SELECT a.request_id, a.version_id, a.output, a.label_json, t.request_json
            FROM ({query.sql()}) a JOIN traffic t ON t.request_id = a.request_id
            WHERE a.status = 'ok' {extra}AND NOT EXISTS (
                SELECT 1 FROM metric_values m WHERE m.request_id = a.request_id AND m.version_id = a.version_id
                AND m.metric_key = {sql_literal(key)})
        """)


def evaluate_rows(rows: pl.DataFrame, key: str, evaluate: RowEvaluator) -> pl.DataFrame:
    """Apply `evaluate` to each pending answer; the frame to store in `metric_values`."""
    out = []
    for row in rows.iter_rows(named=True):
        outcome = json.loads(row["label_json"]) if row["label_json"] is not None else None
        result = evaluate(json.loads(row["request_json"]), row["output"], outcome)
        out.append({"request_id": row["request_id"], "version_id": row["version_id"], "metric_key": key,
                    "value": result.value, "error": result.error, "cost_usd": result.cost_usd})
    return pl.DataFrame(out, schema=VALUE_COLUMNS)


def store_values(database: Database, values: pl.DataFrame) -> None:
    """Append a batch of metric values in one statement; existing keys are kept."""
    if values.is_empty():
        return
    frame = values.with_columns(computed_at=pl.lit(utcnow())).to_arrow()
    with database.transaction() as db, registered(db, "new_metric_values", frame):
        db.execute("INSERT INTO metric_values (request_id, version_id, metric_key, value, error, cost_usd, computed_at) "
                   "SELECT request_id, version_id, metric_key, value, error, cost_usd, computed_at "
                   "FROM new_metric_values ON CONFLICT DO NOTHING")
