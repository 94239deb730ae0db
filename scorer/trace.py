"""One request, traced: what each variant answered, how each answer scored, and whether it paired.

A trace reads the stored rows of one request and scores its answers with the scorer's own
SQL (`AnswerQuery.answers_sql`, restricted to the request's traffic `seq`: the scoring of
`sql()` in one pass, a third of its planning), so every number it shows is the number the
leaderboard used. Each metric's value comes from the same check expression
the quality is the weighted mean of (`QualityPlan.terms`). Next to the scores: the labels
and reactions in `outcomes`, the calls that were not run (their reason is in
`shadow_results.error`), the active challengers that have no answer at all, and for every
challenger answer the pair it entered (`paired`, with its differences) or why it did not.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import duckdb
import polars as pl
from pydantic import BaseModel, Field

from registry import ConfigError, NotFound, Registry, Variant
from registry.db import sql_literal
from scorer.answer_query import AnswerQuery, read_once, variant_prices, variant_prices_sql
from scorer.changes import Mark, latest, on_lake, request_touched
from scorer.quality_metrics import plan_quality
from shadow.pricing import effective_prices

EPOCH = datetime(1970, 1, 1)
SKIPPED_OPTIMIZERS = ("common_subexpressions",)
"""DuckDB optimizer passes a trace's scoring query goes without: on one request's rows it
saves nothing, while over the scoring SQL's metric expressions it took about 13 ms on DuckDB
2.0 and takes about 1 ms of the query's 14 ms of CPU on 1.5 (the pushdown of the request's
seq into every scan, which does matter, stays on)."""
_TRAFFIC = ("seq, request_id, client_request_id, slot, received_at, request_json, champion_version, source, status, "
            "error")


class MetricValue(BaseModel):
    """One metric's value for one answer (None when it could not be computed)."""

    metric: str
    weight: float
    value: float | None
    counted: bool = Field(description="False when a sampled judge does not grade this request.")


class PairTrace(BaseModel):
    """Whether a challenger's answer entered the evidence, and with which differences."""

    entered: bool
    period_id: int | None = None
    d_net: float | None = None
    d_quality: float | None = None
    d_cost: float | None = None
    reason: str = Field(description="Why it entered or did not.")


class AnswerTrace(BaseModel):
    """One variant's answer to the request, scored; or why there is none."""

    version_id: str
    role: str = Field(description="champion (live), challenger, or control (the champion replayed).")
    status: str = Field(description="ok, error, not_run, or missing (no call recorded).")
    reason: str | None = Field(None, description="The error, the reason it was not run, or why it is missing.")
    output: str | None = None
    tool_calls: list[Any] | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    metrics: list[MetricValue] = Field(default_factory=list)
    quality: float | None = None
    cost_usd: float | None = None
    latency_cost_usd: float | None = None
    net: float | None = None
    pair: PairTrace | None = None


class OutcomeTrace(BaseModel):
    """A label or reaction received for the request; `used` marks the label the scores read."""

    kind: str
    value: Any
    received_at: datetime
    used: bool


class PeriodTrace(BaseModel):
    period_id: int
    champion_version: str
    started_at: datetime
    reason: str


class RequestTrace(BaseModel):
    """Everything stored and computed about one request."""

    request_id: str
    client_request_id: str | None
    slot: str
    received_at: datetime
    source: str
    request: Any = Field(description="The request as received (after redaction).")
    champion: AnswerTrace
    challengers: list[AnswerTrace]
    outcomes: list[OutcomeTrace]
    period: PeriodTrace | None = Field(None, description="The evaluation period the request belongs to.")


