"""The net-of-cost scorer on a real DuckDB file: pairs, periods, verdicts, guardrails, bad input."""

from __future__ import annotations

import json
import random
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
from pydantic import TypeAdapter

import registry.db as registry_db
from registry import ConfigError, Refused, Registry, load_workspace, utcnow
from registry.migrations import MIGRATIONS
from registry.workspace_config import Metric
from scorer.leaderboard_model import Status
from scorer import pairing
from scorer.pairing import load_moments
from scorer.sequential import confidence_interval
from scorer.quality_metrics import plan_quality, score_rows
from scorer.policy import promotion_evidence
from scorer.report import render_html, render_markdown
from scorer.service import Scorer
from shadow.pricing import price_of, workspace_prices
from tests.scoring_data import Answers, add_rules_variant, demo_registry, simulate, stored_evidence
from tests.servers import edit_config
from zoo import load_zoo, register_specs

SLOT = "support-triage"


def _board(registry: Registry):
    return Scorer(registry.workspace, registry).refresh(SLOT)


def _row(board, version_id):
    return next(r for r in board.rows if r.version_id == version_id)


@pytest.fixture
def scored(workspace_dir: Path):
    registry, ids = demo_registry(workspace_dir)
    yield registry, ids
    registry.close()


def test_a_clearly_better_challenger_becomes_ready_and_is_recommended(scored) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95, ids["cheap-mini"]: 0.7}, n=400)
    answers.write(registry)
    board = _board(registry)
    careful = _row(board, ids["careful-large"])
    assert careful.status == Status.READY and careful.comparison.pairs == 400
    assert careful.comparison.net.lower > 0
    assert board.recommendation == f"shadowzoo promote {SLOT} {ids['careful-large']}"
    assert board.rows[0].version_id == ids["baseline"] and board.rows[0].role == "champion"


def test_a_challenger_better_on_quality_can_lose_once_cost_counts(workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir, value_per_point=0.0005)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.8}, n=300, champion_accuracy=0.7)
    for row in answers.results:
        row["prompt_tokens"] = 2000  # a much longer skill on every call
    answers.write(registry)
    careful = _row(_board(registry), ids["careful-large"])
    assert careful.comparison.quality.mean > 0
    assert careful.comparison.net.upper < 0 and careful.status == Status.WORSE
    registry.close()


def test_each_pair_enters_the_evidence_once_across_refreshes(scored) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.9}, n=150)
    answers.write(registry)
    first = _row(_board(registry), ids["careful-large"]).comparison
    again = _row(_board(registry), ids["careful-large"]).comparison
    assert first.pairs == again.pairs == 150 and first.net == again.net
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.9}, n=50, start=150, seed=2)
    answers.write(registry)
    assert _row(_board(registry), ids["careful-large"]).comparison.pairs == 200


def test_the_evidence_stays_the_mean_of_the_stored_pairs_across_rebuild_and_refreshes(scored) -> None:
    registry, ids = scored
    challengers = {ids["careful-large"]: 0.9, ids["cheap-mini"]: 0.6}
    answers = Answers()
    simulate(answers, ids["baseline"], challengers, n=60)
    answers.request("late", ids["baseline"], "billing")  # labelled only after the first refresh
    for version_id in challengers:
        answers.result("late", version_id, "billing")
    answers.write(registry)
    _board(registry)
    simulate(answers, ids["baseline"], challengers, n=40, start=60, seed=3)
    answers.label("late", "billing")
    answers.write(registry)
    board = _board(registry)
    paired = registry.database.connection.execute(
        "SELECT version_id, count(*), avg(d_net), avg(d_quality), avg(d_cost) FROM paired WHERE period_id = ? GROUP BY 1",
        [board.period_id]).fetchall()
    assert {version_id for version_id, *_ in paired} == set(challengers)
    for version_id, n, net, quality, cost in paired:
        comparison = _row(board, version_id).comparison
        assert comparison.pairs == n == 101
        assert comparison.net.mean == pytest.approx(net, abs=1e-12)
        assert comparison.quality.mean == pytest.approx(quality, abs=1e-12)
        assert comparison.cost.mean == pytest.approx(cost, abs=1e-15)


def _this_look(registry: Registry, board, version_id: str) -> tuple[float, float]:
    """The net interval of this look alone, from the period's stored moments (no intersection)."""
    comparison, scoring = _row(board, version_id).comparison, registry.workspace.slot(SLOT).scoring
    with registry.database.reading() as db:
        moments = load_moments(db, board.period_id)[version_id]["net"]
    floor = scoring.variance_floor_fraction * scoring.value_per_point ** 2
    return confidence_interval(moments, comparison.alpha, scoring.min_samples, floor)


