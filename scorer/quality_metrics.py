"""Quality metrics, compiled to SQL so millions of answers are scored inside DuckDB.

Checks against a label or the request (`exact_match`, `numeric`, `regex`, `contains`,
`json_valid`, `tool_call`) become SQL expressions over an answer's `output` (or its
`tool_calls_json`) and its `label`, giving 1, 0, or NULL when the row cannot be scored (a
label of the wrong type, say). Metrics that need Python (`python`, `judge`, `json_valid`
with a schema) are evaluated row by row into `metric_values` and joined in; the slot's
quality is the weighted mean of its metrics. The same SQL scores the daemon's traffic
and, through `score_rows`, a handful of training items.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import duckdb
import polars as pl

from registry import ConfigError, canonical_json
from registry.db import sql_literal
from registry.workspace_config import (
    ContainsMetric,
    ExactMatchMetric,
    JsonValidMetric,
    JudgeMetric,
    Metric,
    NumericMetric,
    PythonMetric,
    RegexMetric,
    ToolCallMetric,
)
from shadow.toolcalls import calls_sql

# written as comparisons joined by OR: DuckDB plans the IN list as a join inside the
# scoring query, which cost a tenth of scoring the champion's answers
SCALAR_LABEL = (
    "CASE WHEN " + " OR ".join(f"json_type(label_json) = '{kind}'" for kind in ("VARCHAR", "BIGINT", "UBIGINT", "DOUBLE", "BOOLEAN"))
    + " THEN json_extract_string(label_json, '$') END"
)
NUMBER_RE = r"-?[0-9]+(?:\.[0-9]+)?"
SAMPLE_HEX_DIGITS = 13


def is_sampled(request_id: str, key: str, rate: float) -> bool:
    """Whether judge `key` grades request `request_id`: a hash draw below `rate`, the same for every version."""
    point = int(hashlib.sha256(f"{request_id}:{key}".encode()).hexdigest()[:SAMPLE_HEX_DIGITS], 16)
    return point < rate * 16**SAMPLE_HEX_DIGITS


def sampled_sql(key: str, rate: float, request_id: str = "request_id") -> str:
    """`is_sampled` as a DuckDB predicate on the column `request_id`."""
    if rate >= 1:
        return "true"
    digest = f"sha256({request_id} || {sql_literal(':' + key)})"
    return f"('0x' || left({digest}, {SAMPLE_HEX_DIGITS}))::BIGINT < {rate!r} * {16**SAMPLE_HEX_DIGITS}"


def row_metric_key(metric: Metric) -> str:
    """Key of a Python-evaluated metric's values: its name and a hash of its settings,
    so that changing a rubric or an entrypoint scores afresh instead of reusing old values."""
    digest = hashlib.sha256(canonical_json(metric.model_dump(mode="json", by_alias=True)).encode()).hexdigest()[:8]
    return f"{metric.key}:{digest}"


def is_row_metric(metric: Metric) -> bool:
    return isinstance(metric, (PythonMetric, JudgeMetric)) or (isinstance(metric, JsonValidMetric) and metric.json_schema is not None)


def uses_label(metric: Metric) -> bool:
    """Whether a score needs the request's label (a pair waits for it)."""
    if isinstance(metric, (ExactMatchMetric, NumericMetric, ToolCallMetric)):
        return True
    if isinstance(metric, RegexMetric):
        return "{label}" in metric.pattern
    if isinstance(metric, ContainsMetric):
        return metric.text is None
    if isinstance(metric, (PythonMetric, JudgeMetric)):
        return metric.uses_label
    return False


def label_key_sql(metric: Metric, label_json: str) -> str:
    """SQL for the key under which a row metric's value is kept: the md5 of the label it
    read (`label_json`, NULL while there is none), or '' for a metric that reads no label."""
    return f"md5({label_json}::VARCHAR)" if uses_label(metric) else "''"


