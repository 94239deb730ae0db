"""Tool calls are part of an answer: captured, loaded, ingested, replayed and scored like its text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import polars as pl
import pytest
from pydantic import TypeAdapter

from ops.workspace_init import init_workspace
from registry import NewVariant, Registry, load_workspace
from registry.workspace_config import JudgeMetric, Metric, PythonMetric, RedactionRule
from scorer.judge import grader_messages
from scorer.quality_metrics import plan_quality, score_rows
from scorer.rowmetrics import evaluator_for
from scorer.service import Scorer
from shadow.gateway.capture import PendingCapture
from shadow.ingest import ingest_spool
from shadow.logfile import LogFileError, read_traffic_log, spool_records
from shadow.pyvariants import PythonVariants
from shadow.redaction import Redactor
from shadow.runner import ShadowRunner
from shadow.spool import CorruptSegment, read_segment, spool_dir, write_segment
from shadow.spool_records import TrafficRecord
from shadow.toolcalls import ToolCall
from tests.servers import GatewayProcess, edit_config, post_json, start_simulator

SLOT = "support-triage"
REPO = Path(__file__).resolve().parent.parent
REFUND = {"name": "refund", "arguments": {"order": "A1", "amount": 12.5}}
TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
         for name in ("refund", "escalate")]
TICKETS = [
    {"id": "t1", "input": "Please refund order A1, 12.50 EUR", "expected": "billing", "calls": [REFUND]},
    {"id": "t2", "input": "Order B7 arrived broken, refund 40 EUR", "expected": "billing",
     "calls": [{"name": "refund", "arguments": {"order": "B7", "amount": 40}}]},
    {"id": "t3", "input": "Escalate ticket 9 and refund order C3", "expected": "other",
     "calls": [{"name": "escalate", "arguments": {"ticket": 9}}, {"name": "refund", "arguments": {"order": "C3"}}]},
]
SIM_YAML = """
seed: 3
task: {{dataset: {dataset}, labels: [billing, other]}}
models:
  sim-right: {{tool_accuracy: 1.0}}
  sim-wrong: {{tool_accuracy: 0.0}}
