"""The judge metric against the bundled simulator's grader models, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from registry import utcnow
from registry.workspace_config import JudgeMetric, Price, ProviderConfig
from scorer.judge import JudgeRun, grader_messages, judge_spend_today, parse_verdict, run_judge
from scorer.quality_metrics import is_sampled, sampled_sql
from scorer.rowmetrics import VALUE_COLUMNS, store_values
from scorer.service import Scorer
from shadow.budget import DailyCap
from shadow.simulator import SimulatorHandle, load_simulator_config, start_in_thread
from shadow.simulator.simulator_config import ErrorConfig, ModelConfig, Ticket, load_tickets
from tests.scoring_data import Answers, demo_registry
from tests.servers import edit_config

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"
KEY = "judge:0123abcd"
RUBRIC = "The first line must be the ticket's category: billing, technical, account, shipping or other."
PRICE = Price(input_cost_per_token=1e-5, output_cost_per_token=1e-5)
JUDGES = {
    "judge": ModelConfig(grader=True),
    "judge-garbage": ModelConfig(grader=True, garbage_rate=1.0),
    "judge-flaky": ModelConfig(grader=True, garbage_rate=0.5),
    "judge-tenfold": ModelConfig(grader=True, score_scale=10),
    "judge-down": ModelConfig(grader=True, errors=ErrorConfig(http_500=1.0)),
}
PRICES = {model: PRICE for model in JUDGES}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    """The simulator with the demo task and grader models, on an ephemeral port."""
    config = load_simulator_config(DEMO / "simulator.yaml").model_copy(update={"models": JUDGES, "seed": 5})
    with start_in_thread(config) as handle:
        yield handle


@pytest.fixture(scope="module")
def tickets() -> list[Ticket]:
    config = load_simulator_config(DEMO / "simulator.yaml")
    assert config.task is not None
    return load_tickets(config.task)


def answers(tickets: list[Ticket]) -> pl.DataFrame:
    """Two versions per ticket: `right` answers the expected category, `wrong` another one; both explain."""
    rows = []
    for index, ticket in enumerate(tickets):
        request = {"model": "support-triage", "messages": [
            {"role": "system", "content": "Route the ticket."}, {"role": "user", "content": ticket.input}]}
        wrong = "billing" if ticket.expected != "billing" else "shipping"
        for version, category in (("right", ticket.expected), ("wrong", wrong)):
            rows.append({"request_id": f"req-{index:04d}", "version_id": version,
                         "output": f"{category}\n\nThe ticket's wording points there.",
                         "label_json": json.dumps(ticket.expected), "request_json": json.dumps(request)})
    return pl.DataFrame(rows)


def judge(sim: SimulatorHandle, model: str, rows: pl.DataFrame, prices: Mapping[str, Price] = PRICES,
          spent_today_usd: float = 0.0, **settings: Any) -> JudgeRun:
    """One judging pass with a fresh provider pool pointed at the simulator."""
    metric = JudgeMetric(type="judge", provider="sim", model=model, rubric=RUBRIC,
                         **{"sample_rate": 1.0, "first_line": True, **settings})
    providers = {"sim": ProviderConfig(base_url=sim.base_url, api_key_env=None, max_retries=1)}
    return run_judge(providers, prices, metric, KEY, rows, DailyCap(metric.daily_budget_usd, spent_today_usd))


def scores(run: JudgeRun, version: str) -> list[float | None]:
    return run.values.filter(pl.col("version_id") == version)["value"].to_list()


def errors(run: JudgeRun) -> list[str]:
    return run.values["error"].drop_nulls().to_list()


def test_correct_answers_score_one_and_wrong_answers_zero(sim: SimulatorHandle, tickets: list[Ticket]) -> None:
    run = judge(sim, "judge", answers(tickets[:12]))
    assert scores(run, "right") == [1.0] * 12
    assert scores(run, "wrong") == [0.0] * 12
    assert run.calls == 24 and run.errors == 0 and run.skipped_for_budget == 0
    assert run.values["cost_usd"].min() > 0
    assert run.spent_usd == pytest.approx(run.values["cost_usd"].sum())


def test_the_grader_sees_rubric_question_first_line_and_reference_but_not_the_skill() -> None:
    metric = JudgeMetric(type="judge", provider="sim", model="judge", rubric=RUBRIC, first_line=True)
    request = {"messages": [{"role": "system", "content": "SECRET SKILL"},
                            {"role": "user", "content": [{"type": "text", "text": "My parcel is late."}]}]}
    system, user = grader_messages(metric, json.dumps(request), "shipping\n\nEXPLANATION", json.dumps("shipping"))
    prompt = user["content"]
    assert system["role"] == "system" and user["role"] == "user"
    assert RUBRIC in prompt and "My parcel is late." in prompt
    assert "<answer>\nshipping\n</answer>" in prompt and "EXPLANATION" not in prompt
    assert "<reference>\nshipping\n</reference>" in prompt
    assert "SECRET SKILL" not in prompt and '{"score"' in prompt


def test_sampling_is_deterministic_and_the_same_for_every_version_of_a_request(
    sim: SimulatorHandle, tickets: list[Ticket]
) -> None:
    rows = answers(tickets[:40])
    first = judge(sim, "judge", rows, sample_rate=0.3)
    again = judge(sim, "judge", rows, sample_rate=0.3)
    judged = set(first.values.select("request_id", "version_id").iter_rows())
    assert judged == set(again.values.select("request_id", "version_id").iter_rows())
    requests = {request_id for request_id, _ in judged}
    assert judged == {(request_id, version) for request_id in requests for version in ("right", "wrong")}
    assert requests == {r for r in rows["request_id"].unique() if is_sampled(r, KEY, 0.3)}
    assert 0 < len(requests) < 40 and first.sampled == 2 * len(requests)


def test_the_sql_sample_picks_the_same_requests_as_the_python_one() -> None:
    ids = [f"req-{index}" for index in range(500)]
    picked = duckdb.sql(f"SELECT id FROM (SELECT unnest(?) AS id) WHERE {sampled_sql(KEY, 0.3, 'id')}",
                        params=[ids]).fetchall()
    assert {row[0] for row in picked} == {i for i in ids if is_sampled(i, KEY, 0.3)}
    assert 100 < len(picked) < 200


def test_a_reply_that_never_parses_is_asked_three_times_then_counted_as_an_error(
    sim: SimulatorHandle, tickets: list[Ticket]
) -> None:
    run = judge(sim, "judge-garbage", answers(tickets[:3]))
    assert run.calls == 3 * 6 and run.errors == 6
    assert run.values["value"].null_count() == 6
    assert all("no JSON score" in error and "after 3 calls" in error and "mostly fine" in error
               for error in errors(run))
    assert run.values["cost_usd"].min() > 0


def test_a_retry_can_rescue_a_reply_that_did_not_parse(sim: SimulatorHandle, tickets: list[Ticket]) -> None:
    run = judge(sim, "judge-flaky", answers(tickets[:10]))
    assert run.calls > 20
    assert run.values.height - run.errors > 0
    assert set(scores(run, "right")) <= {1.0, None} and set(scores(run, "wrong")) <= {0.0, None}


def test_the_budget_stops_further_calls_and_leaves_the_rest_for_another_day(
    sim: SimulatorHandle, tickets: list[Ticket]
) -> None:
    budget = 0.03
    run = judge(sim, "judge", answers(tickets[:30]), daily_budget_usd=budget)
    assert 0 < run.calls < 60
    assert run.values.height == run.calls and run.errors == 0
    assert run.skipped_for_budget == 60 - run.calls
    assert budget / 2 < run.spent_usd <= budget


def test_todays_earlier_spend_counts_against_the_budget(sim: SimulatorHandle, tickets: list[Ticket]) -> None:
    run = judge(sim, "judge", answers(tickets[:5]), spent_today_usd=0.03, daily_budget_usd=0.03)
    assert run.calls == 0 and run.values.is_empty() and run.skipped_for_budget == 10


def test_an_unpriced_judge_model_is_refused_with_a_clear_error(sim: SimulatorHandle, tickets: list[Ticket]) -> None:
    run = judge(sim, "judge", answers(tickets[:4]), prices={})
    assert run.calls == 0 and run.errors == 8
    assert all("'judge' has no price" in error and "budget cannot be enforced" in error for error in errors(run))
    assert run.values["cost_usd"].null_count() == 8


def test_a_score_outside_0_to_1_is_an_error_not_clamped(sim: SimulatorHandle, tickets: list[Ticket]) -> None:
    run = judge(sim, "judge-tenfold", answers(tickets[:4]))
    assert scores(run, "right") == [None] * 4 and scores(run, "wrong") == [0.0] * 4
    assert errors(run) == ["judge score 10 is outside 0..1"] * 4
    assert run.calls == 8


def test_an_upstream_failure_after_the_pools_retries_is_the_rows_error(
    sim: SimulatorHandle, tickets: list[Ticket]
) -> None:
    run = judge(sim, "judge-down", answers(tickets[:2]))
    assert run.errors == 4 and run.calls == 4
    assert all(error.startswith("judge call failed: HTTP 500") for error in errors(run))


@pytest.mark.parametrize("reply, score", [
    ('{"score": 0.75, "reason": "close"}', 0.75),
    ('Here you go:\n```json\n{"score": 1, "reason": "right"}\n```', 1.0),
    ('I think {"score": 0, "reason": "wrong"} is fair.', 0.0),
    ("0.5", 0.5),
    ('{"score": "0.25"}', 0.25),
])
def test_replies_are_read_leniently(reply: str, score: float) -> None:
    assert parse_verdict(reply).score == score


@pytest.mark.parametrize("reply", ["Looks good to me.", '{"reason": "no score"}', '{"score": true}', "", None])
def test_a_reply_without_a_score_asks_for_a_retry(reply: str | None) -> None:
    verdict = parse_verdict(reply)
    assert verdict.score is None and verdict.retry and "no JSON score" in (verdict.error or "")


def test_judge_spend_today_sums_this_utc_days_costs_of_one_metric(registry) -> None:
    values = pl.DataFrame([
        {"request_id": "r1", "version_id": "v", "metric_key": KEY, "value": 1.0, "error": None, "cost_usd": 0.5},
        {"request_id": "r2", "version_id": "v", "metric_key": KEY, "value": None, "error": "x", "cost_usd": 0.25},
        {"request_id": "r1", "version_id": "v", "metric_key": "judge:other", "value": 1.0, "error": None,
         "cost_usd": 4.0},
    ], schema=VALUE_COLUMNS)
    store_values(registry.database, values)
    with registry.database.transaction() as db:
        db.execute("INSERT INTO metric_values (request_id, version_id, metric_key, value, cost_usd, computed_at) "
                   "VALUES ('r0', 'v', ?, 1.0, 8.0, ?)", [KEY, utcnow() - timedelta(days=1, hours=1)])
    assert judge_spend_today(registry.database, KEY) == pytest.approx(0.75)


def test_judge_errors_count_as_metric_errors_on_the_leaderboard(sim: SimulatorHandle, workspace_dir: Path) -> None:
    def judged_by_garbage(config: dict) -> None:
        config["providers"]["graders"] = {"base_url": sim.base_url, "api_key_env": None, "max_retries": 1}
        config["prices"] = {**config.get("prices", {}), "judge-garbage": PRICE.model_dump(exclude_none=True)}
        config["slots"]["support-triage"]["metrics"] = [
            {"type": "exact_match", "first_line": True},
            {"type": "judge", "provider": "graders", "model": "judge-garbage", "rubric": RUBRIC, "sample_rate": 1.0}]

    edit_config(workspace_dir, judged_by_garbage)
    registry, ids = demo_registry(workspace_dir)
    batch = Answers()
    for index in range(3):
        batch.request(f"j{index}", ids["baseline"], "billing", label="billing")
    batch.write(registry)
    board = Scorer(registry.workspace, registry).refresh("support-triage")
    champion = board.rows[0]
    assert champion.n == 0  # a sampled answer without the judge's verdict is not scored without it
    assert champion.metric_errors == 3 and board.eval_spend_usd > 0
    registry.close()


def _judged_by(sim: SimulatorHandle, model: str, **settings: Any):
    """A config change: the slot's quality is an exact match and a judge by `model` grading every answer."""
    def change(config: dict) -> None:
        config["providers"]["graders"] = {"base_url": sim.base_url, "api_key_env": None, "max_retries": 1}
        config["prices"] = {**config.get("prices", {}), model: PRICE.model_dump(exclude_none=True)}
        config["slots"]["support-triage"]["metrics"] = [
            {"type": "exact_match", "first_line": True},
            {"type": "judge", "provider": "graders", "model": model, "rubric": RUBRIC, "sample_rate": 1.0, **settings}]
    return change


