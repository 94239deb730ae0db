"""Observer mode: exchanges an application reports itself become evidence like gateway traffic."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from registry import utcnow
from shadow.ingest import ingest_spool
from shadow.spool_records import TrafficRecord
from shadow.spool import spool_dir, write_segment
from tests.scoring_data import SLOT, demo_registry
from tests.servers import edit_config, start_simulator

TICKETS = Path(__file__).resolve().parent.parent / "examples" / "demo" / "tickets.jsonl"


def observed(request_id: str, received_at, **fields) -> TrafficRecord:
    """An exchange posted to /v1/capture: no champion version unless it names one."""
    return TrafficRecord(request_id=request_id, slot=SLOT, received_at=received_at, source="capture",
                         request={"messages": [{"role": "user", "content": request_id}]}, status=200,
                         output="billing", **fields)


def test_an_observed_exchange_is_the_answer_of_the_champion_when_it_was_received(workspace_dir: Path) -> None:
    registry, ids = demo_registry(workspace_dir)
    first_promotion = registry.champion_since(SLOT)
    between = utcnow()
    registry.promote(SLOT, ids["careful-large"], "tester", "better", {})
    after = utcnow() + timedelta(seconds=1)
    spool = spool_dir(registry.workspace.state_dir)
    records = [
        observed("before-any-champion", first_promotion - timedelta(hours=1)),
        observed("under-baseline", between),
        observed("under-careful-large", after),
        observed("named", after, champion_version=ids["cheap-mini"]),
    ]
    write_segment(spool, [record.model_dump_json().encode() for record in records])
    ingest_spool(registry.database, spool)
    stored = dict(registry.database.connection.execute("SELECT request_id, champion_version FROM traffic").fetchall())
    assert stored == {"before-any-champion": None, "under-baseline": ids["baseline"],
                      "under-careful-large": ids["careful-large"], "named": ids["cheap-mini"]}
    registry.close()


@pytest.fixture
def simulator():
    handle = start_simulator(fast=True)
    yield handle
    handle.stop()


def test_observed_exchanges_pair_with_challengers_like_gateway_traffic(workspace_dir: Path, tmp_path: Path, cli,
                                                                       simulator) -> None:
    edit_config(workspace_dir, lambda c: c["providers"]["sim"].update(base_url=simulator.base_url))
    registry, ids = demo_registry(workspace_dir, min_samples=20)
    registry.close()
    tickets = [json.loads(line) for line in TICKETS.read_text().splitlines()][:30]
    exchanges = tmp_path / "exchanges.jsonl"
    exchanges.write_text("".join(json.dumps({
        "request": {"model": "sim-large", "messages": [{"role": "user", "content": ticket["input"]}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": ticket["expected"]}}],
                     "usage": {"prompt_tokens": 40, "completion_tokens": 2}},
        "latency_ms": 300, "client_request_id": f"app-{index}",
    }) + "\n" for index, ticket in enumerate(tickets)))
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"client_request_id": f"app-{index}", "label": ticket["expected"]}) + "\n"
                              for index, ticket in enumerate(tickets)))
    env = {"SIM_API_KEY": "sim"}
    assert cli("ingest", "traffic", str(exchanges), "--slot", SLOT, env=env).code == 0
    replayed = cli("replay", "--slot", SLOT, "--json", env=env)
    assert replayed.code == 0, replayed.err
    assert cli("ingest", "outcomes", str(labels), env=env).code == 0  # the labels come late
    board = cli("leaderboard", "--slot", SLOT, "--format", "json", env=env).json()
    rows = {row["version_id"]: row for row in board["rows"]}
    assert rows[ids["baseline"]]["n"] == 30 and rows[ids["baseline"]]["mean_quality"] == 1.0
    for challenger in ("careful-large", "careful-mini", "cheap-mini"):
        assert rows[ids[challenger]]["comparison"]["pairs"] == 30
        assert rows[ids[challenger]]["n"] == 30