def trace_request(registry: Registry, key: str, slot: str | None = None) -> RequestTrace:
    """The trace of the request whose id (or client request id, within `slot` when given) is `key`."""
    with registry.database.reading() as db, _tracing(db):
        traffic = _find(db, key, slot)
        config = registry.workspace.slot(traffic["slot"])
        variants = registry.variants(slot=traffic["slot"])
        prices = {model: price for model, (price, _) in effective_prices(registry.workspace).items()}
        query = AnswerQuery(slot=traffic["slot"], since=EPOCH, plan=plan_quality(config.metrics, f"slots.{traffic['slot']}.metrics"),
                            scoring=config.scoring, requests=f"seq = {int(traffic['seq'])}", duplicates=on_lake(db))
        scored = _scored(db, query, variant_prices(variants, prices), [m.key for m in config.metrics])
        stored = _stored(db, traffic)
        waiting = _waits_for_refresh(db, stored, traffic)
    answers = _answers(traffic, scored, stored.results, variants)
    for answer in answers:
        if answer.role == "challenger":
            answer.pair = _pair(answer, scored.get(answer.version_id), stored.pairs.get(answer.version_id),
                                stored.period, waiting, variants, traffic, query.plan.needs_label)
    champion = next((a for a in answers if a.role == "champion"), None)
    return RequestTrace(
        request_id=traffic["request_id"], client_request_id=traffic["client_request_id"], slot=traffic["slot"],
        received_at=traffic["received_at"], source=traffic["source"], request=json.loads(traffic["request_json"]),
        champion=champion, challengers=[a for a in answers if a.role != "champion"],
        outcomes=_outcomes(stored.outcomes, scored), period=stored.period)