@dataclass(frozen=True)
class QualityPlan:
    """How to compute `quality` for a slot: SQL terms, and which Python-evaluated values to join."""

    terms: list[tuple[str, float, str | None]] = field(default_factory=list)
    """(SQL, weight, when): a term counts where the SQL condition `when` holds (always when None)."""
    row_metrics: dict[str, Metric] = field(default_factory=dict)
    needs_label: bool = False
    label_columns: dict[str, str] = field(default_factory=dict)
    """What the terms compare against, computed from the request's `label` once per request
    (not once per answer): column name → SQL over `label`."""

    @property
    def empty(self) -> bool:
        return not self.terms

    def label_columns_sql(self) -> str:
        """The select list (with a leading comma) computing the label columns, over a relation with `label`."""
        return "".join(f', {sql} AS "{name}"' for name, sql in self.label_columns.items())

    def label_column_refs(self, relation: str | None = None) -> str:
        """The select list (with a leading comma) of the label columns already computed,
        qualified by `relation` when given."""
        prefix = f"{relation}." if relation else ""
        return "".join(f', {prefix}"{name}"' for name in self.label_columns)

    def quality_sql(self) -> str:
        """The weighted mean over the terms; a sampled judge's term counts on the requests it
        samples, where an answer without its verdict is not scored yet (NULL) rather than
        scored without it: both answers of a pair are then judged alike."""
        numerator = " + ".join(f"{weight} * ({sql})" if when is None else f"(CASE WHEN {when} THEN {weight} * ({sql}) ELSE 0 END)"
                               for sql, weight, when in self.terms)
        denominator = " + ".join(str(weight) if when is None else f"(CASE WHEN {when} THEN {weight} ELSE 0 END)"
                                 for _, weight, when in self.terms)
        return f"(({numerator}) / nullif({denominator}, 0))"


def plan_quality(metrics: list[Metric], where: str) -> QualityPlan:
    """Compile a slot's metrics; `where` names the config key for errors."""
    terms: list[tuple[str, float, str | None]] = []
    row_metrics: dict[str, Metric] = {}
    label_columns: dict[str, str] = {}
    for index, metric in enumerate(metrics):
        if is_row_metric(metric):
            key = row_metric_key(metric)
            row_metrics[key] = metric
            when = sampled_sql(key, metric.sample_rate) if isinstance(metric, JudgeMetric) else None
            terms.append((f'"mv:{key}"', metric.weight, when))
            continue
        expected = _expected_sql(metric)
        if expected is not None:
            label_columns[f"label:{index}"] = expected
        terms.append((_check_sql(metric, f"{where}[{index}]", f'"label:{index}"'), metric.weight, None))
    return QualityPlan(terms=terms, row_metrics=row_metrics, needs_label=any(uses_label(m) for m in metrics),
                       label_columns=label_columns)


def _output(metric: Metric) -> str:
    if not metric.first_line:
        return "coalesce(output, '')"
    # split_part would build the list of every line of the output; a search for the first
    # line break does not (about a third less time over long answers)
    return "substring(coalesce(output, ''), 1, coalesce(nullif(strpos(coalesce(output, ''), chr(10)), 0) - 1, 2147483647))"


def _expected_sql(metric: Metric) -> str | None:
    """SQL over `label` for what a check compares an answer with, or None when the check
    does not use the label."""
    if isinstance(metric, ExactMatchMetric):
        return _normalised("label", metric)
    if isinstance(metric, NumericMetric):
        return "TRY_CAST(label AS DOUBLE)"
    if isinstance(metric, RegexMetric) and "{label}" in metric.pattern:
        return f"replace({sql_literal(metric.pattern)}, '{{label}}', regexp_escape(label))"
    if isinstance(metric, ContainsMetric) and metric.text is None:
        return "label" if metric.case_sensitive else "lower(label)"
    if isinstance(metric, ToolCallMetric):
        return f"CASE WHEN {calls_sql(_LABEL_CALLS)} THEN {json_value_sql(_LABEL_CALLS)} END"
    return None


def _check_sql(metric: Metric, where: str, expected: str) -> str:
    """The check of one answer's `output` against `expected`, the column `_expected_sql` gives."""
    output = _output(metric)
    if isinstance(metric, ExactMatchMetric):
        normalised = _normalised(output, metric, metric.first_line)
        if normalised == output:
            return f"CAST({output} = {expected} AS DOUBLE)"
        # `expected` is normalised already and normalising is idempotent, so an output equal
        # to it matches as it is: only the others are normalised (a CASE evaluates its ELSE
        # on the rows its WHEN rejects; an OR would evaluate both sides on every row)
        return f"CASE WHEN {output} = {expected} THEN 1.0 ELSE CAST({normalised} = {expected} AS DOUBLE) END"
    if isinstance(metric, NumericMetric):
        return _numeric_sql(output, metric, expected)
    if isinstance(metric, RegexMetric):
        _check_regex(metric.pattern, where)
        pattern = expected if "{label}" in metric.pattern else sql_literal(metric.pattern)
        return f"CAST(regexp_matches({output}, {pattern}) AS DOUBLE)"
    if isinstance(metric, ContainsMetric):
        if metric.case_sensitive:
            needle = expected if metric.text is None else sql_literal(metric.text)
            return f"CAST(contains({output}, {needle}) AS DOUBLE)"
        needle = expected if metric.text is None else f"lower({sql_literal(metric.text)})"
        return f"CAST(contains(lower({output}), {needle}) AS DOUBLE)"
    if isinstance(metric, JsonValidMetric):
        return f"CAST(coalesce(json_valid({output}), false) AS DOUBLE)"
    if isinstance(metric, ToolCallMetric):
        made = json_value_sql("coalesce(tool_calls_json, '[]')::JSON")
        return f"CASE WHEN {expected} IS NOT NULL THEN CAST({made} = {expected} AS DOUBLE) END"
    raise ConfigError(f"{where}: metric type {metric.type!r} has no SQL form")