def test_a_ready_verdict_stays_within_its_period_across_looks_restarts_and_rebuilds(workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir)
    careful = ids["careful-large"]
    answers = Answers()
    simulate(answers, ids["baseline"], {careful: 0.8}, n=150, seed=5)
    answers.write(registry)
    first = _row(_board(registry), careful)
    assert first.status == Status.READY
    simulate(answers, ids["baseline"], {careful: 0.5}, n=60, start=150, seed=6)  # a bad stretch
    answers.write(registry)
    board = _board(registry)
    assert _this_look(registry, board, careful)[0] < 0, "this look alone would not say ready"
    second = _row(board, careful)
    assert second.status == Status.READY and second.comparison.pairs == 210
    assert second.comparison.net.lower == first.comparison.net.lower
    assert second.comparison.net.upper == pytest.approx(min(first.comparison.net.upper,
                                                            _this_look(registry, board, careful)[1]))
    registry.close()
    registry = Registry.open(load_workspace(workspace_dir))  # the daemon restarts
    assert _row(_board(registry), careful).comparison.net == second.comparison.net
    with registry.database.transaction() as db:  # a rebuild of the pairs from scratch
        for table in ("paired", "answer_stats", "pair_moments", "scoring_watermarks"):
            db.execute(f"DELETE FROM {table}")
    rebuilt = _row(_board(registry), careful)
    assert rebuilt.status == Status.READY and rebuilt.comparison.pairs == 210
    assert rebuilt.comparison.net.lower == second.comparison.net.lower
    assert rebuilt.comparison.net.upper == pytest.approx(second.comparison.net.upper, rel=1e-9)
    edit_config(workspace_dir, lambda c: c["slots"][SLOT]["scoring"].update(min_effect_usd=0.0001))
    registry.workspace = load_workspace(workspace_dir)
    _board(registry)  # opens a new period
    simulate(answers, ids["baseline"], {careful: 0.5}, n=120, start=210, seed=7)
    answers.write(registry)
    fresh = _board(registry)  # its interval is its own
    assert fresh.period_id == board.period_id + 1 and _row(fresh, careful).comparison.pairs == 120
    assert (_row(fresh, careful).comparison.net.lower, _row(fresh, careful).comparison.net.upper) == pytest.approx(
        _this_look(registry, fresh, careful))
    registry.close()


def _late_arrivals(ids: dict[str, str], requests: int, batches: int, seed: int) -> list[Answers]:
    """Labelled requests whose rows arrive over `batches` writes: each request's label and
    replayed answers (right, wrong, failed, or the champion replayed as a control) come with
    it or in a later batch."""
    rng = random.Random(seed)
    arrivals = [Answers() for _ in range(batches)]

    def later(first: int) -> Answers:
        return arrivals[rng.randrange(first, batches)]

    for i in range(requests):
        request_id, truth = f"r{i:06d}", rng.choice(["billing", "technical", "account"])
        first = rng.randrange(batches)
        arrivals[first].request(request_id, ids["baseline"], rng.choice([truth, "other"]),
                                latency_ms=rng.uniform(50, 2000))
        later(first).label(request_id, truth)
        for version_id in (ids["careful-large"], ids["cheap-mini"]):
            status = rng.choice(["ok", "ok", "ok", "error"])
            later(first).result(request_id, version_id, rng.choice([truth, "other"]) if status == "ok" else None,
                                status=status, latency_ms=rng.uniform(50, 2000))
        if rng.random() < 0.3:
            later(first).result(request_id, ids["baseline"], truth, role="control", latency_ms=rng.uniform(50, 2000))
    return arrivals


def test_refreshing_after_every_write_leaves_the_evidence_one_rebuild_would(scored) -> None:
    registry, ids = scored
    for answers in _late_arrivals(ids, requests=120, batches=6, seed=11):
        answers.write(registry)
        board = _board(registry)
    incremental = stored_evidence(registry, board.period_id)
    rebuilt = stored_evidence(registry, _rebuild(registry).period_id)
    assert len(incremental["paired"]) > 100
    _assert_same_evidence(incremental, rebuilt)


