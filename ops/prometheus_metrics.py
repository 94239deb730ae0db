"""The daemon's Prometheus metrics, derived from the database it owns.

Counters and histograms of traffic, shadow calls, tokens and cost are fed from rows as
they land (everything written since the last count: `seq` above the last one counted in a
DuckDB file, the change feed since the last snapshot counted on the lake), so they agree
with what the leaderboard reads. Gauges come from each scoring run; a retired variant's series are
removed. Labels stay bounded: slots and versions come from the registry, outcomes and
roles from short fixed lists. (Gateway workers keep their own per-slot series; see
`shadow.gateway.prometheus_metrics`.)
"""

from __future__ import annotations

import json
import logging
from typing import Iterable, Mapping

import duckdb
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from registry.workspace_config import Price
from scorer.changes import Mark, latest, still_readable, written_after
from scorer.leaderboard_model import Leaderboard, Status
from shadow.pricing import cost_usd

log = logging.getLogger("shadowzoo.daemon")

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class DaemonMetrics:
    """All daemon series, on a registry of their own (so tests can run several daemons)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.upstream_latency = Histogram("shadowzoo_upstream_latency_seconds", "Upstream latency of answers.",
                                          ["slot", "version", "role"], buckets=LATENCY_BUCKETS, registry=r)
        self.shadow_calls = Counter("shadowzoo_shadow_calls_total", "Shadow calls by outcome.",
                                    ["slot", "version", "outcome"], registry=r)
        self.queue_depth = Gauge("shadowzoo_shadow_queue_depth", "Shadow work waiting to run.", registry=r)
        self.dropped = Counter("shadowzoo_shadow_dropped_total", "Shadow work not done, by reason.",
                               ["slot", "reason"], registry=r)
        self.tokens = Counter("shadowzoo_tokens_total", "Tokens by direction.", ["slot", "version", "direction"], registry=r)
        self.cost = Counter("shadowzoo_cost_usd_total", "Spend in USD.", ["slot", "version", "role"], registry=r)
        self.eval_cost = Counter("shadowzoo_eval_cost_usd_total", "Evaluation (judge) spend in USD.", registry=r)
        self.net_per_1k = Gauge("shadowzoo_net_value_per_1k_usd", "Net value per 1k requests.", ["slot", "version"], registry=r)
        self.delta_lower = Gauge("shadowzoo_net_delta_lower_usd", "Lower bound of the paired net difference per request.",
                                 ["slot", "version"], registry=r)
        self.ready = Gauge("shadowzoo_promotion_ready", "1 when a challenger is ready to promote.", ["slot", "version"], registry=r)
        self.champion = Gauge("shadowzoo_champion_info", "1 for each slot's champion.", ["slot", "version"], registry=r)
        self.budget_left = Gauge("shadowzoo_budget_remaining_usd", "Shadow budget left today.", ["slot"], registry=r)
        self.job_runs = Counter("shadowzoo_job_runs_total", "Daemon job runs.", ["job", "outcome"], registry=r)
        self.job_duration = Histogram("shadowzoo_job_duration_seconds", "Daemon job durations.", ["job"], registry=r)
        self.unjudged = Gauge("shadowzoo_judge_unjudged_answers", "Sampled answers of the current evidence waiting "
                              "for a judge's verdict.", ["slot", "metric"], registry=r)
        self.judge_budget_reached = Gauge("shadowzoo_judge_budget_reached", "1 when a judge's daily budget is spent.",
                                          ["slot", "metric"], registry=r)
        self.spool_lag = Gauge("shadowzoo_spool_lag_seconds", "Age of the oldest spool segment not yet ingested.", registry=r)
        self.quarantined = Counter("shadowzoo_spool_quarantined_records_total",
                                   "Spool records ingest could not store, moved to the spool's quarantine/.", registry=r)
        self._boards: dict[str, set[str]] = {}

    def count_new_rows(self, db: duckdb.DuckDBPyConnection, since: Mark | None,
                       champion_prices: Mapping[str, Price | None]) -> Mark:
        """Feed counters and histograms from the rows written after `since` (every row when None);
        return the mark they are counted up to. On the lake rows commit out of `seq` order (several
        writers): what is new there is read off the change feed (`scorer.changes`), each row once.

        The champion's live spend is priced here (`champion_prices` by version); replayed
        answers carry the cost the runner stored.
        """
        now = latest(db)
        if now == since:
            return now
        if since is not None and still_readable(db, since) is None:
            log.warning("the counters skip what was written while this daemon was paused: the lake's "
                        "upkeep expired the snapshots after the last count")
            return now
        for slot, version, latency_ms, prompt, completion, usage_json in db.execute(
            "SELECT slot, champion_version, latency_ms, prompt_tokens, completion_tokens, usage_json "
            f"FROM {written_after('traffic', since, now)} WHERE champion_version IS NOT NULL").fetchall():
            cost = cost_usd(champion_prices.get(version), json.loads(usage_json) if usage_json else None)
            self._answer(slot, version, "champion", latency_ms, prompt, completion, cost)
        for slot, version, role, status, latency_ms, prompt, completion, cost in db.execute(
            "SELECT t.slot, s.version_id, s.role, s.status, s.latency_ms, s.prompt_tokens, s.completion_tokens, "
            f"s.cost_usd FROM {written_after('shadow_results', since, now)} s JOIN traffic t USING (request_id)"
                ).fetchall():
            self.shadow_calls.labels(slot, version, status).inc()
            if status != "not_run":
                self._answer(slot, version, role, latency_ms, prompt, completion, cost)
        for (cost,) in db.execute(f"SELECT cost_usd FROM {written_after('metric_values', since, now)}").fetchall():
            self.eval_cost.inc(cost or 0.0)
        return now

    def _answer(self, slot: str, version: str, role: str, latency_ms: float | None, prompt: int | None,
                completion: int | None, cost: float | None) -> None:
        if latency_ms is not None:
            self.upstream_latency.labels(slot, version, role).observe(latency_ms / 1000)
        self.tokens.labels(slot, version, "input").inc(prompt or 0)
        self.tokens.labels(slot, version, "output").inc(completion or 0)
        if cost:
            self.cost.labels(slot, version, role).inc(cost)

    def show_board(self, board: Leaderboard) -> None:
        """Set the per-version gauges from a leaderboard; drop series of versions no longer on it."""
        current = {row.version_id for row in board.rows}
        for gone in self._boards.get(board.slot, set()) - current:
            for gauge in (self.net_per_1k, self.delta_lower, self.ready, self.champion):
                _remove(gauge, board.slot, gone)
        self._boards[board.slot] = current
        for judge in board.judges:
            self.unjudged.labels(board.slot, judge.metric_key).set(judge.unjudged)
            self.judge_budget_reached.labels(board.slot, judge.metric_key).set(1 if judge.budget_reached else 0)
        for row in board.rows:
            if row.net_per_1k_usd is not None:
                self.net_per_1k.labels(board.slot, row.version_id).set(row.net_per_1k_usd)
            lower = row.comparison.net.lower if row.comparison else None
            if lower is not None:
                self.delta_lower.labels(board.slot, row.version_id).set(lower)
            if row.role == "challenger":
                promotable = row.status == Status.READY and row.promotable
                self.ready.labels(board.slot, row.version_id).set(1 if promotable else 0)
            if row.role == "champion":
                self.champion.labels(board.slot, row.version_id).set(1)
            else:
                _remove(self.champion, board.slot, row.version_id)

    def show_budgets(self, remaining: Iterable[tuple[str, float]]) -> None:
        for slot, left in remaining:
            self.budget_left.labels(slot).set(left)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
