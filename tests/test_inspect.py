"""Looking inside single requests: `shadowzoo trace` and `shadowzoo requests`, locally and through the daemon.

The answers are written into a real database and scored by the real scorer; the commands
run as a user runs them (the console script), once with the database here and once
through a running daemon's admin API, which must print the same.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

from ops.operations import LocalOperations
from registry import ConfigError, Registry, load_workspace
from registry.db import registered
from scorer.answer_query import AnswerQuery, variant_prices, variant_prices_sql
from scorer.browse import RequestFilter, browse_requests
from scorer.quality_metrics import plan_quality
from scorer.pairing import reread_slot_worst
from scorer.service import Scorer
from scorer.trace import EPOCH, trace_request
from shadow.pricing import effective_prices
from tests.scoring_data import SLOT, Answers, demo_registry
from tests.servers import edit_config
from tests.test_admin_api import TOKEN, Daemon

BUDGET = "budget: daily shadow budget of 10.00 USD reached"


def _write(registry: Registry, answers: Answers) -> None:
    """Write the answers (every traffic row with a client request id column) and score them."""
    for row in answers.traffic:
        row.setdefault("client_request_id", None)
    answers.write(registry)
    Scorer(registry.workspace, registry).refresh(SLOT)


@pytest.fixture
def ids(workspace_dir: Path) -> dict[str, str]:
    """A labelled request every challenger answered (or was not run on), and a later unlabelled one."""
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    answers.request("r-right", ids["baseline"], "billing", label="billing")
    answers.traffic[-1]["client_request_id"] = "client-7"
    answers.result("r-right", ids["careful-large"], "Billing\nThe customer was charged twice.")
    answers.result("r-right", ids["cheap-mini"], "technical")
    answers.result("r-right", ids["flash"], None, status="error")
    answers.result("r-right", ids["careful-mini"], None, status="not_run")
    answers.results[-1]["error"] = BUDGET
    answers.request("r-later", ids["baseline"], "account")
    answers.result("r-later", ids["cheap-mini"], "technical")
    _write(registry, answers)
    registry.close()
    return ids


def _answer(traced: dict, version_id: str) -> dict:
    return next(a for a in traced["challengers"] if a["version_id"] == version_id)


def test_a_trace_shows_every_answer_its_metrics_net_value_and_pair(cli, ids) -> None:
    result = cli("trace", "client-7", "--json")
    assert result.code == 0, result.err
    traced = result.json()
    assert traced["request_id"] == "r-right" and traced["request"] == {"messages": [{"role": "user", "content": "r-right"}]}
    champion = traced["champion"]
    assert champion["version_id"] == ids["baseline"] and champion["output"] == "billing"
    assert champion["metrics"] == [{"metric": "exact_match", "weight": 1.0, "value": 1.0, "counted": True}]
    # sim-large: 100 input tokens at 5e-6 and 20 output tokens at 2e-5; 400 ms is inside the SLO
    assert champion["cost_usd"] == pytest.approx(0.0009) and champion["latency_cost_usd"] == 0
    assert champion["net"] == pytest.approx(0.01 * 1.0 - 0.0009)
    cheap = _answer(traced, ids["cheap-mini"])
    assert cheap["metrics"][0]["value"] == 0.0 and cheap["quality"] == 0.0
    assert cheap["pair"]["entered"], cheap["pair"]
    assert cheap["pair"]["d_net"] == pytest.approx(cheap["net"] - champion["net"])
    assert cheap["pair"]["period_id"] == traced["period"]["period_id"]
    careful = _answer(traced, ids["careful-large"])
    assert careful["metrics"][0]["value"] == 1.0 and careful["pair"]["d_quality"] == 0.0
    failed = _answer(traced, ids["flash"])
    assert failed["status"] == "error" and failed["reason"] == "upstream returned 500" and failed["quality"] == 0.0
    assert failed["pair"]["entered"]
    skipped = _answer(traced, ids["careful-mini"])
    assert skipped["status"] == "not_run" and skipped["reason"] == BUDGET
    assert skipped["pair"] == {**skipped["pair"], "entered": False, "reason": "no answer: nothing to pair"}
    assert [(o["kind"], o["value"], o["used"]) for o in traced["outcomes"]] == [("label", "billing", True)]


def _local(workspace_dir: Path):
    """The operations on the workspace's database, in this process."""
    return LocalOperations(Registry.open(load_workspace(workspace_dir)))