def test_a_long_history_s_first_refresh_stays_within_the_daemon_s_memory_limit(scored, monkeypatch) -> None:
    """A period's first refresh scores its requests chunk by chunk, in one transaction: it must
    hold one chunk's answers at a time (10 M results in 2 GB failed when every chunk's were kept),
    and store what one batch would. Here 40 chunks, with no room to spill to disk."""
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.8, ids["cheap-mini"]: 0.6}, n=2000)
    answers.write(registry)
    whole = stored_evidence(registry, _board(registry).period_id)
    monkeypatch.setattr(pairing, "CHUNK_REQUESTS", 50)
    registry.database.limit(2, "64MB")
    registry.database.connection.execute("SET max_temp_directory_size = '0KB'")
    chunked = stored_evidence(registry, _rebuild(registry).period_id)
    assert len(chunked["paired"]) == 4000
    _assert_same_evidence(whole, chunked)


def _rebuild(registry: Registry):
    """The board after the pairs are rebuilt from scratch (the period's first refresh again)."""
    with registry.database.transaction() as db:
        for table in ("paired", "answer_stats", "pair_moments", "scoring_watermarks"):
            db.execute(f"DELETE FROM {table}")
    return _board(registry)


def _assert_same_evidence(kept: dict[str, list[tuple]], fresh_evidence: dict[str, list[tuple]]) -> None:
    """The same stored evidence (`stored_evidence`), sums alike up to their order of addition."""
    for table, rows in fresh_evidence.items():
        assert len(kept[table]) == len(rows), table
        for old, fresh in zip(kept[table], rows):
            keys = [value for value in fresh if not isinstance(value, float)]
            assert [value for value in old if not isinstance(value, float)] == keys, table
            assert [v for v in old if isinstance(v, float)] == pytest.approx(
                [v for v in fresh if isinstance(v, float)], rel=1e-9, abs=1e-12), (table, keys)


def test_a_corrected_label_does_not_count_its_pair_twice(scored) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.9}, n=20)
    answers.write(registry)
    assert _row(_board(registry), ids["careful-large"]).comparison.pairs == 20
    answers.label("r000003", "a corrected label")
    answers.write(registry)
    assert _row(_board(registry), ids["careful-large"]).comparison.pairs == 20


def _descriptive(board, version_id):
    row = _row(board, version_id)
    return row.n, row.mean_quality, row.error_rate, row.cost_per_1k_usd, row.net_per_1k_usd


def test_descriptive_columns_follow_a_corrected_label_without_counting_an_answer_twice(scored) -> None:
    registry, ids = scored
    scorer = Scorer(registry.workspace, registry)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.9}, n=40)
    answers.write(registry)
    scorer.refresh(SLOT)
    for request_id in ("r000003", "r000007", "r000011"):
        answers.label(request_id, "a corrected label")
    answers.write(registry)
    kept = scorer.refresh(SLOT)
    recomputed = scorer.refresh(SLOT, since=kept.period_started_at)  # every answer scored afresh
    for version_id in (ids["baseline"], ids["careful-large"]):
        assert _descriptive(kept, version_id) == pytest.approx(_descriptive(recomputed, version_id))
    assert _row(kept, ids["careful-large"]).n == 40


def test_period_latency_quantiles_are_within_one_percent_of_the_exact_ones(scored) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.9}, n=2000)
    rng = random.Random(7)
    for row in answers.traffic + answers.results:
        row["latency_ms"] = rng.lognormvariate(6, 0.8)
    answers.write(registry)
    scorer = Scorer(registry.workspace, registry)
    kept = scorer.refresh(SLOT)
    exact = scorer.refresh(SLOT, since=kept.period_started_at)
    for version_id in (ids["baseline"], ids["careful-large"]):
        for column in ("p50_latency_ms", "p95_latency_ms"):
            assert getattr(_row(kept, version_id), column) == pytest.approx(getattr(_row(exact, version_id), column),
                                                                           rel=0.01)


def test_a_pair_waits_for_its_label(scored) -> None:
    registry, ids = scored
    answers = Answers()
    answers.request("late", ids["baseline"], "billing")
    answers.result("late", ids["careful-large"], "billing")
    answers.write(registry)
    assert _row(_board(registry), ids["careful-large"]).comparison.pairs == 0
    answers.label("late", "billing")
    answers.write(registry)
    assert _row(_board(registry), ids["careful-large"]).comparison.pairs == 1


def test_upstream_errors_score_zero_and_not_run_calls_are_not_scored(scored) -> None:
    registry, ids = scored
    answers = Answers()
    for i in range(10):
        answers.request(f"q{i}", ids["baseline"], "billing", label="billing")
        answers.result(f"q{i}", ids["flash"], None, status="error" if i < 4 else "ok")
        if i < 4:
            answers.result(f"q{i}", ids["cheap-mini"], None, status="not_run")
    answers.results = [r | ({"output": "billing"} if r["status"] == "ok" else {}) for r in answers.results]
    answers.write(registry)
    board = _board(registry)
    flash = _row(board, ids["flash"])
    assert flash.n == 10 and flash.mean_quality == pytest.approx(0.6) and flash.error_rate == pytest.approx(0.4)
    mini = _row(board, ids["cheap-mini"])
    assert mini.n == 0 and mini.not_run == 4


