"""The scorer: one refresh brings a slot's evidence up to date and snapshots its leaderboard.

A refresh (run by the daemon every few minutes, and by `shadowzoo leaderboard`):
  1. syncs prices into the registry and finds the slot's evaluation period (a new one
     when the champion, the metrics, the scoring settings or the prices changed);
  2. evaluates Python-side metrics (python, judge) on the answers that lack them and
     can enter the evidence: the period's (or a `--since` view's), never older ones, so
     a judge's budget is spent where it counts;
  3. in one transaction, appends the newly complete pairs, merges their moments, moves the
     watermark, builds the leaderboard and stores it as a snapshot (a slice view, `where`,
     stores none: see `scorer.slices`).
Because step 3 is atomic and keyed, a crash at any point re-does work without counting
any pair twice. Each snapshot holds the running intersection of the period's intervals,
and the next refresh intersects its own with the latest one's: the intersection lives in
stored rows, so it survives restarts, and a rebuild of the pairs (which leaves snapshots
alone) continues it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

import duckdb

from registry import ConfigError, Database, Registry, Variant, Workspace, utcnow
from registry.db import registered
from scorer.answer_query import AnswerQuery, variant_prices
from scorer.leaderboard_model import Comparison, EvidencePoint, JudgeState, Leaderboard
from scorer.answerstats import period_stats
from scorer.leaderboard_builder import BoardInputs, build_board, describe, not_run_counts
from registry.workspace_config import DistributedConfig, JudgeMetric, SlotConfig
from scorer.judge import judge_spend_today, run_judge
from scorer.quality_metrics import QualityPlan, plan_quality, sampled_sql
from scorer.changes import latest, on_lake
from scorer.pairing import load_moments, merge_moments, save_watermark, score_changes, watermark
from scorer.periods import Period, challenger_alphas, current_period, slot_settings, standing_period
from scorer.prices import sync_prices
from shadow.budget_slices import run_cap
from shadow.pauses import PauseSet, read_pauses
from shadow.pricing import price_of
from scorer.rowmetrics import evaluate_rows, evaluator_for, pending_answers, store_values
from scorer.slices import Where, slice_alphas, slice_moments, slice_of, tags_sql

EPOCH = datetime(1970, 1, 1)
log = logging.getLogger("shadowzoo.scorer")


class Scorer:
    """Scores the slots of one workspace against its registry."""

    def __init__(self, workspace: Workspace, registry: Registry) -> None:
        self.workspace = workspace
        self.registry = registry
        self.database: Database = registry.database

    def refresh(self, slot: str, since: datetime | None = None, where: Where | None = None) -> Leaderboard:
        """Bring the slot's evidence up to date; return (and store) its leaderboard.

        With `where` (a slice, see `scorer.slices`) or `since` (a window of the descriptive
        columns), the board is a view: it is returned, never stored, so the slot's stored board,
        its evidence history and the running intersection carry only the period's own looks.

        One refresh of a slot runs at a time (`Database.exclusive`: on the distributed backend,
        its scorer candidates on several hosts take turns)."""
        with self.database.exclusive(f"scorer {slot}"):
            return self._refresh(slot, since, where)

    def _refresh(self, slot: str, since: datetime | None, where: Where | None) -> Leaderboard:
        config = self.workspace.slot(slot)
        plan = plan_quality(config.metrics, f"slots.{slot}.metrics")
        champion = self.registry.champion(slot)
        challengers = [v for v in self.registry.variants(slot=slot, status="active")
                       if champion is None or v.version_id != champion.version_id]
        variants = ([champion] if champion else []) + challengers
        prices = sync_prices(self.database, self.workspace)
        period = self._period(slot, champion, challengers, prices)
        judges = self._fill_row_metrics(slot, plan, variants, prices, _evidence_query(
            slot, plan, config, period, since, duplicates=self._distributed is not None))
        price_table = variant_prices(variants, prices).to_arrow()

        def refresh_in(db: duckdb.DuckDBPyConnection) -> Leaderboard:
            with registered(db, "variant_prices", price_table):
                board = self._refresh_in(db, slot, plan, period, champion, challengers, since, where or {})
            board = board.model_copy(update={"judges": judges})
            if not where and since is None:
                self.database.reserve("snapshot_id", 1)
                db.execute("INSERT INTO leaderboard_snapshots (slot, period_id, taken_at, board_json) VALUES (?, ?, ?, ?)",
                           [slot, board.period_id, board.generated_at, board.model_dump_json()])
            return board

        return self.database.committed(refresh_in)

    def _period(self, slot: str, champion: Variant | None, challengers: list[Variant], prices: dict) -> Period | None:
        """The slot's current evaluation period (None without a champion), started anew when it changed."""
        if champion is None:
            return None
        model_prices = {m: price.model_dump() for v in [champion, *challengers]
                        if (m := v.config.get("model")) and (price := price_of(prices, m))}
        since_promotion = self.registry.champion_since(slot) or utcnow()
        settings = slot_settings(self.workspace.slot(slot), model_prices)
        with self.database.reading() as db:  # most refreshes keep the period: they need not commit for it
            standing = standing_period(db, slot, champion.version_id, settings)
        return standing or self.database.committed(
            lambda db: current_period(db, slot, champion.version_id, since_promotion, settings, self.database.reserve))

    def history(self, slot: str, limit: int = 200) -> list[EvidencePoint]:
        """How each challenger's evidence grew over the current period's snapshots, oldest first."""
        with self.database.reading() as db:
            rows = db.execute(
                "SELECT board_json FROM leaderboard_snapshots WHERE slot = ? AND period_id = "
                "(SELECT max(period_id) FROM evaluation_periods WHERE slot = ?) ORDER BY snapshot_id DESC LIMIT ?",
                [slot, slot, limit]).fetchall()
        points = []
        for (board_json,) in reversed(rows):
            board = Leaderboard.model_validate_json(board_json)
            points += [EvidencePoint(taken_at=board.generated_at, version_id=row.version_id, pairs=row.comparison.pairs,
                                     net=row.comparison.net)
                       for row in board.rows if row.comparison is not None and row.comparison.pairs > 0]
        return points

    def _refresh_in(self, db: duckdb.DuckDBPyConnection, slot: str, plan: QualityPlan, period: Period | None,
                    champion: Variant | None, challengers: list[Variant], since: datetime | None,
                    where: Where) -> Leaderboard:
        config = self.workspace.slot(slot)
        alphas, moments, previous = {}, {}, {}
        tags = tags_sql(where, "t.tags")
        part = slice_of(db, period, where, config.scoring.alpha) if where else None
        if period is not None:
            alphas = challenger_alphas(db, period, challengers, config.scoring.alpha)
            self._append_pairs(db, slot, plan, period, challengers)
            if part is not None:
                alphas = slice_alphas(alphas, config.scoring.alpha, part)
                stored = slice_moments(db, period.period_id, where)
            else:
                stored = load_moments(db, period.period_id)
                previous = _latest_comparisons(db, period)
            moments = {v.version_id: stored.get(v.version_id, {}) for v in challengers}
        window = since or (period.started_at if period else EPOCH)
        if period is not None and since is None and not where:
            stats = period_stats(db, period.period_id)
        else:
            # a view: the period's requests (its champion's) of the slice, or every request since `since`
            champion_only = period.champion_version if period is not None and since is None else None
            stats = describe(db, AnswerQuery(slot=slot, since=window, plan=plan, scoring=config.scoring,
                                             champion=champion_only, tags=tags_sql(where) if where else None,
                                             duplicates=on_lake(db)))
        return build_board(BoardInputs(
            slot=slot, scoring=config.scoring, period=period, champion=champion, challengers=challengers,
            alphas=alphas, moments=moments, stats=stats, not_run=not_run_counts(db, slot, window, tags),
            paused=self._paused(db, challengers), unpriced=_unpriced(db),
            control_rate=config.shadow.champion_control_rate, previous=previous, since=since,
            eval_spend_usd=_eval_spend(db, slot, window, tags), reactions=_reactions(db, slot, window, tags), slice=part,
        ))

    def _append_pairs(self, db: duckdb.DuckDBPyConnection, slot: str, plan: QualityPlan, period: Period,
                      challengers: list[Variant]) -> None:
        """Score what changed since the watermark, then append and fold in the new pairs."""
        newest = latest(db)
        seen = watermark(db, period, newest)
        if newest == seen:
            return
        query = AnswerQuery(slot=slot, since=period.started_at, plan=plan, scoring=self.workspace.slot(slot).scoring,
                            champion=period.champion_version, duplicates=on_lake(db))
        windows = {} if plan.empty else {v.version_id: max(period.started_at, v.created_at) for v in challengers}
        merge_moments(db, period, score_changes(db, period, query, seen, newest, windows))
        save_watermark(db, period, newest)

    def _fill_row_metrics(self, slot: str, plan: QualityPlan, variants: list[Variant], prices: dict,
                          query: AnswerQuery) -> list[JudgeState]:
        """Evaluate Python-side metrics on the answers of `query` that lack them (the database
        lock is not held during judge calls); returns where each judge stands."""
        price_table = variant_prices(variants, prices).to_arrow()
        judges = []
        for key, metric in plan.row_metrics.items():
            judged = isinstance(metric, JudgeMetric)
            sample = sampled_sql(key, metric.sample_rate, "a.request_id") if judged else None
            with self.database.reading() as db, registered(db, "variant_prices", price_table):
                rows = pending_answers(self.database, query, key, metric, sample)
            if judged:
                judges.append(self._judge(slot, key, metric, rows, prices))
                continue
            evaluate = evaluator_for(metric, f"slots.{slot}.metrics", self.workspace.python_roots)
            if evaluate is None:
                raise ConfigError(f"slots.{slot}.metrics: {metric.type} metrics are not evaluated by this scorer")
            store_values(self.database, evaluate_rows(rows, key, evaluate))
        return judges

    def _judge(self, slot: str, key: str, metric: JudgeMetric, rows, prices: dict) -> JudgeState:
        """Grade sampled answers; a run that could call nothing (no price, no provider) stores nothing,
        so the same answers are judged once the configuration is fixed."""
        spent = judge_spend_today(self.database, key)
        state = JudgeState(metric_key=key, spent_today_usd=spent, daily_budget_usd=metric.daily_budget_usd,
                           unjudged=rows.height)
        if rows.is_empty():
            return state
        with run_cap(self._distributed, f"judge/{key}", metric.daily_budget_usd, spent) as cap:
            run = run_judge(self.workspace.config.providers, prices, metric, key, rows, cap)
        if run.calls == 0 and run.errors:
            log.warning("slots.%s judge %s: %s", slot, key, run.values["error"][0])
            return state
        if run.skipped_for_budget:
            log.info("slots.%s judge %s: daily budget reached; %d answers wait for tomorrow", slot, key, run.skipped_for_budget)
        store_values(self.database, run.values)
        return state.model_copy(update={"spent_today_usd": spent + run.spent_usd,
                                        "unjudged": rows.height - run.values.height})

    @property
    def _distributed(self) -> DistributedConfig | None:
        """The control plane holding the judges' shared budgets, on `backend: distributed`."""
        config = self.workspace.config
        return config.distributed if config.backend == "distributed" else None

    def _paused(self, db: duckdb.DuckDBPyConnection, challengers: list[Variant]) -> set[str]:
        return PauseSet(read_pauses(db)).paused(v.version_id for v in challengers)


