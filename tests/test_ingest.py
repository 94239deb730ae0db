"""Spool ingest into DuckDB, and loading JSONL logs through the spool: idempotent, lossless, quarantining."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import typer

import shadow.ingest as ingest_module
from ops.session import Session
from registry import Registry, load_workspace
from shadow.ingest import IngestReport, ingest_spool
from shadow.logfile import LogFileError, read_outcome_log, read_traffic_log, spool_records
from shadow.spool_records import OutcomeRecord, SpoolRecord, TrafficRecord
from shadow.spool import QUARANTINE, CorruptSegment, read_segment, ready_segments, spool_dir, write_segment
from shadow.spool_source import LocalSpool
from tests.servers import edit_config

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def traffic(request_id: str, client_request_id: str | None = None, **fields: Any) -> TrafficRecord:
    values: dict[str, Any] = {
        "request_id": request_id, "client_request_id": client_request_id, "slot": "support-triage",
        "received_at": T0, "request": {"model": "support-triage", "messages": [{"role": "user", "content": "hi"}]},
        "status": 200, "output": "billing", "usage": {"prompt_tokens": 11, "completion_tokens": 2},
        "latency_ms": 120.5,
    }
    return TrafficRecord(**{**values, **fields})


def label(request_key: str, value: Any = "billing") -> OutcomeRecord:
    return OutcomeRecord(request_key=request_key, kind="label", value=value, received_at=T0)


def segment(spool: Path, *records: SpoolRecord) -> Path:
    return write_segment(spool, [record.model_dump_json().encode() for record in records])


def rows(registry: Registry, sql: str) -> list[tuple]:
    with registry.database.reading() as db:
        return db.execute(sql).fetchall()


def count(registry: Registry, table: str) -> int:
    return rows(registry, f"SELECT count(*) FROM {table}")[0][0]


@pytest.fixture
def spool(registry: Registry) -> Path:
    path = spool_dir(registry.workspace.state_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def ingest(registry: Registry, spool: Path, **options: Any) -> IngestReport:
    return ingest_spool(registry.database, spool, **options)


# -- the spool --------------------------------------------------------------------------


def test_a_segment_is_ingested_into_traffic_and_deleted(registry: Registry, spool: Path) -> None:
    segment(spool, traffic("r1", "c1"), traffic("r2"))
    report = ingest(registry, spool)
    assert (report.segments, report.traffic_rows, report.duplicates, report.quarantined) == (1, 2, 0, [])
    assert ready_segments(spool) == []
    stored = rows(registry, "SELECT request_id, client_request_id, slot, received_at, status, output, prompt_tokens, "
                            "completion_tokens, usage_json, latency_ms, stream, partial, source FROM traffic "
                            "ORDER BY request_id")
    assert stored[0] == ("r1", "c1", "support-triage", datetime(2025, 3, 1, 12, 0), 200, "billing", 11, 2,
                         '{"prompt_tokens":11,"completion_tokens":2}', 120.5, False, False, "gateway")
    assert rows(registry, "SELECT request_json->>'$.messages[0].content' FROM traffic LIMIT 1") == [("hi",)]
    assert rows(registry, "SELECT records, status FROM spool_segments") == [(2, "ingested")]


def test_cached_and_reasoning_token_counts_are_read_from_the_usage_at_ingest(registry: Registry, spool: Path) -> None:
    usage = {"prompt_tokens": 900, "completion_tokens": 300, "prompt_tokens_details": {"cached_tokens": 512},
             "completion_tokens_details": {"reasoning_tokens": 256}}
    segment(spool, traffic("r1", usage=usage), traffic("r2", usage=None), traffic("r3"))
    ingest(registry, spool)
    assert rows(registry, "SELECT prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens FROM traffic "
                          "ORDER BY request_id") == [(900, 300, 512, 256), (None, None, None, None), (11, 2, None, None)]


def test_the_same_segment_ingested_twice_adds_no_rows(registry: Registry, spool: Path) -> None:
    path = segment(spool, traffic("r1"), label("r1"))
    content = path.read_bytes()
    ingest(registry, spool)
    path.write_bytes(content)
    (spool / f"copy-{path.name}").write_bytes(content)
    report = ingest(registry, spool)
    assert report.already_ingested == 1
    assert (report.segments, report.traffic_rows, report.outcome_rows, report.duplicates) == (1, 0, 0, 2)
    assert (count(registry, "traffic"), count(registry, "outcomes")) == (1, 1)
    assert ready_segments(spool) == []


def test_the_same_request_in_two_segments_is_stored_once(registry: Registry, spool: Path) -> None:
    segment(spool, traffic("r1", output="first"), traffic("r2"))
    segment(spool, traffic("r1", output="second"), traffic("r3"))
    report = ingest(registry, spool)
    assert (report.segments, report.traffic_rows, report.duplicates) == (2, 3, 1)
    assert rows(registry, "SELECT output FROM traffic WHERE request_id = 'r1'") == [("first",)]


def test_a_crash_after_commit_and_before_delete_is_finished_without_duplicates(
    registry: Registry, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment(spool, traffic("r1"), traffic("r2"))

    def crash(source: LocalSpool, path: Path) -> None:
        raise KeyboardInterrupt("killed after commit")

    monkeypatch.setattr(LocalSpool, "dispose", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest(registry, spool)
    monkeypatch.undo()
    assert len(ready_segments(spool)) == 1 and count(registry, "traffic") == 2
    report = ingest(registry, spool)
    assert (report.already_ingested, report.segments, report.traffic_rows) == (1, 0, 0)
    assert ready_segments(spool) == [] and count(registry, "traffic") == 2


def test_a_crash_before_commit_leaves_the_segment_for_the_next_run(
    registry: Registry, spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment(spool, traffic("r1"), label("r1"))

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ingest_module, "_outcome_frame", crash)
    with pytest.raises(KeyboardInterrupt):
        ingest(registry, spool)
    monkeypatch.undo()
    assert (count(registry, "traffic"), count(registry, "spool_segments"), len(ready_segments(spool))) == (0, 0, 1)
    report = ingest(registry, spool)
    assert (report.traffic_rows, report.outcome_rows) == (1, 1)


def test_bad_lines_are_quarantined_with_their_reasons_and_every_good_line_is_ingested(
    registry: Registry, spool: Path
) -> None:
    first = segment(spool, traffic("r1"))
    broken = write_segment(spool, [traffic("r2").model_dump_json().encode(), b'{"type": "traffic", "request_id": '])
    invalid = write_segment(spool, [b'{"type": "traffic", "request_id": "r3", "received_at": "2025-03-01T12:00:00"}'])
    last = segment(spool, traffic("r4"))
    report = ingest(registry, spool)
    assert (report.segments, report.traffic_rows, report.quarantined_records) == (3, 3, 2)
    reasons = dict(report.quarantined)
    assert set(reasons) == {broken.name, invalid.name}
    assert reasons[broken.name].startswith(f"{broken.name}: line 2:")
    assert reasons[invalid.name].startswith(f"{invalid.name}: line 1:")
    assert rows(registry, "SELECT request_id FROM traffic ORDER BY 1") == [("r1",), ("r2",), ("r4",)]
    recorded = {name: (status, reason) for name, status, reason in rows(registry, "SELECT segment, status, reason FROM spool_segments")}
    assert recorded == {first.name: ("ingested", None), last.name: ("ingested", None),
                        broken.name: ("ingested", reasons[broken.name]),
                        invalid.name: ("quarantined", reasons[invalid.name])}
    rejected = spool / QUARANTINE / f"{broken.stem}-rejected.jsonl"
    assert rejected.read_bytes() == b'{"type": "traffic", "request_id": \n'
    assert (spool / QUARANTINE / f"{rejected.name}.reason").read_text().strip() == reasons[broken.name]
    assert (spool / QUARANTINE / invalid.name).exists()
    assert (spool / QUARANTINE / f"{invalid.name}.reason").read_text().strip() == reasons[invalid.name]
    assert ready_segments(spool) == []


def test_a_record_ingest_cannot_store_is_quarantined_and_ingest_goes_on(registry: Registry, spool: Path) -> None:
    good = json.loads(traffic("r1").model_dump_json())
    huge_status = {**good, "request_id": "huge", "status": 2147483648}
    surrogate = json.dumps({**good, "request_id": "lone"}).replace('"billing"', '"bill\\udc80ing"')
    mixed = write_segment(spool, [json.dumps(good).encode(), json.dumps(huge_status).encode(), surrogate.encode(),
                                  traffic("r2").model_dump_json().encode()])
    segment(spool, traffic("r3"))
    report = ingest(registry, spool)
    assert (report.traffic_rows, report.quarantined_records) == (3, 2)
    assert rows(registry, "SELECT request_id FROM traffic ORDER BY 1") == [("r1",), ("r2",), ("r3",)]
    notes = (spool / QUARANTINE / f"{mixed.stem}-rejected.jsonl.reason").read_text().splitlines()
    assert notes[0] == f"{mixed.name}: line 2: field 'status': Input should be less than or equal to 999"
    assert notes[1].startswith(f"{mixed.name}: line 3: cannot be stored")
    segment(spool, traffic("r4"))
    assert ingest(registry, spool).traffic_rows == 1 and ready_segments(spool) == []


def test_an_entry_that_is_not_a_readable_segment_is_quarantined_and_blocks_nothing(
    registry: Registry, spool: Path
) -> None:
    before = segment(spool, traffic("r1"))
    entry = spool / before.name.replace(".jsonl", "-x.jsonl")
    entry.mkdir()
    segment(spool, traffic("r2"))
    report = ingest(registry, spool)
    assert (report.traffic_rows, report.quarantined_records) == (2, 1)
    assert dict(report.quarantined)[entry.name].startswith(f"{entry.name}: cannot be read")
    assert (spool / QUARANTINE / entry.name).is_dir() and ready_segments(spool) == []


def test_a_quarantined_segment_put_back_after_a_fix_is_ingested(registry: Registry, spool: Path) -> None:
    broken = write_segment(spool, [b"not json"])
    ingest(registry, spool)
    segment(spool, traffic("r1")).rename(spool / broken.name)
    report = ingest(registry, spool)
    assert (report.segments, report.traffic_rows) == (1, 1)
    assert rows(registry, "SELECT status, reason FROM spool_segments") == [("ingested", None)]


def test_lines_the_bulk_reader_is_unsure_of_are_stored_as_the_record_models_read_them(
    registry: Registry, spool: Path
) -> None:
    bulk = traffic("bulk", received_at=datetime(2025, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    # Defaults left out and a number as a string: valid for the models, not for the bulk check.
    sparse = json.loads(traffic("sparse", received_at=T0).model_dump_json(exclude_defaults=True))
    sparse["status"] = "200"
    segment(spool, bulk)
    write_segment(spool, [json.dumps(sparse).encode(), label("sparse", {"category": "billing"}).model_dump_json().encode()])
    report = ingest(registry, spool)
    assert (report.traffic_rows, report.outcome_rows, report.quarantined) == (2, 1, [])
    stored = rows(registry, "SELECT request_id, received_at, status, stream, source, prompt_tokens FROM traffic ORDER BY 1")
    assert stored == [("bulk", datetime(2025, 3, 1, 12, 0), 200, False, "gateway", 11),
                      ("sparse", datetime(2025, 3, 1, 12, 0), 200, False, "gateway", 11)]
    outcome = label("sparse", {"category": "billing"})
    assert rows(registry, "SELECT outcome_id, request_id, value_json->>'$.category' FROM outcomes") == [
        (outcome.outcome_id, "sparse", "billing")
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"request_id": 123}, {"slot": None}, {"stream": None}, {"status": 200.5}, {"status": "200"},
        {"latency_ms": "12.5"}, {"request": "hello"}, {"usage": [1]}, {"source": "elsewhere"}, {"type": "other"},
        {"received_at": "2025-03-01"}, {"received_at": "2025-03-01T12:00"}, {"received_at": 1740830400},
        {"received_at": "2025-02-30T12:00:00"}, {"received_at": "2025-03-01T12:00:00.5-05:00"},
        {"client_request_id": ["c1"]}, {"output": {"text": "billing"}}, {"error": 500},
        {"tags": {"team": "billing", "tier": "gold"}}, {"tags": {}}, {"tags": None}, {"tags": {"team": 1}},
        {"tags": {"team": None}}, {"tags": ["team=billing"]}, {"tags": "team=billing"}, {"tags": {"team": ["a"]}},
    ],
)
def test_the_bulk_reader_stores_a_line_exactly_when_the_record_models_accept_it(
    registry: Registry, spool: Path, change: dict[str, Any]
) -> None:
    line = {**json.loads(traffic("r1").model_dump_json()), **change}
    path = write_segment(spool, [json.dumps(line).encode()])
    try:
        expected = read_segment(path)[0]
    except CorruptSegment:
        expected = None
    report = ingest(registry, spool)
    assert (len(report.quarantined), report.traffic_rows) == ((1, 0) if expected is None else (0, 1))
    if expected is not None:
        assert rows(registry, "SELECT slot, received_at, status, latency_ms, output, error, tags FROM traffic") == [(
            expected.slot, expected.received_at.astimezone(UTC).replace(tzinfo=None)
            if expected.received_at.tzinfo else expected.received_at,
            expected.status, expected.latency_ms, expected.output, expected.error, expected.tags or None,
        )]


def test_a_requests_tags_are_its_own_with_its_user_and_metadata_read_from_the_request(
    registry: Registry, spool: Path
) -> None:
    request = {"model": "support-triage", "messages": [{"role": "user", "content": "hi"}], "user": "u-17",
               "metadata": {"team": "billing", "n": 3, "long": "x" * 513}}
    sparse = json.loads(traffic("sparse", request=request, tags={"tier": "gold"}).model_dump_json(exclude_defaults=True))
    sparse["status"] = "200"  # read line by line: both readers store tags alike
    segment(spool, traffic("bulk", request=request, tags={"tier": "gold"}), traffic("plain"))
    write_segment(spool, [json.dumps(sparse).encode()])
    ingest(registry, spool)
    tags = {"tier": "gold", "user": "u-17", "metadata.team": "billing"}
    assert rows(registry, "SELECT request_id, tags FROM traffic ORDER BY 1") == [
        ("bulk", tags), ("plain", None), ("sparse", tags)]


def test_feedback_before_its_traffic_is_kept_and_joined_when_the_traffic_arrives(
    registry: Registry, spool: Path
) -> None:
    segment(spool, label("r1", "billing"), label("client-2", "shipping"),
            OutcomeRecord(request_key="client-2", kind="reaction", value="thumbs_up", received_at=T0))
    report = ingest(registry, spool)
    assert (report.outcome_rows, report.joined_outcomes) == (3, 0)
    assert rows(registry, "SELECT count(*) FROM outcomes WHERE request_id IS NULL") == [(3,)]
    segment(spool, traffic("r1"), traffic("r2", "client-2"), traffic("r3", "unrelated"))
    report = ingest(registry, spool)
    assert report.joined_outcomes == 3
    assert rows(registry, "SELECT request_key, kind, request_id FROM outcomes ORDER BY 1, 2") == [
        ("client-2", "label", "r2"), ("client-2", "reaction", "r2"), ("r1", "label", "r1"),
    ]


def test_feedback_after_its_traffic_is_joined_in_the_same_run(registry: Registry, spool: Path) -> None:
    segment(spool, traffic("r1", "c1"), label("c1"))
    report = ingest(registry, spool)
    assert report.joined_outcomes == 1
    assert rows(registry, "SELECT request_id FROM outcomes") == [("r1",)]


def test_the_same_outcome_sent_twice_is_stored_once(registry: Registry, spool: Path) -> None:
    segment(spool, label("r1", {"category": "billing"}), label("r1", {"category": "billing"}))
    segment(spool, label("r1", {"category": "billing"}), label("r1", {"category": "other"}))
    report = ingest(registry, spool)
    assert (report.outcome_rows, report.duplicates) == (2, 2)


def test_a_backlog_is_ingested_in_bounded_batches_with_progress(registry: Registry, spool: Path) -> None:
    for index in range(5):
        segment(spool, *(traffic(f"r{index}-{n}") for n in range(20)))
    seen: list[tuple[int, int]] = []
    report = ingest(registry, spool, batch_bytes=1, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert (report.segments, report.traffic_rows, count(registry, "traffic")) == (5, 100, 100)


def test_an_empty_segment_is_recorded_and_deleted(registry: Registry, spool: Path) -> None:
    empty = write_segment(spool, [])
    report = ingest(registry, spool)
    assert (report.segments, report.traffic_rows) == (1, 0) and not empty.exists()
    assert rows(registry, "SELECT records, status FROM spool_segments") == [(0, "ingested")]


def test_a_spool_whose_path_looks_like_a_glob_pattern_is_read_as_it_is(registry: Registry, tmp_path: Path) -> None:
    spool = tmp_path / "spool[1]"
    spool.mkdir()
    decoy = tmp_path / "spool1"
    decoy.mkdir()
    path = segment(spool, traffic("r1"))
    (decoy / path.name).write_bytes(segment(decoy, traffic("decoy")).read_bytes())
    report = ingest(registry, spool)
    assert report.traffic_rows == 1
    assert rows(registry, "SELECT request_id FROM traffic") == [("r1",)]


def test_ingested_segments_can_be_kept_in_an_archive(registry: Registry, spool: Path, tmp_path: Path) -> None:
    path = segment(spool, traffic("r1"))
    ingest(registry, spool, archive_dir=tmp_path / "archive")
    assert ready_segments(spool) == [] and (tmp_path / "archive" / path.name).exists()


# -- log files --------------------------------------------------------------------------


def log_line(**fields: Any) -> dict[str, Any]:
    line = {
        "slot": "support-triage",
        "request": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        "response": {
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "shipping"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 1, "total_tokens": 22},
        },
        "latency_ms": 412,
    }
    line.update(fields)
    return {key: value for key, value in line.items() if value is not None}


def jsonl(path: Path, *lines: dict[str, Any] | str) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_request_response_log_becomes_traffic_with_output_and_tokens(
    registry: Registry, spool: Path, tmp_path: Path
) -> None:
    log = jsonl(
        tmp_path / "calls.jsonl",
        log_line(request_id="r1", client_request_id="c1", received_at="2025-03-01T13:00:00+01:00"),
        log_line(slot=None, response=None, error={"message": "upstream timed out", "type": "timeout"}),
        "",
    )
    spooled = spool_records(read_traffic_log(log, slot="support-triage", slots={"support-triage"}), spool)
    assert spooled.records == 2 and len(spooled.segments) == 1
    ingest(registry, spool)
    stored = rows(registry, "SELECT request_id, client_request_id, received_at, status, output, prompt_tokens, "
                            "completion_tokens, latency_ms, error, source, champion_version FROM traffic ORDER BY 1")
    assert stored[0] == ("r1", "c1", datetime(2025, 3, 1, 12, 0), 200, "shipping", 21, 1, 412.0, None, "file", None)
    derived = stored[1]
    assert derived[0].startswith("szf_") and derived[3:6] == (None, None, None)
    assert derived[8] == "upstream timed out"


def test_a_logged_exchange_keeps_its_tags(registry: Registry, spool: Path, tmp_path: Path) -> None:
    log = jsonl(tmp_path / "calls.jsonl", log_line(request_id="r1", tags={"tier": "gold", "region": "eu-west"}))
    spool_records(read_traffic_log(log, slots={"support-triage"}), spool)
    ingest(registry, spool)
    assert rows(registry, "SELECT tags FROM traffic") == [({"tier": "gold", "region": "eu-west"},)]


def test_loading_the_same_log_twice_stores_each_request_once(registry: Registry, spool: Path, tmp_path: Path) -> None:
    log = jsonl(tmp_path / "calls.jsonl", log_line(), log_line(latency_ms=99))
    for _ in range(2):
        spool_records(read_traffic_log(log), spool)
        ingest(registry, spool)
    assert count(registry, "traffic") == 2


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"slot": "support-triage", "request": ', "line 2: not valid JSON"),
        (json.dumps(log_line(request="hello")), "line 2: field 'request': Input should be a valid dictionary"),
        (json.dumps(log_line(response={"choices": []})), "line 2: field 'response.choices': List should have at least 1"),
        (json.dumps(log_line(response=None)), "line 2: 'response' is required unless an 'error' is given"),
        (json.dumps(log_line(request={"model": "m"})), "line 2: field 'request': 'messages' must be"),
        (json.dumps(log_line(status=2147483648)), "line 2: field 'status': Input should be less than or equal to 999"),
        ('{"slot": "support-triage", "latency_ms": NaN}', "line 2: not valid JSON: NaN is not a JSON number"),
        (json.dumps(log_line(slot=None)), "line 2: field 'slot': missing (give it in the line or with --slot)"),
        (json.dumps(log_line(slot="unknown")), "line 2: field 'slot': 'unknown' is not configured (slots: support-triage)"),
        ("[1, 2]", "line 2: expected a JSON object, got list"),
        (json.dumps(log_line(tags={"user": "u-1"})), "line 2: field 'tags': tag key 'user' is reserved"),
        (json.dumps(log_line(tags={"tier": 5})), "line 2: field 'tags.tier': Input should be a valid string"),
        (json.dumps(log_line(tags={f"k{n}": "v" for n in range(17)})), "line 2: field 'tags': at most 16"),
    ],
)
def test_a_log_with_a_bad_line_is_an_error_naming_the_line_and_nothing_is_written(
    registry: Registry, spool: Path, tmp_path: Path, bad_line: str, expected: str
) -> None:
    log = jsonl(tmp_path / "calls.jsonl", log_line(), bad_line, log_line(latency_ms=1))
    with pytest.raises(LogFileError) as error:
        spool_records(read_traffic_log(log, slots={"support-triage"}), spool, per_segment=1)
    assert str(error.value).startswith(f"{log}: {expected}")
    assert list(spool.iterdir()) == []
    ingest(registry, spool)
    assert count(registry, "traffic") == 0


def test_an_outcomes_file_is_loaded_and_joined_by_either_id(registry: Registry, spool: Path, tmp_path: Path) -> None:
    segment(spool, traffic("r1"), traffic("r2", "c2"))
    ingest(registry, spool)
    log = jsonl(
        tmp_path / "labels.jsonl",
        {"request_id": "r1", "label": {"category": "billing"}},
        {"client_request_id": "c2", "kind": "reaction", "value": "thumbs_down"},
        {"request_id": "later", "kind": "label", "value": 4.5, "received_at": "2025-03-02T00:00:00Z"},
    )
    spool_records(read_outcome_log(log), spool)
    report = ingest(registry, spool)
    assert (report.outcome_rows, report.joined_outcomes) == (3, 2)
    assert rows(registry, "SELECT request_key, kind, value_json, request_id FROM outcomes ORDER BY 1") == [
        ("c2", "reaction", '"thumbs_down"', "r2"), ("later", "label", "4.5", None),
        ("r1", "label", '{"category":"billing"}', "r1"),
    ]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ({"label": "billing"}, "line 1: give 'request_id' or 'client_request_id'"),
        ({"request_id": "r1"}, "line 1: give either 'label', or 'kind' and 'value' (not null)"),
        ({"request_id": "r1", "label": 1, "value": 2}, "line 1: give either 'label', or 'kind' and 'value' (not null)"),
        ({"request_id": "r1", "kind": "vote", "value": 1}, "line 1: field 'kind': Input should be 'label' or 'reaction'"),
        ({"request_id": 5, "label": 1}, "line 1: field 'request_id': Input should be a valid string"),
    ],
)
def test_an_outcomes_file_with_a_bad_line_is_an_error_naming_the_line(
    spool: Path, tmp_path: Path, bad_line: dict[str, Any], expected: str
) -> None:
    log = jsonl(tmp_path / "labels.jsonl", bad_line)
    with pytest.raises(LogFileError) as error:
        spool_records(read_outcome_log(log), spool)
    assert str(error.value).startswith(f"{log}: {expected}")
    assert list(spool.iterdir()) == []


# -- the command line (in process until `shadowzoo ingest` is wired into ops/cli.py) --------


def run_ingest_command(workspace_dir: Path, *args: str) -> None:
    from ops.cli_ingest import app

    typer.main.get_command(app).main(args=list(args), obj=Session(workspace_dir=workspace_dir), standalone_mode=False)


def test_the_ingest_commands_load_traffic_then_outcomes(
    workspace_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = jsonl(tmp_path / "calls.jsonl", log_line(request_id="r1"), log_line(client_request_id="c2"))
    labels = jsonl(tmp_path / "labels.jsonl", {"request_id": "r1", "label": "shipping"},
                   {"client_request_id": "c2", "label": "billing"})
    run_ingest_command(workspace_dir, "traffic", str(calls))
    out = capsys.readouterr().out
    assert f"read 2 record(s) from {calls} into 1 spool segment(s)" in out
    assert "2 traffic row(s), 0 outcome row(s), 0 duplicate(s) ignored" in out
    run_ingest_command(workspace_dir, "outcomes", str(labels), "--json")
    result = json.loads(capsys.readouterr().out)
    assert result["records"] == 2 and result["ingest"]["outcome_rows"] == 2
    assert result["ingest"]["joined_outcomes"] == 2


def test_the_ingest_command_reports_a_bad_line_and_writes_nothing(workspace_dir: Path, tmp_path: Path) -> None:
    calls = jsonl(tmp_path / "calls.jsonl", log_line(), log_line(slot="nope"))
    with pytest.raises(LogFileError, match=r"calls.jsonl: line 2: field 'slot': 'nope' is not configured"):
        run_ingest_command(workspace_dir, "traffic", str(calls))


def test_with_a_daemon_running_the_ingest_command_says_what_it_ingested_as_without_one(
    workspace_dir: Path, tmp_path: Path, cli
) -> None:
    from tests.test_admin_api import TOKEN, Daemon

    edit_config(workspace_dir, lambda c: c["daemon"].update(ingest_interval_s=3600))  # only the command ingests
    local = cli("ingest", "traffic", str(jsonl(tmp_path / "first.jsonl", log_line(request_id="r1"))))
    daemon = Daemon(workspace_dir)
    try:
        served = cli("ingest", "traffic", str(jsonl(tmp_path / "second.jsonl", log_line(request_id="r2"))),
                     env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    finally:
        daemon.stop()
    assert local.code == served.code == 0, served.err
    summary = "ingested 1 segment(s): 1 traffic row(s), 0 outcome row(s), 0 duplicate(s) ignored"
    assert summary in local.out and summary in served.out
    with Registry.open(load_workspace(workspace_dir)) as registry:
        assert rows(registry, "SELECT request_id FROM traffic ORDER BY request_id") == [("r1",), ("r2",)]


def test_the_slot_redaction_rules_apply_to_ingested_files(workspace_dir: Path, tmp_path: Path) -> None:
    config = workspace_dir / "shadowzoo.yaml"
    config.write_text(config.read_text().replace(
        "    metrics:", "    redact:\n      - {pattern: 'secret-\\d+', replacement: '[GONE]'}\n    metrics:", 1))
    line = log_line(request_id="r1")
    line["request"]["messages"][-1]["content"] = "my code is secret-123"
    run_ingest_command(workspace_dir, "traffic", str(jsonl(tmp_path / "calls.jsonl", line)))
    with Registry.open(load_workspace(workspace_dir)) as registry:
        stored = rows(registry, "SELECT request_json FROM traffic")[0][0]
    assert "secret-123" not in stored and "[GONE]" in stored


def test_shadowzoo_ingest_traffic_runs_as_a_user_runs_it(cli, tmp_path: Path) -> None:
    calls = jsonl(tmp_path / "calls.jsonl", log_line(request_id="r1"), "not json")
    failed = cli("ingest", "traffic", str(calls))
    assert failed.code == 1 and f"{calls}: line 2: not valid JSON" in failed.err
    jsonl(calls, log_line(request_id="r1"))
    loaded = cli("ingest", "traffic", str(calls), "--json")
    assert loaded.code == 0, loaded.err
    assert loaded.json()["ingest"]["traffic_rows"] == 1