def test_a_model_without_a_price_is_never_free(workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["prices"].pop("sim-flash"))
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["flash"]: 0.9}, n=120)
    answers.write(registry)
    flash = _row(_board(registry), ids["flash"])
    assert flash.status == Status.PRICE_UNKNOWN and flash.cost_per_1k_usd is None and flash.net_per_1k_usd is None
    registry.close()


def test_changing_value_settings_starts_a_new_recorded_period(scored, workspace_dir: Path) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95}, n=150)
    answers.write(registry)
    before = _board(registry)
    edit_config(workspace_dir, lambda c: c["slots"][SLOT]["scoring"].update(value_per_point=0.02))
    registry.workspace = load_workspace(workspace_dir)
    after = _board(registry)
    assert after.period_id == before.period_id + 1
    assert _row(after, ids["careful-large"]).comparison.pairs == 0, "old evidence must not carry into a new period"
    reason = registry.database.connection.execute(
        "SELECT reason FROM evaluation_periods WHERE period_id = ?", [after.period_id]).fetchall()[0][0]
    assert reason == "settings changed: scoring"


def test_a_new_champion_starts_a_new_period(scored) -> None:
    registry, ids = scored
    first = _board(registry).period_id
    registry.promote(SLOT, ids["cheap-mini"], "tester", "trial", None)
    board = _board(registry)
    assert board.period_id == first + 1 and board.champion == ids["cheap-mini"]


def test_a_new_period_keeps_the_old_periods_pairs_and_sums(scored) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.9}, n=30)
    answers.write(registry)
    first = _board(registry).period_id
    registry.promote(SLOT, ids["cheap-mini"], "tester", "trial", None)
    _board(registry)

    def count(table: str) -> int:
        return registry.database.connection.execute(f"SELECT count(*) FROM {table} WHERE period_id = ?", [first]).fetchone()[0]

    assert count("paired") == 30 and count("answer_stats") > 0


def test_alpha_shares_are_fixed_when_a_challenger_joins(scored, workspace_dir: Path) -> None:
    registry, ids = scored
    early = {r.version_id: r.comparison.alpha for r in _board(registry).rows if r.comparison}
    (workspace_dir / "zoo" / "late.yaml").write_text("slot: support-triage\nname: late\nbase: baseline\noverrides:\n  temperature: 0.5\n")
    zoo = load_zoo(registry.workspace.specs_dir)
    register_specs([s for s in zoo.specs if s.spec.name == "late"], zoo, registry.workspace, registry)
    later = {r.version_id: r.comparison.alpha for r in _board(registry).rows if r.comparison}
    assert all(later[v] == early[v] for v in early)
    assert sum(later.values()) <= 0.05 + 1e-12
    newcomer = next(v for v in later if v.startswith("late-"))
    assert later[newcomer] < min(early.values())


def test_a_challenger_added_mid_period_is_paired_only_on_requests_received_after_it(scored, workspace_dir: Path) -> None:
    registry, ids = scored
    before = Answers()
    simulate(before, ids["baseline"], {ids["careful-large"]: 0.9}, n=20)
    before.write(registry)
    (workspace_dir / "zoo" / "late.yaml").write_text("slot: support-triage\nname: late\nbase: baseline\noverrides:\n  temperature: 0.5\n")
    zoo = load_zoo(registry.workspace.specs_dir)
    late = register_specs([s for s in zoo.specs if s.spec.name == "late"], zoo, registry.workspace, registry)
    late_id = late[0].registration.variant.version_id
    after = Answers()
    simulate(after, ids["baseline"], {ids["careful-large"]: 0.9, late_id: 0.9}, n=30, start=20, seed=2)
    for i in range(20):  # the newcomer also replayed the older requests
        after.result(f"r{i:06d}", late_id, "billing")
    after.write(registry)
    board = _board(registry)
    assert _row(board, late_id).comparison.pairs == 30
    assert _row(board, ids["careful-large"]).comparison.pairs == 50


def _live_fast_replayed_slow(ids: dict[str, str], latencies: dict[str, float]) -> Answers:
    """A clearly better careful-large; live answers take 60 ms, replayed ones (under replay load) `latencies`."""
    answers = Answers()
    simulate(answers, ids["baseline"], {version_id: 0.99 for version_id in latencies}, n=300, champion_accuracy=0.6)
    for row in answers.traffic:
        row["latency_ms"] = 60.0
    for row in answers.results:
        row["latency_ms"] = latencies[row["version_id"]]
    return answers