@contextmanager
def _tracing(db: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The connection on one thread, with `SKIPPED_OPTIMIZERS` disabled as well, both restored
    afterwards (the caller holds the database's lock, so no other query runs meanwhile). A
    trace's queries read a few rows each: a second thread only hands them back and forth,
    which on a busy machine costs more than the reading (each switch waits for the scheduler)."""
    threads, previous = db.execute("SELECT current_setting('threads'), current_setting('disabled_optimizers')").fetchone()
    skipped = ",".join(filter(None, [previous, *SKIPPED_OPTIMIZERS]))
    db.execute(f"SET threads = 1; SET disabled_optimizers = {sql_literal(skipped)}")
    try:
        yield
    finally:
        db.execute(f"SET threads = {int(threads)}; SET disabled_optimizers = {sql_literal(previous)}")


def _find(db: duckdb.DuckDBPyConnection, key: str, slot: str | None) -> dict[str, Any]:
    """The traffic row of request id `key`, else of client request id `key` (which must name one request)."""
    rows = _rows(db, f"SELECT {_TRAFFIC} FROM traffic WHERE request_id = ?", [key])
    if not rows:
        in_slot = "" if slot is None else " AND slot = ?"
        rows = _rows(db, f"SELECT {_TRAFFIC} FROM traffic WHERE client_request_id = ?{in_slot} ORDER BY seq",
                     [key] + ([] if slot is None else [slot]))
    if slot is not None:
        rows = [row for row in rows if row["slot"] == slot]
    if not rows:
        where = f" in slot {slot!r}" if slot else ""
        raise NotFound(f"no request with request id or client request id {key!r}{where}")
    if len(rows) > 1:
        slots = ", ".join(sorted({row["slot"] for row in rows}))
        raise ConfigError(f"client request id {key!r} names {len(rows)} requests (slots: {slots}); "
                          "name one by its request id, or pass its slot")
    return rows[0]


def _rows(db: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any]) -> list[dict[str, Any]]:
    cursor = db.execute(sql, parameters)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _scored(db: duckdb.DuckDBPyConnection, query: AnswerQuery, prices: pl.DataFrame,
            names: list[str]) -> dict[str, dict[str, Any]]:
    """The request's scored answers by version (a control replay under `control:<version>`),
    each with its metrics' values: the plan's terms, evaluated on the answer itself. The
    variants' prices are literals in the query (`variant_prices_sql`): registering them as
    an Arrow table took longer than the rest of the query's execution."""
    metric_columns = "".join(
        f', CASE WHEN status = \'error\' THEN NULL ELSE {sql} END AS "metric:{i}", {when or "true"} AS "counted:{i}"'
        for i, (sql, _, when) in enumerate(query.plan.terms))
    rows = _rows(db, f"WITH variant_prices AS ({variant_prices_sql(prices)}) "
                     f"SELECT *{metric_columns} FROM ({query.answers_sql()})", [])
    live = next((row for row in rows if row["source"] == "live"), {})
    for row in rows:
        row["metrics"] = [MetricValue(metric=name, weight=weight, value=row[f"metric:{i}"], counted=row[f"counted:{i}"])
                          for i, (name, (_, weight, _)) in enumerate(zip(names, query.plan.terms))]
        row["champion_net"] = live.get("net")
    return {(f"control:{row['version_id']}" if row["source"] == "control" else row["version_id"]): row for row in rows}


def _answers(traffic: dict[str, Any], scored: dict[str, dict[str, Any]], results: list[dict[str, Any]],
             variants: list[Variant]) -> list[AnswerTrace]:
    """The champion's live answer, every replayed one (`results`, scored or not run), and a
    `missing` entry for each active challenger that has no call recorded."""
    live = scored.get(traffic["champion_version"], {})
    answers = [_answer(traffic["champion_version"], "champion", live or {
        "status": "ok" if traffic["status"] == 200 and traffic["error"] is None else "error"}, traffic["error"])]
    for result in results:
        role = "control" if result["role"] == "control" else "challenger"
        row = scored.get(f"control:{result['version_id']}" if role == "control" else result["version_id"])
        answers.append(_answer(result["version_id"], role, row or {"status": result["status"]}, result["error"]))
    answered = {r["version_id"] for r in results if r["role"] != "control"} | {traffic["champion_version"]}
    for variant in variants:
        if variant.version_id not in answered and variant.status == "active":
            answers.append(AnswerTrace(version_id=variant.version_id, role="challenger", status="missing",
                                       reason=_missing_reason(variant, traffic)))
    return answers


def _answer(version_id: str, role: str, row: dict[str, Any], reason: str | None) -> AnswerTrace:
    calls = row.get("tool_calls_json")
    return AnswerTrace(
        version_id=version_id, role=role, status=row["status"], reason=reason, output=row.get("output"),
        tool_calls=json.loads(calls) if calls else None, prompt_tokens=row.get("prompt_tokens"),
        completion_tokens=row.get("completion_tokens"), latency_ms=row.get("latency_ms"), metrics=row.get("metrics", []),
        quality=row.get("quality"), cost_usd=row.get("cost_usd"), latency_cost_usd=row.get("latency_cost"),
        net=row.get("net"))


def _missing_reason(variant: Variant, traffic: dict[str, Any]) -> str:
    if variant.created_at.replace(tzinfo=None) > traffic["received_at"]:
        return f"registered at {variant.created_at:%Y-%m-%d %H:%M:%S}, after the request: never replayed on it"
    return "no call recorded: not sampled, or still waiting in the replay queue"


@dataclass(frozen=True)
class _Stored:
    """The request's stored rows besides its answers, and where its slot's scoring stands."""

    results: list[dict[str, Any]]
    """Its replayed calls (version_id, role, status, error), by version."""
    pairs: dict[str, dict[str, Any]]
    """Its pairs by challenger (of the latest period when several)."""
    outcomes: list[dict[str, Any]]
    """Its labels and reactions, oldest first."""
    period: PeriodTrace | None
    """The slot's latest period started by the time the request was received."""
    watermark: tuple[int, int] | None
    """The slot's scoring watermark: (period_id, its mark's value: a `seq`, or on the lake a snapshot id)."""


def _stored(db: duckdb.DuckDBPyConnection, traffic: dict[str, Any]) -> _Stored:
    """The request's stored rows besides its answers, in one query (a round trip costs about
    as much as reading any of them): one aggregate row from each table, joined, rather than
    scalar subqueries, which DuckDB checks for a second row with a hash aggregate each."""
    seq, slot = int(traffic["seq"]), sql_literal(traffic["slot"])
    received = sql_literal(traffic["received_at"].isoformat(sep=" "))
    row = _rows(db, f"""
        SELECT * FROM
            (SELECT list({{'version_id': version_id, 'role': role, 'status': status, 'error': error}} ORDER BY version_id)
                    AS results FROM (SELECT * FROM shadow_results WHERE request_seq = {seq}{read_once('version_id')})),
            (SELECT list({{'period_id': period_id, 'version_id': version_id, 'd_net': d_net, 'd_quality': d_quality,
                          'd_cost': d_cost}} ORDER BY period_id) AS pairs FROM paired WHERE request_seq = {seq}),
            (SELECT list({{'kind': kind, 'value_json': value_json, 'received_at': received_at}} ORDER BY received_at, seq)
                    AS outcomes FROM outcomes WHERE request_seq = {seq}),
            (SELECT arg_max({{'period_id': period_id, 'champion_version': champion_version, 'started_at': started_at,
                             'reason': reason}}, period_id) AS period
             FROM evaluation_periods WHERE slot = {slot} AND started_at <= TIMESTAMP {received}),
            (SELECT any_value([period_id, seq]) AS watermark FROM scoring_watermarks WHERE slot = {slot})""", [])[0]
    return _Stored(results=row["results"] or [], pairs={pair["version_id"]: pair for pair in row["pairs"] or []},
                   outcomes=row["outcomes"] or [], period=PeriodTrace(**row["period"]) if row["period"] else None,
                   watermark=tuple(row["watermark"]) if row["watermark"] else None)


def _waits_for_refresh(db: duckdb.DuckDBPyConnection, stored: _Stored, traffic: dict[str, Any]) -> bool:
    """Whether the next refresh scores the request: its period is not scored yet, or a row of it
    was written after the slot's watermark (on the lake a snapshot: read off the change feed,
    since there a row's `seq` does not say when it was committed)."""
    if stored.watermark is None or stored.period is None or stored.watermark[0] != stored.period.period_id:
        return True
    now = latest(db)
    sql, params = request_touched(Mark(stored.watermark[1], now.snapshot), now, traffic["seq"], traffic["request_id"])
    return bool(db.execute(sql, params).fetchone()[0])


def _pair(answer: AnswerTrace, row: dict[str, Any] | None, pair: dict[str, Any] | None, period: PeriodTrace | None,
          waiting: bool, variants: list[Variant], traffic: dict[str, Any], needs_label: bool) -> PairTrace:
    """The pair a challenger's answer entered, or the first reason it did not."""
    if pair is not None:
        return PairTrace(entered=True, period_id=pair["period_id"], d_net=pair["d_net"], d_quality=pair["d_quality"],
                         d_cost=pair["d_cost"], reason=f"paired in evaluation period {pair['period_id']}")
    return PairTrace(entered=False, period_id=period.period_id if period else None,
                     reason=_unpaired_reason(answer, row, period, waiting, variants, traffic, needs_label))


def _unpaired_reason(answer: AnswerTrace, row: dict[str, Any] | None, period: PeriodTrace | None,
                     waiting: bool, variants: list[Variant], traffic: dict[str, Any], needs_label: bool) -> str:
    created = next((v.created_at.replace(tzinfo=None) for v in variants if v.version_id == answer.version_id), None)
    reasons = [
        (answer.status in ("not_run", "missing"), "no answer: nothing to pair"),
        (period is None or period.champion_version != traffic["champion_version"],
         "outside the current evaluation period: answered live by another champion"),
        (created is not None and created > traffic["received_at"], "received before the challenger's evidence window"),
        (row is None, "not scored: the variant has no price row"),
        (needs_label and not (row or {}).get("labelled"), "waits for the request's label"),
        (answer.cost_usd is None, "cost unknown: no price for the variant's model"),
        (answer.quality is None, "quality unknown: a metric's value is missing (judge not graded yet, or it failed)"),
        ((row or {}).get("champion_net") is None, "the champion's answer is not scored (no label, price or metric value)"),
        (waiting, "not scored yet: the next refresh pairs it"),
    ]
    return next((reason for applies, reason in reasons if applies), "complete, but not in the period's pairs")


def _outcomes(rows: list[dict[str, Any]], scored: dict[str, dict[str, Any]]) -> list[OutcomeTrace]:
    """The request's labels and reactions (`rows`, oldest first); the label the scores read is `used`."""
    used = next((row["label_json"] for row in scored.values() if row.get("label_json") is not None), None)
    labels = [row for row in rows if row["kind"] == "label"]
    latest = labels[-1] if labels else None
    return [OutcomeTrace(kind=row["kind"], value=json.loads(row["value_json"]), received_at=row["received_at"],
                         used=row is latest and used is not None and json.loads(used) == json.loads(row["value_json"]))
            for row in rows]