def _evidence_query(slot: str, plan: QualityPlan, config: SlotConfig, period: Period | None, since: datetime | None,
                    duplicates: bool) -> AnswerQuery:
    """The answers that can enter the evidence: the current period's (its champion's requests),
    or, for a `--since` view, every answer since then as well (`duplicates`: on the lake, where
    a result may be stored twice, each is read once, as the scoring reads it)."""
    if period is None:
        return AnswerQuery(slot=slot, since=since or EPOCH, plan=plan, scoring=config.scoring, duplicates=duplicates)
    if since is not None and since < period.started_at:
        return AnswerQuery(slot=slot, since=since, plan=plan, scoring=config.scoring, duplicates=duplicates)
    return AnswerQuery(slot=slot, since=period.started_at, plan=plan, scoring=config.scoring,
                       champion=period.champion_version, duplicates=duplicates)


def _latest_comparisons(db: duckdb.DuckDBPyConnection, period: Period) -> dict[str, Comparison]:
    """Each challenger's comparison on the period's latest snapshot (none in a new period)."""
    row = db.execute(
        "SELECT board_json FROM leaderboard_snapshots WHERE snapshot_id = (SELECT max(snapshot_id) "
        "FROM leaderboard_snapshots WHERE slot = ? AND period_id = ?)", [period.slot, period.period_id]).fetchone()
    if row is None:
        return {}
    board = Leaderboard.model_validate_json(row[0])
    return {r.version_id: r.comparison for r in board.rows if r.comparison is not None}