def test_the_judge_grades_only_answers_that_can_enter_the_current_evidence(sim: SimulatorHandle,
                                                                           workspace_dir: Path) -> None:
    edit_config(workspace_dir, _judged_by(sim, "judge"))
    registry, ids = demo_registry(workspace_dir)
    earlier = Answers()
    for index in range(6):
        earlier.request(f"old{index}", ids["baseline"], "billing", label="billing",
                        received_at=utcnow() - timedelta(hours=2))
    earlier.write(registry)
    registry.promote("support-triage", ids["careful-large"], "tester", "new champion", {})
    current = Answers()
    for index in range(2):
        current.request(f"new{index}", ids["careful-large"], "billing", label="billing")
    current.write(registry)
    board = Scorer(registry.workspace, registry).refresh("support-triage")
    judged = {row[0] for row in registry.database.connection.execute(
        "SELECT request_id FROM metric_values WHERE metric_key LIKE 'judge:%'").fetchall()}
    assert judged == {"new0", "new1"}
    [state] = board.judges
    assert state.unjudged == 0 and state.spent_today_usd > 0 and not state.budget_reached
    registry.close()


def test_an_exhausted_judge_budget_and_the_answers_waiting_are_shown(sim: SimulatorHandle, workspace_dir: Path,
                                                                     cli) -> None:
    edit_config(workspace_dir, _judged_by(sim, "judge", daily_budget_usd=0.0))
    registry, ids = demo_registry(workspace_dir)
    batch = Answers()
    for index in range(3):
        batch.request(f"j{index}", ids["baseline"], "billing", label="billing")
    batch.write(registry)
    [state] = Scorer(registry.workspace, registry).refresh("support-triage").judges
    assert state.budget_reached and state.unjudged == 3
    registry.close()
    shown = cli("leaderboard", "--slot", "support-triage")
    assert shown.code == 0 and "its daily budget is reached; 3 sampled answers wait for a verdict" in shown.err


def test_a_pair_on_a_sampled_request_waits_until_both_answers_are_judged(sim: SimulatorHandle,
                                                                          workspace_dir: Path) -> None:
    edit_config(workspace_dir, _judged_by(sim, "judge", daily_budget_usd=0.005))  # room for one call
    registry, ids = demo_registry(workspace_dir)
    batch = Answers()
    batch.request("one", ids["baseline"], "billing", label="billing")
    batch.result("one", ids["careful-large"], "billing")
    batch.write(registry)
    board = Scorer(registry.workspace, registry).refresh("support-triage")
    challenger = next(row for row in board.rows if row.version_id == ids["careful-large"])
    assert board.judges[0].unjudged == 1 and challenger.comparison.pairs == 0
    registry.close()