def test_a_trace_says_why_an_answer_did_not_pair_and_which_challengers_never_answered(cli, workspace_dir, ids) -> None:
    operations = _local(workspace_dir)
    with operations.registry:
        traced = operations.trace("r-later").model_dump(mode="json")
    assert _answer(traced, ids["cheap-mini"])["pair"] == {
        "entered": False, "period_id": traced["period"]["period_id"], "d_net": None, "d_quality": None, "d_cost": None,
        "reason": "waits for the request's label"}
    assert _answer(traced, ids["careful-large"])["status"] == "missing"
    assert "not sampled, or still waiting" in _answer(traced, ids["careful-large"])["reason"]
    text = cli("trace", "r-later")
    assert text.code == 0 and "waits for the request's label" in text.out and ids["cheap-mini"] in text.out


def test_a_trace_leaves_the_databases_threads_and_optimizer_settings_as_it_found_them(workspace_dir, ids) -> None:
    operations = _local(workspace_dir)
    with operations.registry as registry:
        with registry.database.reading() as db:
            db.execute("SET disabled_optimizers = 'join_order'; SET threads = 3")
        before = operations.trace("r-right").model_dump(mode="json")
        with registry.database.reading() as db:
            assert db.execute("SELECT current_setting('disabled_optimizers'), current_setting('threads')").fetchone() \
                == ("join_order", 3)
            db.execute("RESET disabled_optimizers; SET threads = 2")
        assert operations.trace("r-right").model_dump(mode="json") == before
        with registry.database.reading() as db:
            assert db.execute("SELECT current_setting('disabled_optimizers'), current_setting('threads')").fetchone() \
                == ("", 2)


def test_an_unknown_request_or_a_foreign_cursor_fails_with_a_message_naming_it(cli, ids) -> None:
    result = cli("trace", "nobody")
    assert result.code == 1 and "no request with request id or client request id 'nobody'" in result.err
    result = cli("requests", "--slot", SLOT, "--cursor", "seq:1:x")
    assert result.code == 1 and "cursor: 'seq:1:x' is not a cursor" in result.err


def _listed(operations: LocalOperations, **filters) -> list[str]:
    return [row.request_id for row in operations.requests(RequestFilter(slot=SLOT, **filters)).requests]


def test_browsing_finds_disagreements_errors_and_the_biggest_losses(cli, workspace_dir, ids) -> None:
    shown = cli("requests", "--slot", SLOT, "--disagree", ids["cheap-mini"])
    assert shown.code == 0 and "r-later" in shown.out and "technical" in shown.out
    operations = _local(workspace_dir)
    with operations.registry:
        assert _listed(operations) == ["r-later", "r-right"]
        # careful-large's first line agrees with the champion (the slot's metric reads only that)
        assert _listed(operations, disagree=ids["careful-large"]) == []
        assert _listed(operations, disagree=ids["cheap-mini"]) == ["r-later", "r-right"]
        assert _listed(operations, errors=True) == ["r-right"]
        assert _listed(operations, errors=True, version=ids["cheap-mini"]) == []
        assert _listed(operations, version=ids["careful-mini"]) == ["r-right"]
        worst = operations.requests(RequestFilter(slot=SLOT, worst=ids["cheap-mini"])).requests
        assert [(r.request_id, r.output) for r in worst] == [("r-right", "technical")] and worst[0].d_net < 0
        assert _listed(operations, worst=ids["flash"], errors=True) == ["r-right"]
        assert _listed(operations, worst=ids["cheap-mini"], errors=True) == []
        assert _listed(operations, worst=ids["cheap-mini"], disagree=ids["cheap-mini"]) == ["r-right"]
        with pytest.raises(ConfigError, match="must name the same variant"):
            operations.requests(RequestFilter(slot=SLOT, worst=ids["cheap-mini"], disagree=ids["flash"]))


