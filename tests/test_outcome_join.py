"""Labels and reactions joined to their requests by ingest, on both backends (issue 16): an
outcome whose request is stored already, or comes in the same segment, is stored joined; one
that comes first waits unjoined and is joined when its request arrives; a corrected label is
the one the scores read. `IngestReport.joined_outcomes` counts both kinds of join."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import count
from typing import Any

import pytest

from registry import Registry, load_workspace
from scorer.trace import trace_request
from shadow.ingest import IngestReport, ingest_spool
from shadow.spool import spool_dir, write_segment
from shadow.spool_records import OutcomeRecord, SpoolRecord, TrafficRecord
from tests.engines import distributed_section
from tests.servers import champion_workspace

SLOT = "support-triage"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_tests = count()
NO_UPSTREAM = "http://127.0.0.1:9/v1"


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def registry(request, tmp_path_factory) -> Registry:
    """The demo workspace's registry, `baseline` the champion, on each backend (the lake a
    database and prefix of the module's own); nothing here calls a provider."""
    settings = {}
    if request.param == "distributed":
        request.getfixturevalue("engine_credentials")
        settings = {"backend": "distributed", "distributed": distributed_section(
            *(request.getfixturevalue(name) for name in ("postgres", "object_store", "lake_extensions")))}
    workspace_dir = champion_workspace(tmp_path_factory.mktemp(request.param) / "ws", NO_UPSTREAM, settings=settings)
    with Registry.open(load_workspace(workspace_dir)) as opened:
        yield opened


@dataclass
class Requests:
    """This test's own request and client ids (the module's tests share a database), answered by the champion."""

    r1: str
    r2: str
    c1: str
    champion: str

    def traffic(self, request_id: str, client_request_id: str | None = None,
                at: timedelta = timedelta()) -> TrafficRecord:
        return TrafficRecord(request_id=request_id, client_request_id=client_request_id, slot=SLOT,
                             received_at=T0 + at, champion_version=self.champion, status=200, output="billing",
                             request={"messages": [{"role": "user", "content": "where is my refund?"}]},
                             latency_ms=100.0)


@pytest.fixture
def ids(registry: Registry) -> Requests:
    n = next(_tests)
    return Requests(f"join-{n}-r1", f"join-{n}-r2", f"join-{n}-c1", registry.champion(SLOT).version_id)


def label(request_key: str, value: Any = "billing", at: timedelta = timedelta(minutes=1)) -> OutcomeRecord:
    return OutcomeRecord(request_key=request_key, kind="label", value=value, received_at=T0 + at)


def ingest(registry: Registry, *records: SpoolRecord) -> IngestReport:
    """One segment of `records` ingested."""
    spool = spool_dir(registry.workspace.state_dir)
    write_segment(spool, [record.model_dump_json().encode() for record in records])
    return ingest_spool(registry.database, spool)


def joined(registry: Registry, *keys: str) -> list[tuple]:
    """(request_key, value, request_id, whether request_seq is that request's seq) of the outcomes of `keys`."""
    with registry.database.reading() as db:
        return db.execute(
            "SELECT o.request_key, o.value_json, o.request_id, coalesce(o.request_seq = t.seq, false) FROM outcomes o "
            "LEFT JOIN traffic t ON t.request_id = o.request_id WHERE list_contains(?, o.request_key) ORDER BY 1, 2",
            [list(keys)]).fetchall()


def test_a_label_for_a_stored_request_is_stored_joined_to_it(registry: Registry, ids: Requests) -> None:
    ingest(registry, ids.traffic(ids.r1), ids.traffic(ids.r2, ids.c1))
    report = ingest(registry, label(ids.r1), label(ids.c1, "shipping"))
    assert (report.outcome_rows, report.joined_outcomes) == (2, 2)
    assert joined(registry, ids.r1, ids.c1) == [
        (ids.c1, '"shipping"', ids.r2, True), (ids.r1, '"billing"', ids.r1, True)]


def test_a_label_in_the_same_segment_as_its_request_is_stored_joined_to_it(
    registry: Registry, ids: Requests
) -> None:
    report = ingest(registry, label(ids.c1, at=timedelta()), ids.traffic(ids.r1, ids.c1), label(ids.r1))
    assert (report.traffic_rows, report.outcome_rows, report.joined_outcomes) == (1, 2, 2)
    assert joined(registry, ids.r1, ids.c1) == [
        (ids.c1, '"billing"', ids.r1, True), (ids.r1, '"billing"', ids.r1, True)]


def test_a_label_before_its_request_waits_unjoined_and_is_joined_when_the_request_arrives(
    registry: Registry, ids: Requests
) -> None:
    early = ingest(registry, label(ids.r1), label(ids.c1, "shipping"))
    assert (early.outcome_rows, early.joined_outcomes) == (2, 0)
    assert joined(registry, ids.r1, ids.c1) == [
        (ids.c1, '"shipping"', None, False), (ids.r1, '"billing"', None, False)]
    late = ingest(registry, ids.traffic(ids.r1), ids.traffic(ids.r2, ids.c1))
    assert (late.outcome_rows, late.joined_outcomes) == (0, 2)
    assert joined(registry, ids.r1, ids.c1) == [
        (ids.c1, '"shipping"', ids.r2, True), (ids.r1, '"billing"', ids.r1, True)]
    assert ingest(registry, ids.traffic(f"{ids.r1}-unrelated")).joined_outcomes == 0


def test_a_client_id_used_twice_joins_its_label_to_the_latest_request_carrying_it(
    registry: Registry, ids: Requests
) -> None:
    report = ingest(registry, ids.traffic(ids.r1, ids.c1), ids.traffic(ids.r2, ids.c1, at=timedelta(seconds=1)),
                    label(ids.c1))
    assert report.joined_outcomes == 1
    assert joined(registry, ids.c1) == [(ids.c1, '"billing"', ids.r2, True)]


@pytest.mark.parametrize("arrival", ["after the request", "the first before it, the correction with it",
                                     "both before it"])
def test_a_corrected_label_is_the_one_the_scores_read(registry: Registry, ids: Requests, arrival: str) -> None:
    first, correction = label(ids.r1, "billing"), label(ids.r1, "shipping", at=timedelta(minutes=2))
    segments = {"after the request": [[ids.traffic(ids.r1)], [first], [correction]],
                "the first before it, the correction with it": [[first], [ids.traffic(ids.r1), correction]],
                "both before it": [[first], [correction], [ids.traffic(ids.r1)]]}[arrival]
    reports = [ingest(registry, *records) for records in segments]
    assert sum(report.joined_outcomes for report in reports) == 2
    assert joined(registry, ids.r1) == [(ids.r1, '"billing"', ids.r1, True),
                                          (ids.r1, '"shipping"', ids.r1, True)]
    outcomes = trace_request(registry, ids.r1).outcomes
    assert [(outcome.value, outcome.used) for outcome in outcomes] == [("billing", False), ("shipping", True)]