def _unpriced(db: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in db.execute("SELECT version_id FROM variant_prices WHERE NOT priced").fetchall()}


def _eval_spend(db: duckdb.DuckDBPyConnection, slot: str, since: datetime, tags: str) -> float:
    row = db.execute("SELECT sum(m.cost_usd) FROM metric_values m JOIN traffic t USING (request_id) "
                     f"WHERE t.slot = ? AND m.computed_at >= ? AND {tags}", [slot, since]).fetchone()
    return float(row[0] or 0.0)


def _reactions(db: duckdb.DuckDBPyConnection, slot: str, since: datetime, tags: str) -> dict[str, float]:
    """Count and mean of numeric reactions to the champion's answers (shown, never paired)."""
    count, mean = db.execute(
        "SELECT count(*), avg(TRY_CAST(json_extract_string(o.value_json, '$') AS DOUBLE)) FROM outcomes o "
        f"JOIN traffic t ON t.request_id = o.request_id WHERE o.kind = 'reaction' AND t.slot = ? AND t.received_at >= ? "
        f"AND {tags}",
        [slot, since]).fetchone()
    return {"count": float(count), "mean": float(mean)} if count else {}


def snapshot_json(board: Leaderboard) -> dict:
    """The board as plain JSON, for audit evidence."""
    return json.loads(board.model_dump_json())