def _tag(registry: Registry, request_id: str, tags: dict[str, str]) -> None:
    with registry.database.transaction() as db:
        db.execute("UPDATE traffic SET tags = MAP(?, ?) WHERE request_id = ?", [list(tags), list(tags.values()), request_id])


def test_requests_with_tags_are_those_carrying_every_given_tag(cli, workspace_dir, ids) -> None:
    operations = _local(workspace_dir)
    with operations.registry as registry:
        _tag(registry, "r-right", {"tier": "gold", "team": "billing"})
        _tag(registry, "r-later", {"tier": "gold", "team": "sales"})

    def listed(*args: str) -> list[str]:
        result = cli("requests", "--slot", SLOT, *args, "--json")
        assert result.code == 0, result.err
        return [row["request_id"] for row in result.json()["requests"]]

    assert listed("--tag", "tier=gold") == ["r-later", "r-right"]
    assert listed("--tag", "tier=gold", "--tag", "team=billing") == ["r-right"]
    assert listed("--tag", "tier=silver") == []
    assert listed("--tag", "team=sales", "--disagree", ids["cheap-mini"]) == ["r-later"]
    assert listed("--tag", "team=billing", "--worst", ids["cheap-mini"]) == ["r-right"]
    assert listed("--tag", "team=sales", "--worst", ids["cheap-mini"]) == []
    for bad in ("tier", "team=billing --tag team=sales"):
        result = cli("requests", "--slot", SLOT, *f"--tag {bad}".split())
        assert result.code == 2 and "--tag" in result.err, result.err


def _pages(operations: LocalOperations, between=lambda: None, **filters) -> list:
    """Every row of every page, calling `between` after each page."""
    rows, cursor = [], None
    for _ in range(20):
        page = operations.requests(RequestFilter(slot=SLOT, limit=3, cursor=cursor, **filters))
        rows += page.requests
        if (cursor := page.next_cursor) is None:
            return rows
        between()
    raise AssertionError("more pages than requests")


def test_pages_cover_every_request_once_while_new_traffic_arrives(workspace_dir: Path, ids) -> None:
    operations = _local(workspace_dir)
    with operations.registry as registry:
        answers = Answers()
        for i in range(11):
            answers.request(f"p{i:02d}", ids["baseline"], "billing", label="billing")
            answers.result(f"p{i:02d}", ids["cheap-mini"], "other" if i % 2 else "billing")
        _write(registry, answers)

        arrivals = iter(range(20))

        def arrive() -> None:
            late = Answers()
            late.request(f"late{next(arrivals)}", ids["baseline"], "billing")
            _write(registry, late)

        listed = [row.request_id for row in _pages(operations, arrive)]
        assert listed == [f"p{i:02d}" for i in reversed(range(11))] + ["r-later", "r-right"]
        worst = [(row.request_id, row.d_net) for row in _pages(operations, worst=ids["cheap-mini"])]
        assert len(worst) == len({r for r, _ in worst}) == 12 and [d for _, d in worst] == sorted(d for _, d in worst)


def test_error_pages_find_sparse_errors_far_below_the_newest_requests(workspace_dir: Path, ids, monkeypatch) -> None:
    """Errors a few among many (a champion's live one, challengers', a control's), paged in
    windows much smaller than the gaps between them: each page lists them newest first, none
    twice, none skipped."""
    monkeypatch.setattr("scorer.browse.FIRST_WINDOW", 1)
    operations = _local(workspace_dir)
    with operations.registry as registry:
        answers = Answers()
        for i in range(30):
            answers.request(f"s{i:02d}", ids["baseline"], "billing", label="billing", status=500 if i == 28 else 200)
            answers.result(f"s{i:02d}", ids["cheap-mini"], None if i in (2, 17, 25) else "billing",
                           status="error" if i in (2, 17, 25) else "ok")
            if i == 9:
                answers.result(f"s{i:02d}", ids["baseline"], None, status="error", role="control")
        _write(registry, answers)
        mini = [row.request_id for row in _pages(operations, errors=True, version=ids["cheap-mini"])]
        assert mini == ["s25", "s17", "s02"]
        assert [row.request_id for row in _pages(operations, errors=True)] == ["s28", "s25", "s17", "s09", "s02", "r-right"]
        assert _listed(operations, errors=True, version=ids["careful-large"]) == []