"""


def sse(*chunks: dict[str, Any]) -> list[bytes]:
    return [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks] + [b"data: [DONE]\n\n"]


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def captured(**fields: Any) -> TrafficRecord:
    pending = PendingCapture(request_id="szr_1", client_request_id=None, slot=SLOT, received_at=0.0,
                             request={"model": SLOT, "messages": [{"role": "user", "content": "hi"}]},
                             champion_version="v1", status=200, **fields)
    return pending.to_record()


# -- capture ------------------------------------------------------------------------------


def test_a_streamed_answer_of_tool_calls_is_assembled_from_its_fragments_by_index() -> None:
    events = sse(
        delta(role="assistant", content=None),
        delta(tool_calls=[{"index": 0, "id": "call_a", "type": "function",
                           "function": {"name": "ref", "arguments": ""}}]),
        delta(tool_calls=[{"index": 0, "function": {"name": "und", "arguments": '{"order": '}}]),
        delta(tool_calls=[{"index": 1, "id": "call_b", "type": "function",
                           "function": {"name": "escalate", "arguments": '{"tick'}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": '"A1", "amount": 12.5}'}}]),
        delta(tool_calls=[{"index": 1, "function": {"arguments": "et: 9"}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}},
    )
    record = captured(stream=True, events=[b"".join(events[:3]), *events[3:]])
    assert record.output is None and record.usage["completion_tokens"] == 9
    assert [call.model_dump() for call in record.tool_calls] == [
        REFUND, {"name": "escalate", "arguments": '{"ticket: 9'},  # not valid JSON: kept as the model sent it
    ]


def test_a_non_streamed_answer_that_only_calls_a_tool_is_captured_with_its_call_and_no_text() -> None:
    body = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "refund", "arguments": json.dumps(REFUND["arguments"])}}]}}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 9}}
    record = captured(stream=False, body=json.dumps(body).encode())
    assert record.output is None and [call.model_dump() for call in record.tool_calls] == [REFUND]
    assert captured(stream=False, body=b'{"choices": [{"message": {"content": "billing"}}]}').tool_calls is None


def test_arguments_that_are_not_strict_json_are_kept_as_sent(registry: Registry) -> None:
    calls = [{"function": {"name": "f", "arguments": arguments}} for arguments in ('{"x": NaN}', '{"x": 1e400}', "{}")]
    record = captured(stream=False, body=json.dumps({"choices": [{"message": {"tool_calls": calls}}]}).encode())
    assert [call.arguments for call in record.tool_calls] == ['{"x": NaN}', '{"x": 1e400}', {}]
    spool = spool_dir(registry.workspace.state_dir)
    write_segment(spool, [record.model_dump_json().encode()])
    assert ingest_spool(registry.database, spool).traffic_rows == 1


def test_redaction_scrubs_the_strings_in_tool_call_arguments() -> None:
    record = captured(stream=False, body=json.dumps({"choices": [{"message": {"content": None, "tool_calls": [
        {"function": {"name": "notify", "arguments": '{"to": ["ann@example.com"], "n": 1}'}}]}}]}).encode())
    redactor = Redactor({SLOT: [RedactionRule(pattern=r"\S+@\S+", replacement="[EMAIL]")]})
    assert redactor.apply(record).tool_calls == [ToolCall(name="notify", arguments={"to": ["[EMAIL]"], "n": 1})]


# -- file logs and ingest -------------------------------------------------------------------


def tool_log_line(message: dict[str, Any]) -> dict[str, Any]:
    return {"slot": SLOT, "request_id": "r1", "latency_ms": 300,
            "request": {"model": "gpt-4o-mini", "tools": TOOLS, "messages": [{"role": "user", "content": "refund A1"}]},
            "response": {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                         "usage": {"prompt_tokens": 30, "completion_tokens": 12}}}


def test_a_logged_answer_that_only_calls_tools_is_ingested_with_its_calls_as_a_real_answer(
    registry: Registry, tmp_path: Path
) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "refund", "arguments": '{"order":"A1","amount":12.5}'}}
    log = tmp_path / "calls.jsonl"
    log.write_text(json.dumps(tool_log_line({"role": "assistant", "content": None, "tool_calls": [call]})) + "\n")
    spool = spool_dir(registry.workspace.state_dir)
    spool_records(read_traffic_log(log), spool)
    ingest_spool(registry.database, spool)
    with registry.database.reading() as db:
        stored = db.execute("SELECT status, output, error, tool_calls_json FROM traffic").fetchall()
    assert [(status, output, error, json.loads(calls)) for status, output, error, calls in stored] == [
        (200, None, None, [REFUND])
    ]


def test_a_logged_tool_call_without_a_name_is_an_error_naming_the_line_and_field(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    nameless = {"content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}
    log.write_text(json.dumps(tool_log_line(nameless)) + "\n")
    with pytest.raises(LogFileError, match=r"line 1: field 'response.choices.0.message.tool_calls.0.function.name'"):
        list(read_traffic_log(log))


@pytest.mark.parametrize("tool_calls", [
    [REFUND], [REFUND, {"name": "escalate", "arguments": "{not json"}], [], None, [{"arguments": {}, "name": "x"}],
    [{"name": 5, "arguments": {}}], [{"name": "refund"}], [{"name": "refund", "arguments": {}, "id": "c1"}],
    REFUND, "refund", [None],
])
def test_the_bulk_reader_stores_tool_calls_exactly_as_the_record_models_read_them(
    registry: Registry, tool_calls: Any
) -> None:
    spool = spool_dir(registry.workspace.state_dir)
    line = {**json.loads(captured(stream=False).model_dump_json()), "tool_calls": tool_calls}
    path = write_segment(spool, [json.dumps(line).encode()])
    try:
        expected = read_segment(path)[0].tool_calls
        accepted = True
    except CorruptSegment:
        accepted = False
    report = ingest_spool(registry.database, spool)
    assert (report.traffic_rows, len(report.quarantined)) == ((1, 0) if accepted else (0, 1))
    if accepted:
        with registry.database.reading() as db:
            (stored,) = db.execute("SELECT tool_calls_json FROM traffic").fetchone()
        assert (json.loads(stored) if stored is not None else None) == (
            None if expected is None else [call.model_dump() for call in expected])


def refund_variant(request: dict[str, Any], answer: str = "calls") -> Any:
    """A python variant that answers with a tool call (or, asked to, a malformed answer)."""
    if answer == "calls":
        return {"content": None, "tool_calls": [REFUND]}
    return {"content": None, "tool_calls": [{"function": "refund"}]}


def test_a_python_variant_can_answer_with_tool_calls_and_a_malformed_answer_is_its_error() -> None:
    async def call(params: dict[str, Any]):
        variants = PythonVariants(1, [REPO])
        try:
            return await variants.call("tests.test_toolcalls:refund_variant", {"messages": []}, params)
        finally:
            variants.close()

    right, malformed = asyncio.run(call({})), asyncio.run(call({"answer": "malformed"}))
    assert (right.output, right.tool_calls, right.error) == (None, [ToolCall(**REFUND)], None)
    assert malformed.tool_calls is None and "tool_calls.0.name" in malformed.error


# -- metrics --------------------------------------------------------------------------------


CALL_CHECKS = [
    ([{"name": "refund", "arguments": {"amount": 12.5, "order": "A1"}}], REFUND, 1.0),  # key order irrelevant
    ([{"name": "refund", "arguments": {"order": "A1", "amount": 12.50}}], [REFUND], 1.0),  # a list of one call
    ([{"name": "refund", "arguments": {"order": "A1", "amount": 12}}], REFUND, 0.0),
    ([{"name": "refund", "arguments": {"order": "A1", "amount": "12.5"}}], REFUND, 0.0),
    ([{"name": "escalate", "arguments": REFUND["arguments"]}], REFUND, 0.0),
    ([REFUND, {"name": "escalate", "arguments": {}}], REFUND, 0.0),  # an extra call
    ([{"name": "escalate", "arguments": {}}, REFUND], [REFUND, {"name": "escalate", "arguments": {}}], 0.0),  # order
    ([{"name": "refund", "arguments": '{"order": "A1"'}], REFUND, 0.0),  # arguments that never parsed
    (None, REFUND, 0.0),  # text only
    (None, [], 1.0),  # no call was the right answer
    ([{"name": "q", "arguments": {"a": [1, {"b": None}]}}], {"arguments": {"a": [1.0, {"b": None}]}, "name": "q"}, 1.0),
    ([{"name": "q", "arguments": {"a": [1, 2]}}], {"name": "q", "arguments": {"a": [2, 1]}}, 0.0),
    (None, {"name": "refund"}, None),  # a label of another shape cannot be scored
    (None, "refund", None),
    (None, None, None),  # no label yet
]


@pytest.mark.parametrize(("calls", "label", "quality"), CALL_CHECKS)
def test_the_tool_call_check_compares_names_and_arguments_with_the_label(calls, label, quality) -> None:
    plan = plan_quality([TypeAdapter(Metric).validate_python({"type": "tool_call"})], "slots.s.metrics")
    assert plan.needs_label
    rows = pl.DataFrame({"output": [None], "tool_calls_json": [json.dumps(calls) if calls is not None else None],
                         "label_json": [json.dumps(label) if label is not None else None]},
                        schema={"output": pl.Utf8, "tool_calls_json": pl.Utf8, "label_json": pl.Utf8})
    assert score_rows(plan, rows).to_list() == [quality]


def refund_called(request: dict[str, Any], output: str | None, outcome: Any, *, answer: dict[str, Any]) -> float:
    """A python metric that reads the whole answer."""
    return 1.0 if [call["name"] for call in answer["tool_calls"]] == ["refund"] and output is None else 0.0


def text_only(request: dict[str, Any], output: str | None, outcome: Any) -> float:
    """A python metric written before answers had tool calls."""
    return 1.0 if output == outcome else 0.0


def test_python_metrics_get_the_whole_answer_when_they_take_it_and_old_ones_keep_working() -> None:
    reads_answer = evaluator_for(PythonMetric(type="python", entrypoint="tests.test_toolcalls:refund_called"), "m", [REPO])
    old = evaluator_for(PythonMetric(type="python", entrypoint="tests.test_toolcalls:text_only"), "m", [REPO])
    calls = {"content": None, "tool_calls": [REFUND]}
    assert reads_answer({}, calls, REFUND).value == 1.0
    assert reads_answer({}, {"content": "refund", "tool_calls": []}, REFUND).value == 0.0
    assert old({}, {"content": "billing", "tool_calls": []}, "billing").value == 1.0


def test_the_judge_sees_the_answers_tool_calls() -> None:
    metric = JudgeMetric(type="judge", provider="sim", model="sim-judge", rubric="Refund when asked.")
    request = json.dumps({"messages": [{"role": "user", "content": "refund A1"}]})
    _, user = grader_messages(metric, request, None, None, json.dumps([REFUND]))
    assert '<answer>\n\nTool call: refund({"order": "A1", "amount": 12.5})\n</answer>' in user["content"]


# -- end to end: gateway, spool, ingest, replay, score ---------------------------------------


def test_a_right_and_a_wrong_tool_call_score_differently_from_gateway_to_leaderboard(tmp_path: Path) -> None:
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_text("".join(json.dumps(ticket) + "\n" for ticket in TICKETS))
    (tmp_path / "sim.yaml").write_text(SIM_YAML.format(dataset=dataset))
    simulator = start_simulator(tmp_path / "sim.yaml")
    ws = init_workspace(tmp_path / "ws")

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator.base_url
        config["prices"] = {model: {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
                            for model in ("sim-right", "sim-wrong")}
        config["slots"][SLOT].update(metrics=[{"type": "tool_call"}], shadow={"sample_rate": 1.0})

    edit_config(ws, configure)
    with Registry.open(load_workspace(ws)) as registry:
        ids = {model: registry.register(NewVariant(
            slot=SLOT, label=model, kind="chat", skill_text="Call the right tool.",
            config={"kind": "chat", "provider": "sim", "model": model, "params": {"temperature": 0}},
        )).variant.version_id for model in ("sim-wrong", "sim-right")}
        registry.promote(SLOT, ids["sim-wrong"], "tester", None, None)
    gateway = GatewayProcess(ws, env={"SIM_API_KEY": "sim"}, start_timeout_s=60)
    try:
        client = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20)
        for index, ticket in enumerate(TICKETS * 2):
            messages = [{"role": "user", "content": ticket["input"]}]
            client_id = {"x-shadowzoo-request-id": f"ticket-{index}"}
            if index % 2:
                stream = client.chat.completions.create(model=SLOT, messages=messages, tools=TOOLS, stream=True,
                                                        extra_headers=client_id)
                chunks = list(stream)
                assert any(chunk.choices and chunk.choices[0].delta.tool_calls for chunk in chunks)
            else:
                message = client.chat.completions.create(model=SLOT, messages=messages, tools=TOOLS,
                                                         extra_headers=client_id).choices[0].message
                assert message.content is None and message.tool_calls
            label = ticket["calls"][0] if len(ticket["calls"]) == 1 else ticket["calls"]
            assert post_json(f"{gateway.base_url}/feedback", {"request_id": f"ticket-{index}", "label": label}) == 202
        wrong = {"id": "c1", "type": "function", "function": {"name": "escalate", "arguments": '{"order":"A1"}'}}
        observed = {"slot": SLOT, "client_request_id": "observed-1", "latency_ms": 250,
                    "request": {"model": "gpt-4o-mini", "tools": TOOLS,
                                "messages": [{"role": "user", "content": TICKETS[0]["input"]}]},
                    "response": {"choices": [{"index": 0, "finish_reason": "tool_calls",
                                              "message": {"role": "assistant", "content": None, "tool_calls": [wrong]}}],
                                 "usage": {"prompt_tokens": 20, "completion_tokens": 8}}}
        assert post_json(f"{gateway.base_url}/capture", observed) == 202
        assert post_json(f"{gateway.base_url}/feedback", {"request_id": "observed-1", "label": REFUND}) == 202
    finally:
        gateway.stop()
    with Registry.open(load_workspace(ws)) as registry:
        ingest_spool(registry.database, spool_dir(registry.workspace.state_dir))
        with registry.database.reading() as db:
            live = db.execute("SELECT client_request_id, stream, output, tool_calls_json FROM traffic "
                              "WHERE source = 'gateway' ORDER BY 1").fetchall()
        assert len(live) == 6 and {stream for _, stream, _, _ in live} == {True, False}
        with registry.database.reading() as db:
            assert db.execute("SELECT count(*) FROM traffic WHERE partial OR status <> 200").fetchone() == (0,)
        assert all(output is None and json.loads(calls)[0]["name"] != TICKETS[int(cid[-1]) % 3]["calls"][0]["name"]
                   for cid, _, output, calls in live)
        with registry.database.reading() as db:
            (observed_calls,) = db.execute("SELECT tool_calls_json FROM traffic WHERE source = 'capture'").fetchone()
        assert json.loads(observed_calls) == [{"name": "escalate", "arguments": {"order": "A1"}}]

        async def replay() -> None:
            async with ShadowRunner(registry) as runner:
                await runner.run_once()

        asyncio.run(replay())
        with registry.database.reading() as db:
            replayed = db.execute("SELECT status, tool_calls_json FROM shadow_results").fetchall()
        assert len(replayed) == 7 and all(status == "ok" and calls for status, calls in replayed)
        board = Scorer(registry.workspace, registry).refresh(SLOT)
        quality = {row.version_id: (row.n, row.mean_quality) for row in board.rows}
        # the gateway's six requests and the observed one (the champion's answer when it was
        # received), each answered by both; right calls score 1, wrong ones 0 (not both 0)
        assert quality == {ids["sim-wrong"]: (7, 0.0), ids["sim-right"]: (7, 1.0)}
        assert next(row for row in board.rows if row.version_id == ids["sim-right"]).comparison.pairs == 7
    simulator.stop()


def test_the_simulator_answers_the_tool_result_turn_with_text_and_tool_choice_none_with_text(tmp_path: Path) -> None:
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_text("".join(json.dumps(ticket) + "\n" for ticket in TICKETS))
    (tmp_path / "sim.yaml").write_text(SIM_YAML.format(dataset=dataset))
    simulator = start_simulator(tmp_path / "sim.yaml")
    try:
        client = openai.OpenAI(base_url=simulator.base_url, api_key="sim", max_retries=0)
        ask = [{"role": "user", "content": TICKETS[0]["input"]}]
        first = client.chat.completions.create(model="sim-right", messages=ask, tools=TOOLS).choices[0]
        call = first.message.tool_calls[0]
        assert first.finish_reason == "tool_calls"
        assert (call.function.name, json.loads(call.function.arguments)) == (REFUND["name"], REFUND["arguments"])
        wrong = client.chat.completions.create(model="sim-wrong", messages=ask, tools=TOOLS).choices[0].message
        assert wrong.tool_calls[0].function.name == "escalate"
        result = [*ask, first.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "refunded"}]
        second = client.chat.completions.create(model="sim-right", messages=result, tools=TOOLS).choices[0].message
        assert second.content and not second.tool_calls
        plain = client.chat.completions.create(model="sim-right", messages=ask, tools=TOOLS, tool_choice="none")
        assert plain.choices[0].message.content == "billing" or plain.choices[0].message.content == "other"
    finally:
        simulator.stop()
