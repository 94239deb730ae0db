"""Slices of the leaderboard by request tags (`leaderboard --where k=v`), through the CLI, on a real DuckDB file."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import Registry, load_workspace
from scorer.sequential import PairedMoments, alpha_share, confidence_interval
from scorer.service import Scorer
from tests.backends import significant
from tests.scoring_data import Answers, demo_registry, simulate
from tests.test_admin_api import TOKEN, Daemon
from zoo import load_zoo, register_specs

SLOT = "support-triage"


@pytest.fixture
def tagged(workspace_dir: Path) -> dict[str, str]:
    """300 labelled requests answered by the champion and two challengers; every third is `tier=gold`,
    the others `tier=silver`, and every second of the gold ones also `team=billing`."""
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95, ids["cheap-mini"]: 0.6}, n=300)
    answers.write(registry)
    with registry.database.transaction() as db:
        db.execute("UPDATE traffic SET tags = CASE WHEN seq % 3 = 0 THEN MAP {'tier': 'gold'} "
                   "ELSE MAP {'tier': 'silver'} END")
        db.execute("UPDATE traffic SET tags = map_concat(tags, MAP {'team': 'billing'}) WHERE seq % 6 = 0")
    registry.close()
    return ids


def _stored(workspace_dir: Path, sql: str, params: list | None = None) -> list[tuple]:
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        return db.execute(sql, params or []).fetchall()


def _row(board: dict, version_id: str) -> dict:
    return next(row for row in board["rows"] if row["version_id"] == version_id)


def test_a_slice_is_paired_on_its_own_requests_at_its_own_alpha_share(cli, workspace_dir: Path, tagged) -> None:
    whole = cli("leaderboard", "--slot", SLOT, "--format", "json").json()
    board = cli("leaderboard", "--slot", SLOT, "--where", "tier=gold", "--format", "json").json()
    scoring = load_workspace(workspace_dir).slot(SLOT).scoring
    assert board["slice"]["where"] == {"tier": "gold"} and board["slice"]["position"] == 1
    assert board["slice"]["alpha"] == pytest.approx(scoring.alpha * alpha_share(1))
    assert board["recommendation"] is None
    pairs = _stored(workspace_dir, "SELECT p.version_id, count(*), avg(p.d_net), var_pop(p.d_net) * count(*) "
                                   "FROM paired p JOIN traffic t ON t.seq = p.request_seq "
                                   "WHERE t.tags['tier'] = 'gold' GROUP BY 1")
    assert len(pairs) == 2
    floor = scoring.variance_floor_fraction * scoring.value_per_point ** 2
    for version_id, n, mean, m2 in pairs:
        comparison = _row(board, version_id)["comparison"]
        alpha = _row(whole, version_id)["comparison"]["alpha"] * alpha_share(1)
        lower, upper = confidence_interval(PairedMoments(n=n, mean=mean, m2=m2), alpha, scoring.min_samples, floor)
        assert comparison["pairs"] == n == 100 and comparison["alpha"] == pytest.approx(alpha)
        assert comparison["net"]["mean"] == pytest.approx(mean, abs=1e-12)
        assert (comparison["net"]["lower"], comparison["net"]["upper"]) == pytest.approx((lower, upper))
    # the champion's descriptive columns over the slice alone, by hand
    (n, quality), = _stored(workspace_dir, "SELECT count(*), avg(CASE WHEN t.output = (o.value_json->>'$') THEN 1.0 "
                                            "ELSE 0.0 END) FROM traffic t JOIN outcomes o ON o.request_id = t.request_id "
                                            "WHERE t.tags['tier'] = 'gold'")
    champion = board["rows"][0]
    assert (champion["n"], champion["mean_quality"]) == (n, pytest.approx(quality))
    assert champion["mean_quality"] != pytest.approx(whole["rows"][0]["mean_quality"])


def test_several_conditions_select_requests_with_every_tag_and_each_slice_keeps_its_share(
    cli, workspace_dir: Path, tagged
) -> None:
    first = cli("leaderboard", "--slot", SLOT, "--where", "team=billing", "--where", "tier=gold", "--format", "json")
    board = first.json()
    assert board["rows"][0]["n"] == 50 and board["slice"]["position"] == 1
    second = cli("leaderboard", "--slot", SLOT, "--where", "tier=silver", "--format", "json").json()
    assert second["rows"][0]["n"] == 200 and second["slice"]["position"] == 2
    again = cli("leaderboard", "--slot", SLOT, "--where", "tier=gold", "--where", "team=billing", "--format", "json")
    assert again.json()["slice"]["position"] == 1, "the same slice, however written, keeps its α share"
    assert cli("leaderboard", "--slot", SLOT, "--where", "tier=bronze", "--format", "json").json()["rows"][0]["n"] == 0


def test_a_slice_view_leaves_the_periods_snapshots_and_running_intersection_alone(
    cli, workspace_dir: Path, tagged
) -> None:
    before = cli("leaderboard", "--slot", SLOT, "--format", "json").json()
    snapshots = _stored(workspace_dir, "SELECT count(*), max(snapshot_id) FROM leaderboard_snapshots")
    table = cli("leaderboard", "--slot", SLOT, "--where", "tier=gold")
    assert table.code == 0 and "slice tier=gold: its own α share" in table.out
    assert "recommendation:" not in table.out
    assert _stored(workspace_dir, "SELECT count(*), max(snapshot_id) FROM leaderboard_snapshots") == snapshots
    after = cli("leaderboard", "--slot", SLOT, "--format", "json").json()
    for row in before["rows"][1:]:
        assert _row(after, row["version_id"])["comparison"] == row["comparison"]
    assert after["recommendation"] == before["recommendation"] is not None
    assert after["slice"] is None


def test_a_where_that_is_not_key_equals_value_is_a_usage_error_naming_it(cli, workspace_dir: Path, tagged) -> None:
    result = cli("leaderboard", "--slot", SLOT, "--where", "tier")
    assert result.code == 2 and "--where" in result.err and "'tier' is not key=value" in result.err


def test_a_report_of_a_slice_says_what_it_covers(cli, workspace_dir: Path, tagged) -> None:
    written = cli("report", "--slot", SLOT, "--where", "tier=gold", "--out", "gold.md")
    text = (workspace_dir / "gold.md").read_text()
    assert written.code == 0 and "slice tier=gold: its own α share" in text
    assert "A slice view recommends nothing" in text


def test_a_slice_through_the_running_daemon_is_the_same_as_without_it(cli, workspace_dir: Path, tagged) -> None:
    local = cli("leaderboard", "--slot", SLOT, "--where", "tier=gold", "--format", "json").json()
    daemon = Daemon(workspace_dir)
    try:
        remote = cli("leaderboard", "--slot", SLOT, "--where", "tier=gold", "--format", "json",
                     env={"SHADOWZOO_ADMIN_TOKEN": TOKEN}).json()
        status, body, _ = daemon.call("POST", "/admin/leaderboard", {"slot": SLOT, "where": "tier=gold"})
    finally:
        daemon.stop()
    assert remote["slice"] == local["slice"]
    for version_id in (tagged["baseline"], tagged["careful-large"], tagged["cheap-mini"]):  # the daemon's runner
        assert significant(_row(remote, version_id)) == significant(_row(local, version_id))  # answers the others
    assert status == 400 and body["error"]["message"].startswith("where: "), body


def test_a_slice_of_a_slot_without_a_champion_is_described_and_never_stored(workspace_dir: Path) -> None:
    workspace = load_workspace(workspace_dir)
    with Registry.open(workspace) as registry:
        zoo = load_zoo(workspace.specs_dir)
        register_specs(zoo.specs, zoo, workspace, registry)
        board = Scorer(workspace, registry).refresh(SLOT, where={"tier": "gold"})
        with registry.database.reading() as db:
            assert db.execute("SELECT count(*) FROM leaderboard_snapshots").fetchone() == (0,)
    assert board.slice is not None and board.slice.alpha == 0.0 and "nothing is paired" in board.slice.note
    assert board.recommendation is None