def test_a_better_challenger_is_not_held_back_by_live_latencies_without_a_control(scored) -> None:
    registry, ids = scored
    _live_fast_replayed_slow(ids, {ids["careful-large"]: 450.0}).write(registry)
    board = _board(registry)
    careful = _row(board, ids["careful-large"])
    assert careful.status == Status.READY and careful.comparison.p95_latency_ratio is None
    assert careful.comparison.latency_baseline == "none"
    assert board.latency_guardrail.startswith("p95 latency guardrail not applied: the champion is not replayed as "
                                              "a control (shadow.champion_control_rate is 0)")
    assert f"**Not checked:** {board.latency_guardrail}" in render_markdown(board)
    assert f"<strong>Not checked:</strong> {board.latency_guardrail}" in render_html(board, [])


def test_latency_guardrail_compares_challengers_with_the_champions_control_replays(workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].setdefault("shadow", {}).update(champion_control_rate=0.2))
    registry, ids = demo_registry(workspace_dir)
    _live_fast_replayed_slow(ids, {ids["careful-large"]: 450.0, ids["cheap-mini"]: 900.0}).write(registry)
    waiting = _board(registry)
    assert waiting.latency_guardrail == ("p95 latency guardrail not applied: no control replay of the champion "
                                         "(shadow.champion_control_rate 0.2) has been answered in this period yet, "
                                         "and live latencies are not comparable with replayed ones.")
    control = Answers()
    for i in range(60):
        control.result(f"r{i:06d}", ids["baseline"], "billing", role="control", latency_ms=440.0)
    control.write(registry)
    board = _board(registry)
    careful, cheap = _row(board, ids["careful-large"]), _row(board, ids["cheap-mini"])
    assert careful.comparison.latency_baseline == "control" and careful.status == Status.READY
    assert cheap.status_detail == "guardrail: p95 latency"
    assert board.latency_guardrail.startswith("p95 latency guardrail applied")
    registry.close()


def test_a_slot_with_no_champion_yet_shows_challengers_collecting(workspace_dir: Path) -> None:
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        zoo = load_zoo(workspace.specs_dir)
        register_specs(zoo.specs, zoo, workspace, registry)
        board = _board(registry)
    assert board.champion is None and board.recommendation is None
    assert {r.status_detail for r in board.rows} == {"collecting (no champion to compare with)"}


def test_a_label_of_the_wrong_type_is_a_counted_metric_error(workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].update(metrics=[{"type": "numeric", "tolerance": 0.5}]))
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    answers.request("n1", ids["baseline"], "about 12", label=12)
    answers.request("n2", ids["baseline"], "about 12", label={"not": "a number"})
    answers.request("n3", ids["baseline"], "no idea", label="twelve")
    answers.write(registry)
    champion = _board(registry).rows[0]
    assert champion.n == 1 and champion.mean_quality == 1.0 and champion.metric_errors == 2
    registry.close()


CHECKS = [
    ({"type": "exact_match"}, "  Billing ", "billing", 1.0),
    ({"type": "exact_match", "case_sensitive": True}, "Billing", "billing", 0.0),
    ({"type": "exact_match"}, "two  words\there", "Two words here", 1.0),
    ({"type": "exact_match", "first_line": True}, "billing\nbecause the card was charged twice", "billing", 1.0),
    ({"type": "exact_match", "first_line": True}, "Two  words\there \nthen more", "two words here", 1.0),
    ({"type": "exact_match", "case_sensitive": True, "normalize_whitespace": False}, "billing", "billing", 1.0),
    ({"type": "exact_match", "case_sensitive": True, "normalize_whitespace": False}, " billing", "billing", 0.0),
    ({"type": "exact_match"}, "billing\nbecause", "billing", 0.0),
    ({"type": "exact_match", "strip_punctuation": True}, "billing.", "billing!", 1.0),
    ({"type": "numeric"}, "the total is 1,250 euros", 1250, 1.0),
    ({"type": "numeric", "tolerance": 0.1, "relative": True}, "about 105", 100, 1.0),
    ({"type": "numeric", "tolerance": 1}, "7", 9, 0.0),
    ({"type": "regex", "pattern": "^queue: {label}$"}, "queue: a.b", "a.b", 1.0),
    ({"type": "regex", "pattern": "^queue: {label}$"}, "queue: axb", "a.b", 0.0),
    ({"type": "regex", "pattern": "[0-9]{3}"}, "ticket 123", "ignored", 1.0),
    ({"type": "contains"}, "This is about BILLING.", "billing", 1.0),
    ({"type": "contains", "case_sensitive": True}, "This is about BILLING.", "billing", 0.0),
    ({"type": "contains", "text": "Refund"}, "we will refund you", None, 1.0),
    ({"type": "json_valid"}, '{"queue": "billing"}', None, 1.0),
    ({"type": "json_valid"}, "{queue: billing}", None, 0.0),
]