def test_the_daemon_traces_and_browses_exactly_as_the_local_database(cli, workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    answers.request("r-all", ids["baseline"], "billing", label="billing")
    for name in ("careful-large", "careful-mini", "cheap-mini", "flash"):  # nothing left to replay
        answers.result("r-all", ids[name], "technical" if name == "flash" else "billing")
    answers.request("r-other", ids["baseline"], "billing")
    _write(registry, answers)
    _tag(registry, "r-all", {"tier": "gold"})
    operations = LocalOperations(registry)
    local_trace = json.loads(operations.trace("r-all").model_dump_json())
    local_page = json.loads(operations.requests(RequestFilter(slot=SLOT, disagree=ids["flash"])).model_dump_json())
    gold_page = json.loads(operations.requests(RequestFilter(slot=SLOT, tags={"tier": "gold"})).model_dump_json())
    registry.close()
    daemon = Daemon(workspace_dir)
    try:
        env = {"SHADOWZOO_ADMIN_TOKEN": TOKEN}
        assert cli("trace", "r-all", "--json", env=env).json() == local_trace
        assert cli("requests", "--slot", SLOT, "--disagree", ids["flash"], "--json", env=env).json() == local_page
        assert local_page["requests"][0]["output"] == "technical"
        assert cli("requests", "--slot", SLOT, "--tag", "tier=gold", "--json", env=env).json() == gold_page
        assert [row["request_id"] for row in gold_page["requests"]] == ["r-all"]
        status, answer, _ = daemon.call("GET", f"/admin/requests?slot={SLOT}&tag=tier=gold&tag=tier=gold")
        assert status == 200 and answer == gold_page
        status, answer, _ = daemon.call("GET", f"/admin/requests?slot={SLOT}&tag=tier")
        assert status == 400 and answer["error"]["message"].startswith("tag: 'tier' is not key=value"), answer
        status, answer, _ = daemon.call("GET", "/admin/requests/r-all")
        assert status == 200 and answer == local_trace
        status, answer, _ = daemon.call("GET", f"/admin/requests?slot={SLOT}&limit=0")
        assert status == 400 and answer["error"]["message"].startswith("limit:")
        status, answer, _ = daemon.call("GET", f"/admin/requests?slot={SLOT}&worts=x")
        assert status == 400 and answer["error"]["message"].startswith("worts:")
        status, answer, _ = daemon.call("GET", "/admin/requests/nobody")
        assert status == 404 and answer["error"]["type"] == "not_found"
    finally:
        daemon.stop()


def test_a_trace_shows_each_metric_of_a_weighted_mix_against_the_latest_label(workspace_dir: Path, monkeypatch) -> None:
    (workspace_dir / "whole_answer.py").write_text(
        "def equals_label(request, output, outcome):\n    return 1.0 if output == outcome else 0.0\n")
    monkeypatch.syspath_prepend(str(workspace_dir))
    edit_config(workspace_dir, lambda c: c["slots"][SLOT].update(metrics=[
        {"type": "exact_match", "first_line": True},
        {"type": "python", "name": "whole", "entrypoint": "whole_answer:equals_label", "weight": 3}]))
    registry, ids = demo_registry(workspace_dir)
    try:
        answers = Answers()
        answers.request("c1", ids["baseline"], "billing\nrefund the second charge", label="billing")
        _write(registry, answers)
        champion = LocalOperations(registry).trace("c1").champion
        assert [(m.metric, m.weight, m.value) for m in champion.metrics] == [("exact_match", 1.0, 1.0), ("whole", 3.0, 0.0)]
        assert champion.quality == pytest.approx(0.25)
        answers.label("c1", "technical")  # a corrected label: every metric reads it
        _write(registry, answers)
        traced = LocalOperations(registry).trace("c1")
        assert [m.value for m in traced.champion.metrics] == [0.0, 0.0] and traced.champion.quality == 0.0
        assert [(o.value, o.used) for o in traced.outcomes] == [("billing", False), ("technical", True)]
    finally:
        registry.close()
        sys.modules.pop("whole_answer", None)


def _seeded(workspace_dir: Path, monkeypatch) -> tuple[Registry, dict[str, str]]:
    """A seeded slot scored over four refreshes: answers that tie, errors, a control replay,
    labels that come late and labels corrected after their pairs entered, and unlabelled requests."""
    monkeypatch.setattr("scorer.pairing.WORST_DEPTH", 4)  # pages run past the kept worst pairs
    registry, ids = demo_registry(workspace_dir)
    rng, labels = random.Random(15), ["billing", "technical", "account"]
    challengers = [ids["careful-large"], ids["cheap-mini"], ids["flash"]]
    late: list[str] = []
    for round_ in range(4):
        answers = Answers()
        for request_id in late:
            answers.label(request_id, rng.choice(labels))
        if round_:  # after its pairs entered: they do not move
            answers.label(f"q{round_ - 1}-00", "other")
        late = []
        for i in range(10 if round_ < 3 else 0):
            request_id, truth = f"q{round_}-{i:02d}", rng.choice(labels)
            labelled = rng.random() < 0.7
            answers.request(request_id, ids["baseline"], rng.choice(labels), label=truth if labelled else None,
                            tokens=(100, rng.choice([10, 20])))
            late += [] if labelled or rng.random() < 0.3 else [request_id]
            for version in challengers:
                failed = rng.random() < 0.15
                answers.result(request_id, version, None if failed else rng.choice(labels),
                               status="error" if failed else "ok", tokens=(120, rng.choice([10, 20])))
            if i == 3:
                answers.result(request_id, ids["baseline"], "billing", role="control")
        _write(registry, answers)
    return registry, ids


def _reference_answers(registry: Registry) -> dict[tuple[str, str], dict]:
    """Every answer of the slot, scored by the scorer's two-pass query (`AnswerQuery.sql`)."""
    config = registry.workspace.slot(SLOT)
    query = AnswerQuery(slot=SLOT, since=EPOCH, plan=plan_quality(config.metrics, "metrics"), scoring=config.scoring)
    prices = {model: price for model, (price, _) in effective_prices(registry.workspace).items()}
    with registry.database.reading() as db, registered(db, "variant_prices",
                                                       variant_prices(registry.variants(slot=SLOT), prices).to_arrow()):
        cursor = db.execute(f"SELECT request_id, version_id, source, quality, cost_usd, latency_cost, net FROM ({query.sql()})")
        return {(row[0], f"{row[2]}:{row[1]}"): dict(zip(("quality", "cost_usd", "latency_cost_usd", "net"), row[3:]))
                for row in cursor.fetchall()}


def test_a_trace_scores_every_answer_exactly_as_the_scorers_own_query_and_its_pairs_as_stored(workspace_dir, monkeypatch):
    registry, ids = _seeded(workspace_dir, monkeypatch)
    with registry:
        reference = _reference_answers(registry)
        with registry.database.reading() as db:
            stored = {(r, v): d for r, v, d in db.execute(
                "SELECT t.request_id, p.version_id, p.d_net FROM paired p JOIN traffic t ON t.seq = p.request_seq").fetchall()}
            request_ids = [row[0] for row in db.execute("SELECT request_id FROM traffic ORDER BY seq").fetchall()]
        entered = 0
        for request_id in request_ids:
            traced = trace_request(registry, request_id)
            for answer in [traced.champion, *traced.challengers]:
                source = {"champion": "live", "challenger": "shadow", "control": "control"}[answer.role]
                expected = reference.get((request_id, f"{source}:{answer.version_id}"))
                shown = {"quality": answer.quality, "cost_usd": answer.cost_usd,
                         "latency_cost_usd": answer.latency_cost_usd, "net": answer.net}
                assert shown == (expected or dict.fromkeys(shown)), (request_id, answer.version_id)
                if answer.role == "challenger" and answer.pair.entered:
                    entered += 1
                    assert answer.pair.d_net == stored[(request_id, answer.version_id)]
                    if not request_id.endswith("-00"):  # a corrected label leaves its pairs as they entered
                        assert answer.pair.d_net == answer.net - traced.champion.net, (request_id, answer.version_id)
        assert entered == len(stored) > 40


def test_the_prices_a_trace_writes_into_its_query_are_the_scorers_prices_exactly(workspace_dir) -> None:
    registry, _ = demo_registry(workspace_dir)
    with registry:
        prices = {model: price for model, (price, _) in effective_prices(registry.workspace).items()}
        table = variant_prices(registry.variants(slot=SLOT), prices)
        with registry.database.reading() as db:
            assert db.sql(variant_prices_sql(table)).pl().equals(table) and len(table) > 1
            assert db.sql(variant_prices_sql(table.clear())).pl().equals(table.clear())


def _reference_worst(registry: Registry, version_id: str) -> list[tuple[str, float]]:
    with registry.database.reading() as db:
        return db.execute(
            "SELECT t.request_id, p.d_net FROM paired p JOIN traffic t ON t.seq = p.request_seq WHERE p.version_id = ? "
            "AND p.period_id = (SELECT max(period_id) FROM evaluation_periods) ORDER BY p.d_net, p.request_seq DESC",
            [version_id]).fetchall()


def _worst_pages(registry: Registry, version_id: str, limit: int) -> list[tuple[str, float]]:
    rows, cursor = [], None
    for _ in range(100):
        with registry.database.reading() as db:
            page = browse_requests(db, RequestFilter(slot=SLOT, worst=version_id, limit=limit, cursor=cursor))
        rows += [(row.request_id, row.d_net) for row in page.requests]
        if (cursor := page.next_cursor) is None:
            return rows
    raise AssertionError("more pages than pairs")


def _assert_worst_pages_are_the_reference(registry: Registry, version_ids: list[str]) -> None:
    for version_id in version_ids:
        reference = _reference_worst(registry, version_id)
        assert len(reference) > 10 and len({d for _, d in reference}) < len(reference)  # ties among them
        with registry.database.reading() as db:
            kept = db.execute("SELECT request_seq, d_net FROM worst_pairs WHERE version_id = ? "
                              "ORDER BY d_net, request_seq DESC", [version_id]).fetchall()
            first = db.execute("SELECT request_seq, d_net FROM paired WHERE version_id = ? "
                               "ORDER BY d_net, request_seq DESC LIMIT 4", [version_id]).fetchall()
        assert kept == first  # merged refresh after refresh, still exactly the first pairs
        for limit in (1, 2, 3, 5):
            assert _worst_pages(registry, version_id, limit) == reference, (version_id, limit)


def test_worst_pages_follow_every_pair_in_order_within_and_past_the_kept_worst_pairs(workspace_dir, monkeypatch):
    registry, ids = _seeded(workspace_dir, monkeypatch)
    with registry:
        challengers = [ids["careful-large"], ids["cheap-mini"], ids["flash"]]
        _assert_worst_pages_are_the_reference(registry, challengers)
        with registry.database.transaction() as db:  # retention deletes the oldest requests' pairs
            db.execute("DELETE FROM paired WHERE request_seq IN (SELECT seq FROM traffic ORDER BY seq LIMIT 8)")
            reread_slot_worst(db, SLOT)
        _assert_worst_pages_are_the_reference(registry, challengers)


def test_an_upgraded_database_keeps_its_worst_pairs_and_pages_them_as_before(workspace_dir, monkeypatch):
    registry, ids = _seeded(workspace_dir, monkeypatch)
    version_id = ids["cheap-mini"]
    before = _worst_pages(registry, version_id, 2)
    with registry.database.transaction() as db:  # as the database stood before migration 10
        db.execute("DROP TABLE worst_pairs")
        db.execute("DELETE FROM schema_migrations WHERE version = 10")
    registry.close()
    with Registry.open(load_workspace(workspace_dir)) as registry:
        with registry.database.reading() as db:
            assert db.execute("SELECT count(*) FROM worst_pairs").fetchone()[0] == \
                db.execute("SELECT count(*) FROM paired").fetchone()[0]  # fewer than 1000 per challenger: all
        assert _worst_pages(registry, version_id, 2) == before == _reference_worst(registry, version_id)