# The label as a list of calls: one call is a list of one.
_LABEL_CALLS = ("(CASE WHEN json_type(label_json) = 'OBJECT' THEN ('[' || label_json || ']')::JSON "
                "ELSE label_json::JSON END)")
_NUMBER_TYPES = "('UBIGINT', 'BIGINT', 'DOUBLE')"


def json_value_sql(value: str) -> str:
    """SQL: a JSON value as a sorted list of its nodes (path, type, scalar), so that two values
    are equal exactly when their lists are: object key order does not count, array order does,
    and numbers compare by value (1 equals 1.0; "1" does not equal 1)."""
    node = (f"fullkey || ' ' || CASE WHEN type IN {_NUMBER_TYPES} "
            "THEN 'NUMBER ' || CAST(CAST(atom AS DOUBLE) AS VARCHAR) "
            "ELSE type || ' ' || coalesce(CAST(atom AS VARCHAR), '') END")
    return f"(SELECT list({node} ORDER BY fullkey) FROM json_tree({value}))"


def _normalised(expr: str, metric: ExactMatchMetric, one_line: bool = False) -> str:
    """`expr` as exact_match compares it (`one_line`: `expr` holds no line feed)."""
    if metric.strip_punctuation:
        expr = f"regexp_replace({expr}, '[[:punct:]]', '', 'g')"
    if metric.normalize_whitespace:
        expr = _fold_whitespace(expr, one_line)
    if not metric.case_sensitive:
        expr = f"lower({expr})"
    return expr


def _fold_whitespace(expr: str, one_line: bool) -> str:
    """Trim, and fold runs of white space to one space; the regex runs only when there is a run to fold."""
    folded = ["'  '", "chr(9)", "chr(13)"] + ([] if one_line else ["chr(10)"])
    runs = " OR ".join(f"contains({expr}, {pair})" for pair in folded)
    return f"(CASE WHEN {runs} THEN trim(regexp_replace({expr}, '\\s+', ' ', 'g')) ELSE trim({expr}) END)"


def _numeric_sql(output: str, metric: NumericMetric, expected: str) -> str:
    found = f"TRY_CAST(regexp_extract(regexp_replace({output}, '([0-9]),([0-9]{{3}})', '\\1\\2', 'g'), '{NUMBER_RE}') AS DOUBLE)"
    allowed = f"{metric.tolerance} * abs({expected})" if metric.relative else str(metric.tolerance)
    return (f"CASE WHEN {expected} IS NULL THEN NULL WHEN {found} IS NULL THEN 0.0 "
            f"ELSE CAST(abs({found} - {expected}) <= {allowed} AS DOUBLE) END")


def _check_regex(pattern: str, where: str) -> None:
    """DuckDB uses RE2: refuse at load time a pattern it cannot run, naming the key."""
    try:
        duckdb.sql(f"SELECT regexp_matches('', {sql_literal(pattern.replace('{label}', 'x'))})").fetchall()
    except duckdb.Error as exc:
        raise ConfigError(f"{where}.pattern: {pattern!r} is not a valid RE2 regular expression: {exc}") from None


def score_rows(plan: QualityPlan, rows: pl.DataFrame) -> pl.Series:
    """Quality of a small frame with `output` and `label_json` columns (and `tool_calls_json`;
    without it, the answers made no tool calls), by the same SQL as the daemon.

    Only SQL-checkable metrics are allowed here (row metrics need `metric_values`).
    """
    if plan.row_metrics:
        raise ConfigError("metrics evaluated in Python (python, judge, json schema) cannot score training items yet")
    if "tool_calls_json" not in rows.columns:
        rows = rows.with_columns(tool_calls_json=pl.lit(None, pl.Utf8))
    relation = duckdb.sql(
        f"SELECT {plan.quality_sql()} AS quality "
        f"FROM (SELECT *{plan.label_columns_sql()} FROM (SELECT *, {SCALAR_LABEL} AS label FROM rows))"
    )
    return relation.pl()["quality"]