@pytest.mark.parametrize(("metric", "output", "label", "quality"), CHECKS)
def test_each_check_scores_an_answer_against_its_label(metric: dict, output: str, label, quality: float) -> None:
    plan = plan_quality([TypeAdapter(Metric).validate_python(metric)], "slots.s.metrics")
    rows = pl.DataFrame({"output": [output], "label_json": [json.dumps(label) if label is not None else None]},
                        schema={"output": pl.Utf8, "label_json": pl.Utf8})
    assert score_rows(plan, rows).to_list() == [quality]


def test_a_python_metric_that_raises_or_leaves_0_to_1_records_the_row_and_moves_on(workspace_dir: Path, monkeypatch) -> None:
    (workspace_dir / "my_metrics.py").write_text(textwrap.dedent("""
        def picky(request, output, outcome):
            if output == "boom":
                raise ValueError("cannot score this")
            if output == "big":
                return 1.7
            return 1.0 if output == outcome else 0.0
    """))
    monkeypatch.syspath_prepend(str(workspace_dir))
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].update(metrics=[{"type": "python", "entrypoint": "my_metrics:picky"}]))
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    for request_id, output in (("p1", "billing"), ("p2", "boom"), ("p3", "big"), ("p4", "other")):
        answers.request(request_id, ids["baseline"], output, label="billing")
    answers.write(registry)
    champion = _board(registry).rows[0]
    assert champion.n == 2 and champion.mean_quality == 0.5 and champion.metric_errors == 2
    errors = dict(registry.database.connection.execute("SELECT request_id, error FROM metric_values WHERE error IS NOT NULL").fetchall())
    assert "raised ValueError: cannot score this" in errors["p2"] and "returned 1.7, outside 0..1" in errors["p3"]
    registry.close()
    sys.modules.pop("my_metrics", None)


def test_an_unknown_metric_type_names_the_file_and_key(workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].update(metrics=[{"type": "exact"}]))
    with pytest.raises(ConfigError, match=r"shadowzoo.yaml:\d+:\d+: slots.support-triage.metrics\[0\]: .*'exact_match'"):
        load_workspace(workspace_dir)


def _board_with_rules(workspace_dir: Path, accuracies: dict[str, float]):
    """The demo slot plus the python variant `rules`, scored on 300 requests the named specs answered."""
    add_rules_variant(workspace_dir)
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids[name]: accuracy for name, accuracy in accuracies.items()}, n=300)
    answers.write(registry)
    return registry, ids, _board(registry)


def test_a_ready_python_variant_is_shadow_only_and_the_best_promotable_one_is_recommended(workspace_dir: Path) -> None:
    registry, ids, board = _board_with_rules(workspace_dir, {"rules": 0.99, "careful-large": 0.95})
    rules, careful = _row(board, ids["rules"]), _row(board, ids["careful-large"])
    assert rules.status == Status.READY and rules.display_status == "ready (shadow only)"
    assert rules.comparison.net.lower > careful.comparison.net.lower and careful.status == Status.READY
    command = f"shadowzoo promote {SLOT} {ids['careful-large']}"
    assert board.recommendation == command
    markdown, page = render_markdown(board), render_html(board, [])
    assert f"**Recommendation:** `{command}`" in markdown and "| ready (shadow only) |" in markdown
    assert f'<code class="command">{command}</code>' in page
    move = registry.promote(SLOT, ids["careful-large"], "tester", None,
                            promotion_evidence(board, ids["careful-large"], force=False))
    assert move.to_version == ids["careful-large"]
    registry.close()


def test_with_only_a_python_variant_ready_there_is_no_recommendation_and_the_board_says_why(workspace_dir: Path) -> None:
    registry, ids, board = _board_with_rules(workspace_dir, {"rules": 0.99, "cheap-mini": 0.7})
    assert _row(board, ids["rules"]).display_status == "ready (shadow only)" and board.recommendation is None
    markdown = render_markdown(board)
    assert "**No recommendation.** No promotable challenger is ready." in markdown
    assert (f"- `{ids['rules']}`: ready (shadow only) — a python variant answers captured traffic only, never users, "
            "so it cannot be promoted") in markdown
    assert "No promotable challenger is ready</h2>" in render_html(board, [])
    registry.close()


