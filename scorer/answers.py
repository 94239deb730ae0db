"""Every answer of a slot with its quality, cost, latency cost and net value, as one SQL query.

An answer is the champion's live response (from `traffic`) or a replayed one (from
`shadow_results`: a challenger, or the champion replayed as a latency control). Per answer:

    quality  = weighted mean of the slot's metrics (0 when the upstream failed)
    cost_usd = tokens × the variant model's prices (cached and reasoning tokens at their own
               prices when known), or the per-call price of a python variant; NULL when unpriced
    net      = value_per_point × quality − cost_usd − latency_cost_per_s × max(0, latency_s − slo)

Calls shadowzoo never made (`not_run`) are not answers and are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from registry import Variant
from registry.config import Price, ScoringConfig
from scorer.metrics import SCALAR_LABEL, QualityPlan, sql_literal
from shadow.pricing import price_of

# The usage fields priced apart, read with one parse of each answer's usage JSON.
USAGE_DETAILS = ("json_extract_string(usage_json, "
                 "['$.prompt_tokens_details.cached_tokens', '$.completion_tokens_details.reasoning_tokens'])")

PRICE_COLUMNS = {
    "version_id": pl.Utf8, "input_price": pl.Float64, "output_price": pl.Float64, "cache_price": pl.Float64,
    "reasoning_price": pl.Float64, "call_price": pl.Float64, "priced": pl.Boolean,
}


def variant_prices(variants: list[Variant], prices: dict[str, Price]) -> pl.DataFrame:
    """One row of prices per variant; `priced` is false when its cost cannot be known."""
    rows = []
    for variant in variants:
        row = {"version_id": variant.version_id, "input_price": None, "output_price": None, "cache_price": None,
               "reasoning_price": None, "call_price": None, "priced": False}
        if variant.kind == "python":
            row["call_price"] = variant.config.get("price_per_call_usd")
            row["priced"] = row["call_price"] is not None
        elif (price := price_of(prices, variant.config.get("model"))) is not None:
            row.update(input_price=price.input_cost_per_token, output_price=price.output_cost_per_token,
                       cache_price=price.cache_read_input_token_cost,
                       reasoning_price=price.output_cost_per_reasoning_token, priced=True)
        rows.append(row)
    return pl.DataFrame(rows, schema=PRICE_COLUMNS)


@dataclass(frozen=True)
class AnswerQuery:
    """The parameters of one scoring query over a slot's answers."""

    slot: str
    since: datetime
    plan: QualityPlan
    scoring: ScoringConfig
    champion: str | None = None
    candidates: str | None = None
    """SQL selecting the `request_seq` of the only requests to score (all when None)."""

    def sql(self) -> str:
        """SQL over the registered `variant_prices` relation; parameters are inlined as literals."""
        traffic_filter = f"slot = {sql_literal(self.slot)} AND received_at >= TIMESTAMP {sql_literal(self.since.isoformat(sep=' '))}"
        if self.champion is not None:
            traffic_filter += f" AND champion_version = {sql_literal(self.champion)}"
        if self.candidates is not None:
            traffic_filter += f" AND seq IN ({self.candidates})"
        row_joins = "".join(
            f" LEFT JOIN metric_values mv{i} ON mv{i}.request_id = a.request_id AND mv{i}.version_id = a.version_id"
            f" AND mv{i}.metric_key = {sql_literal(key)}"
            for i, key in enumerate(self.plan.row_metrics)
        )
        row_columns = "".join(f', mv{i}.value AS "mv:{key}"'
                              for i, key in enumerate(self.plan.row_metrics))
        failed = " OR ".join(f"mv{i}.error IS NOT NULL" for i in range(len(self.plan.row_metrics))) or "false"
        quality = self.plan.quality_sql() if not self.plan.empty else "NULL"
        s = self.scoring
        return f"""
        WITH t AS (
            SELECT request_id, seq AS request_seq, received_at, champion_version, status AS http_status, error, output,
                   prompt_tokens, completion_tokens, usage_json, latency_ms
            FROM traffic WHERE {traffic_filter}
        ),
        latest_labels AS (
            SELECT request_seq, arg_max(value_json, received_at) AS label_json
            FROM outcomes WHERE kind = 'label' AND request_seq IN (SELECT request_seq FROM t) GROUP BY request_seq
        ),
        labels AS (SELECT request_seq, label_json, {SCALAR_LABEL} AS label FROM latest_labels),
        answers AS (
            SELECT request_id, request_seq, champion_version AS version_id, 'live' AS source,
                   CASE WHEN http_status = 200 AND error IS NULL THEN 'ok' ELSE 'error' END AS status,
                   output, prompt_tokens, completion_tokens, {USAGE_DETAILS} AS usage_details, latency_ms, received_at
            FROM t
            UNION ALL
            SELECT t.request_id, t.request_seq, s.version_id, CASE WHEN s.role = 'control' THEN 'control' ELSE 'shadow' END,
                   s.status, s.output, s.prompt_tokens, s.completion_tokens, {USAGE_DETAILS.replace("usage_json", "s.usage_json")},
                   s.latency_ms, t.received_at
            FROM shadow_results s JOIN t ON s.request_seq = t.request_seq WHERE s.status IN ('ok', 'error')
        ),
        joined AS (
            SELECT a.*, l.label_json, l.label, vp.* EXCLUDE (version_id),
                   coalesce(TRY_CAST(a.usage_details[1] AS BIGINT), 0) AS cached_tokens,
                   coalesce(TRY_CAST(a.usage_details[2] AS BIGINT), 0) AS reasoning_tokens,
                   ({failed}) AS metric_failed {row_columns}
            FROM answers a JOIN variant_prices vp ON vp.version_id = a.version_id
            LEFT JOIN labels l ON l.request_seq = a.request_seq {row_joins}
        ),
        costed AS (
            SELECT *,
                   CASE WHEN call_price IS NOT NULL THEN call_price
                        WHEN NOT priced THEN NULL
                        ELSE (coalesce(prompt_tokens, 0) - cached_tokens) * input_price
                             + cached_tokens * coalesce(cache_price, input_price)
                             + (coalesce(completion_tokens, 0) - reasoning_tokens) * output_price
                             + reasoning_tokens * coalesce(reasoning_price, output_price) END AS cost_usd,
                   {s.latency_cost_per_s} * greatest(0, coalesce(latency_ms, 0) / 1000.0 - {s.latency_slo_s}) AS latency_cost
            FROM joined
        ),
        scored AS (
            -- an error scores 0, else the metrics decide (NULL when they cannot); written without
            -- CASE around the metrics, which DuckDB evaluates several times slower
            SELECT *, coalesce({quality}, CASE WHEN status = 'error' THEN 0.0 END)
                      * CAST(status <> 'error' AS DOUBLE) AS quality FROM costed
        )
        SELECT *, {s.value_per_point} * quality - cost_usd - latency_cost AS net FROM scored
        """
