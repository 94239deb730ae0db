"""Every answer of a slot with its quality, cost, latency cost and net value, as one SQL query.

An answer is the champion's live response (from `traffic`) or a replayed one (from
`shadow_results`: a challenger, or the champion replayed as a latency control). Per answer:

    quality  = weighted mean of the slot's metrics (0 when the upstream failed)
    cost_usd = tokens × the variant model's prices (cached and reasoning tokens at their own
               prices when known), or the per-call price of a python variant; NULL when unpriced
    net      = value_per_point × quality − cost_usd − latency_cost_per_s × max(0, latency_s − slo)

Calls shadowzoo never made (`not_run`) are not answers and are not scored. On the lake a
pair's result may be stored twice (two runners both held a lost lease): every reader reads
one row of it, `read_once`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from registry import Variant
from registry.db import sql_literal
from registry.workspace_config import Price, ScoringConfig
from scorer.changes import Mark
from scorer.quality_metrics import SCALAR_LABEL, QualityPlan, label_key_sql
from shadow.pricing import price_of

PRICE_COLUMNS = {
    "version_id": pl.Utf8, "input_price": pl.Float64, "output_price": pl.Float64, "cache_price": pl.Float64,
    "reasoning_price": pl.Float64, "call_price": pl.Float64, "priced": pl.Boolean,
}
_SQL_TYPES = {pl.Utf8: "VARCHAR", pl.Float64: "DOUBLE", pl.Boolean: "BOOLEAN"}


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


def variant_prices_sql(prices: pl.DataFrame) -> str:
    """The `variant_prices` relation as a query of literals (each value written as text and
    cast back to its column's type, so a float is the frame's own). A query over a handful
    of answers, a trace, plans these few rows faster than it registers an Arrow table."""
    types = [_SQL_TYPES[dtype] for dtype in PRICE_COLUMNS.values()]
    rows = [", ".join(f"CAST({'NULL' if value is None else sql_literal(str(value))} AS {type_})"
                      for value, type_ in zip(row, types)) for row in prices.iter_rows()]
    nothing = ", ".join(f"CAST(NULL AS {type_})" for type_ in types)
    values = ", ".join(f"({row})" for row in rows or [nothing])
    return f"SELECT * FROM (VALUES {values}) AS prices({', '.join(PRICE_COLUMNS)})" + ("" if rows else " WHERE false")


def read_once(key: str, alias: str = "") -> str:
    """SQL: a ` QUALIFY` keeping one of the `shadow_results` rows (named `alias`) of each pair (`key`:
    the columns naming it). An answer (ok or error) is read before a call not run: the runner that
    made the call did so under the same attempt policy as every other, so its answer is evidence
    whatever the other runner found (a budget spent, a pause, since lifted); then the first written."""
    row = f"{alias}." if alias else ""
    return f" QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {row}status = 'not_run', {row}seq) = 1"


@dataclass(frozen=True)
class AnswerQuery:
    """The parameters of one scoring query over a slot's answers."""

    slot: str
    since: datetime
    plan: QualityPlan
    scoring: ScoringConfig
    champion: str | None = None
    requests: str | None = None
    """A SQL condition on traffic's `seq` selecting the only requests to score (all when None)."""
    as_of: Mark | None = None
    """Score the answers as they stood at this mark (`scorer.changes`): later rows are left out."""
    duplicates: bool = False
    """Whether a (request, variant) may have several `shadow_results` rows (the lake has no keys:
    two runners that both held a lost lease both wrote it): `read_once`'s is read."""
    tags: str | None = None
    """A SQL condition on traffic's `tags` selecting a slice's requests (`scorer.slices.tags_sql`; all when None)."""

    def sql(self) -> str:
        """Every answer, scored: the champion's live ones, then the replayed ones (with the
        champion's scores of the same request). Over a relation named `variant_prices` (an
        Arrow table registered under that name, or a CTE of `variant_prices_sql`); parameters
        are inlined as literals."""
        return (f"WITH live AS MATERIALIZED ({self.live_sql()}) "
                f"SELECT * FROM live WHERE known_variant UNION ALL BY NAME SELECT * FROM ({self.replayed_sql('live')})")

    def answers_sql(self) -> str:
        """Every answer, scored exactly as `sql()` scores it, in one pass: the live and the
        replayed answers go through the scoring together, so the query is about a third of
        `sql()` to plan (on one request's rows planning is most of the time). The replayed
        rows do not carry the champion's scores (`champion_net`, …): read them off the live row."""
        answers = (f"WITH live AS MATERIALIZED ({self._live_answers()}) "
                   f"SELECT * FROM live UNION ALL BY NAME {self._replayed_answers('live', champion_scores=False)}")
        return f"SELECT * FROM ({self._scored(answers, 'LEFT JOIN')}) WHERE known_variant"

    def live_sql(self) -> str:
        """The champion's live answers (from `traffic`), scored, with their request's latest label.

        A request whose champion has no price row is kept (`known_variant` false), so its
        replayed answers can still join it."""
        return self._scored(self._live_answers(), "LEFT JOIN")

    def _live_answers(self) -> str:
        """The champion's live answers with their request's latest label, not yet scored."""
        return f"""
            WITH t AS (SELECT * FROM {self._table('traffic')} WHERE {self.traffic_filter()}),
            latest_labels AS (
                SELECT seq AS request_seq, arg_max(value_json, latest) AS label_json FROM (
                    SELECT request_seq AS seq, value_json, (epoch_us(received_at)::HUGEINT << 64) + outcomes.seq AS latest
                    FROM {self._table('outcomes')} WHERE kind = 'label' {self._written('outcomes.seq')})
                WHERE {self._labels_filter()}
                GROUP BY 1
            )
            SELECT *{self.plan.label_columns_sql()} FROM (
                SELECT t.request_id, t.seq AS request_seq, t.champion_version AS version_id, 'live' AS source,
                       CASE WHEN t.status = 200 AND t.error IS NULL THEN 'ok' ELSE 'error' END AS status,
                       t.output, t.tool_calls_json, t.prompt_tokens, t.completion_tokens, t.cached_tokens,
                       t.reasoning_tokens,
                       t.latency_ms, t.received_at, l.label_json,
                       {SCALAR_LABEL} AS label, l.label_json IS NOT NULL AS labelled
                FROM t LEFT JOIN latest_labels l ON l.request_seq = t.seq)"""

    def replayed_sql(self, live: str) -> str:
        """The replayed answers (challengers, and the champion replayed as a control) to the
        requests of `live` (the relation `live_sql` gives), scored; each row carries the label
        from its request and the champion's live scores (`champion_net`, …) for pairing."""
        return self._scored(self._replayed_answers(live, champion_scores=True), "JOIN")

    def _replayed_answers(self, live: str, champion_scores: bool) -> str:
        """The replayed answers to the requests of `live`, with their request's label (and,
        with `champion_scores`, the champion's scores from the scored `live`), not yet scored."""
        champion = ", l.net AS champion_net, l.quality AS champion_quality, l.cost_usd AS champion_cost" \
            if champion_scores else ""
        # among the requests just read, so its cost is the answers' and not the table's
        once = read_once("s.request_id, s.version_id", "s") if self.duplicates else ""
        return f"""
            SELECT s.request_id, s.request_seq, s.version_id,
                   CASE WHEN s.role = 'control' THEN 'control' ELSE 'shadow' END AS source, s.status, s.output,
                   s.tool_calls_json,
                   s.prompt_tokens, s.completion_tokens, s.cached_tokens, s.reasoning_tokens, s.latency_ms,
                   l.received_at, l.label_json{self.plan.label_column_refs('l')}, l.labelled{champion}
            FROM {self._table('shadow_results', 's')} JOIN {live} l ON l.request_seq = s.request_seq
            WHERE s.status IN ('ok', 'error') {self._written('s.seq')}{once}"""

    def traffic_filter(self) -> str:
        """The SQL condition on `traffic` selecting the query's requests (those written by `as_of`)."""
        condition = f"slot = {sql_literal(self.slot)} AND received_at >= TIMESTAMP {sql_literal(self.since.isoformat(sep=' '))}"
        if self.champion is not None:
            condition += f" AND champion_version = {sql_literal(self.champion)}"
        if self.requests is not None:
            condition += f" AND ({self.requests})"
        if self.tags is not None:
            condition += f" AND ({self.tags})"
        return condition + f" {self._written('seq')}"

    def _labels_filter(self) -> str:
        """The condition on labels (whose request's seq is `seq`) keeping the query's requests:
        `requests` itself when given, which reads no other request's labels; else a semi-join
        with the selected traffic."""
        if self.requests is not None:
            return self.requests
        return f"seq IN (SELECT seq FROM {self._table('traffic')} WHERE {self.traffic_filter()})"

    def _table(self, name: str, alias: str | None = None) -> str:
        """The table `name`, named `alias`, as of `as_of` (as it stands when scoring as things stand)."""
        if self.as_of is not None:
            return self.as_of.table(name, alias)
        return f"{name} AS {alias}" if alias else name

    def _written(self, seq: str) -> str:
        """The condition keeping rows written by `as_of` (none when scoring as things stand)."""
        return self.as_of.written(seq) if self.as_of is not None else ""

    def _scored(self, answers: str, price_join: str) -> str:
        """`answers` with quality, cost_usd, latency_cost and net; `price_join` says whether an
        answer of a variant without a `variant_prices` row is kept (LEFT JOIN) or left out."""
        row_joins = "".join(
            f" LEFT JOIN {self._table('metric_values', f'mv{i}')} ON mv{i}.request_id = a.request_id AND mv{i}.version_id = a.version_id"
            f" AND mv{i}.metric_key = {sql_literal(key)} AND mv{i}.label_key = {label_key_sql(metric, 'a.label_json')}"
            f" {self._written(f'mv{i}.seq')}"
            for i, (key, metric) in enumerate(self.plan.row_metrics.items())
        )
        row_columns = "".join(f', mv{i}.value AS "mv:{key}"' for i, key in enumerate(self.plan.row_metrics))
        failed = " OR ".join(f"mv{i}.error IS NOT NULL" for i in range(len(self.plan.row_metrics))) or "false"
        quality = self.plan.quality_sql() if not self.plan.empty else "NULL"
        s = self.scoring
        return f"""
        WITH joined AS (
            SELECT a.*, vp.* EXCLUDE (version_id), vp.version_id IS NOT NULL AS known_variant,
                   least(coalesce(a.cached_tokens, 0), coalesce(a.prompt_tokens, 0)) AS cached,
                   least(coalesce(a.reasoning_tokens, 0), coalesce(a.completion_tokens, 0)) AS reasoning,
                   ({failed}) AS metric_failed {row_columns}
            FROM ({answers}) a {price_join} variant_prices vp ON vp.version_id = a.version_id {row_joins}
        ),
        costed AS (
            SELECT *,
                   CASE WHEN call_price IS NOT NULL THEN call_price
                        WHEN NOT priced THEN NULL
                        ELSE (coalesce(prompt_tokens, 0) - cached) * input_price
                             + cached * coalesce(cache_price, input_price)
                             + (coalesce(completion_tokens, 0) - reasoning) * output_price
                             + reasoning * coalesce(reasoning_price, output_price) END AS cost_usd,
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