def test_promoting_a_challenger_that_is_not_ready_is_refused_with_the_evidence(scored) -> None:
    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["cheap-mini"]: 0.7}, n=50)
    answers.write(registry)
    with pytest.raises(Refused, match=r"not ready to promote: collecting \(50/100\)\. Evidence: 50 pairs"):
        promotion_evidence(_board(registry), ids["cheap-mini"], force=False)


def test_promote_records_the_leaderboard_it_acted_on(cli, workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95}, n=300)
    answers.write(registry)
    registry.close()
    assert cli("promote", SLOT, ids["careful-large"], "--reason", "ready").code == 0
    move = cli("history", SLOT, "--json").json()[-1]
    rows = {r["version_id"]: r for r in move["evidence"]["leaderboard"]["rows"]}
    assert rows[ids["careful-large"]]["status"] == "ready" and not move["evidence"]["forced"]
    assert "ready (300 pairs)" in cli("history", SLOT).out


def test_the_leaderboard_and_report_commands_print_and_write(cli, workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95, ids["cheap-mini"]: 0.6}, n=250)
    answers.write(registry)
    registry.close()
    table = cli("leaderboard", "--slot", SLOT)
    assert table.code == 0 and f"shadowzoo promote {SLOT} {ids['careful-large']}" in table.out
    assert "p95 latency guardrail not applied: the champion is not replayed as a control" in table.out
    board = cli("leaderboard", "--slot", SLOT, "--format", "json").json()
    assert [r["role"] for r in board["rows"]][0] == "champion"
    assert "| version |" in cli("leaderboard", "--slot", SLOT, "--format", "md").out
    written = cli("report", "--slot", SLOT, "--out", "report.html")
    assert written.code == 0 and "<svg" in (workspace_dir / "report.html").read_text()


def test_cached_and_reasoning_tokens_are_priced_at_their_own_rates(workspace_dir: Path) -> None:
    edit_config(workspace_dir, lambda c: c["prices"]["sim-large"].update(
        cache_read_input_token_cost=1.0e-6, output_cost_per_reasoning_token=4.0e-5))
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    answers.request("u1", ids["baseline"], "billing", label="billing", tokens=(1000, 200))
    answers.traffic[0].update(cached_tokens=600, reasoning_tokens=150)  # as ingest reads them from the usage
    answers.write(registry)
    champion = _board(registry).rows[0]
    cost = 400 * 5.0e-6 + 600 * 1.0e-6 + 50 * 2.0e-5 + 150 * 4.0e-5
    assert champion.cost_per_1k_usd == pytest.approx(1000 * cost)
    registry.close()


def test_litellms_price_map_loads_as_is_and_the_config_overrides_it(workspace_dir: Path) -> None:
    (workspace_dir / "model_prices.json").write_text(json.dumps({
        "sample_spec": {"input_cost_per_token": "0.0", "max_tokens": "set to max"},
        "sim-extra": {"input_cost_per_token": 2e-7, "output_cost_per_token": 8e-7, "litellm_provider": "openai",
                      "mode": "chat", "cache_read_input_token_cost": 1e-7},
        "openai/sim-other": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
        "dall-e-3": {"output_cost_per_image": 0.04},
        "sim-large": {"input_cost_per_token": 9.0, "output_cost_per_token": 9.0},
    }))
    edit_config(workspace_dir, lambda c: c.update(prices_file="model_prices.json"))
    prices = workspace_prices(load_workspace(workspace_dir))
    assert prices["sim-extra"].cache_read_input_token_cost == 1e-7 and "dall-e-3" not in prices
    assert prices["sim-large"].input_cost_per_token == 5e-6, "the config's entry wins over the price file"
    assert price_of(prices, "sim-other").input_cost_per_token == 1e-6
    assert price_of(prices, "no-such-model") is None


def test_a_database_from_before_request_keys_and_token_columns_is_upgraded_and_scored(workspace_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(registry_db, "MIGRATIONS", MIGRATIONS[:3])
    monkeypatch.setattr(registry_db, "LATEST", 3)
    registry, ids = demo_registry(workspace_dir)
    with registry.database.transaction() as db:
        for i in range(5):
            db.execute("INSERT INTO traffic (request_id, slot, received_at, request_json, champion_version, status, output, "
                       "prompt_tokens, completion_tokens, usage_json, latency_ms, source, ingested_at) VALUES (?, ?, "
                       "now()::TIMESTAMP, '{}', ?, 200, 'billing', 100, 20, ?, 400, 'gateway', now()::TIMESTAMP)",
                       [f"old{i}", SLOT, ids["baseline"], json.dumps(
                           {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 60}})])
            db.execute("INSERT INTO outcomes (outcome_id, request_key, request_id, kind, value_json, received_at) "
                       "VALUES (?, ?, ?, 'label', '\"billing\"', now()::TIMESTAMP)", [f"o{i}", f"old{i}", f"old{i}"])
            db.execute("INSERT INTO shadow_results (request_id, version_id, role, status, output, prompt_tokens, "
                       "completion_tokens, latency_ms, attempts, finished_at) VALUES (?, ?, 'challenger', 'ok', 'billing', "
                       "100, 20, 300, 1, now()::TIMESTAMP)", [f"old{i}", ids["careful-large"]])
    registry.close()
    monkeypatch.undo()
    with Registry.open(load_workspace(workspace_dir)) as upgraded:
        db = upgraded.database.connection
        for table in ("shadow_results", "outcomes"):
            unkeyed = db.execute(f"SELECT count(*) FROM {table} x JOIN traffic t USING (request_id) "
                                 "WHERE x.request_seq IS DISTINCT FROM t.seq").fetchone()[0]
            assert unkeyed == 0, f"{table} rows kept no key to their request"
        assert db.execute("SELECT count(*) FROM traffic WHERE cached_tokens = 60").fetchone()[0] == 5
        assert _row(_board(upgraded), ids["careful-large"]).comparison.pairs == 5


@pytest.fixture
def label_metric(workspace_dir: Path, monkeypatch):
    """The slot scored by a python metric that reads the label: 1 when the answer equals it."""
    (workspace_dir / "label_metrics.py").write_text(
        "def equals_label(request, output, outcome):\n    return 1.0 if output == outcome else 0.0\n")
    monkeypatch.syspath_prepend(str(workspace_dir))
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].update(
        metrics=[{"type": "python", "entrypoint": "label_metrics:equals_label"}]))
    registry, ids = demo_registry(workspace_dir)
    yield registry, ids
    registry.close()
    sys.modules.pop("label_metrics", None)


def test_a_python_metric_that_reads_the_label_waits_for_a_late_label(label_metric) -> None:
    registry, ids = label_metric
    scorer = Scorer(registry.workspace, registry)
    answers = Answers()
    for index in range(4):
        answers.request(f"q{index}", ids["baseline"], "billing")
        answers.result(f"q{index}", ids["careful-large"], "billing")
    answers.write(registry)
    before = scorer.refresh(SLOT)
    assert _row(before, ids["baseline"]).n == 0 and _row(before, ids["careful-large"]).comparison.pairs == 0
    for index in range(4):
        answers.label(f"q{index}", "billing")
    answers.write(registry)
    after = scorer.refresh(SLOT)
    assert _row(after, ids["baseline"]).mean_quality == 1.0 and _row(after, ids["baseline"]).n == 4
    assert _row(after, ids["careful-large"]).comparison.pairs == 4


def test_a_corrected_label_is_read_again_by_a_python_metric_and_its_pair_is_counted_once(label_metric) -> None:
    registry, ids = label_metric
    scorer = Scorer(registry.workspace, registry)
    answers = Answers()
    for index in range(4):
        answers.request(f"q{index}", ids["baseline"], "billing", label="billing")
        answers.result(f"q{index}", ids["careful-large"], "billing")
    answers.write(registry)
    scorer.refresh(SLOT)
    answers.label("q0", "technical")
    answers.write(registry)
    scorer.refresh(SLOT)  # the label's new value is evaluated here, and scored by the next refresh
    board = scorer.refresh(SLOT)
    assert _row(board, ids["baseline"]).mean_quality == 0.75 and _row(board, ids["baseline"]).n == 4
    assert _row(board, ids["careful-large"]).mean_quality == 0.75
    assert _row(board, ids["careful-large"]).comparison.pairs == 4
    stored = registry.database.connection.execute(
        "SELECT count(*) FROM metric_values WHERE request_id = 'q0' AND version_id = ?", [ids["baseline"]]).fetchone()
    assert stored == (2,)


def test_a_since_view_is_returned_but_never_stored_as_the_slot_s_board(scored) -> None:
    from datetime import timedelta

    from ops.operations import LocalOperations

    registry, ids = scored
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95}, n=60)
    answers.write(registry)
    operations = LocalOperations(registry)
    stored = operations.score(SLOT)
    window = operations.score(SLOT, since=utcnow() - timedelta(hours=1))
    assert window.since is not None
    assert operations.leaderboard(SLOT) == stored  # what GET answers is the period's board, not the window
    assert [p.taken_at for p in operations.evidence_history(SLOT)] == [stored.generated_at]
