"""Redaction: a slot's rules reach every text field of what is captured, before it touches disk."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from ops.workspace_init import init_workspace
from registry import NewVariant, Registry, RedactionRule, load_workspace
from shadow.ingest import ingest_spool
from shadow.spool_records import OutcomeRecord, TrafficRecord
from shadow.redaction import Redactor
from shadow.spool import read_segment, ready_segments, spool_dir, write_segment
from tests.servers import GatewayProcess, edit_config, post_json, start_simulator, wait_until

SLOT = "support-triage"
EMAIL = "jane.doe@example.com"
RULES = [{"pattern": r"[\w.]+@[\w.]+\.\w+", "replacement": "[EMAIL]"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway whose slot redacts e-mail addresses, in front of the simulator."""
    simulator = start_simulator(fast=True)
    ws = init_workspace(tmp_path_factory.mktemp("redaction") / "ws")
    edit_config(ws, lambda c: (c["providers"]["sim"].update(base_url=simulator.base_url),
                               c["slots"][SLOT].update(redact=RULES)))
    with Registry.open(load_workspace(ws)) as registry:
        variant = registry.register(NewVariant(slot=SLOT, label="champ", kind="chat", skill_text="Route it.",
                                               config={"kind": "chat", "provider": "sim", "model": "sim-large"})).variant
        registry.promote(SLOT, variant.version_id, "tester", None, None)
    process = GatewayProcess(ws, env={"SIM_API_KEY": "sim"})
    yield ws, process
    process.stop()
    simulator.stop()


def _spooled(ws: Path, expected: int) -> list:
    def records():
        found = [r for segment in ready_segments(spool_dir(ws / ".shadowzoo")) for r in read_segment(segment)]
        return found if len(found) >= expected else None
    return wait_until(records)


def test_an_address_is_redacted_wherever_a_client_puts_it(gateway) -> None:
    ws, process = gateway
    client = openai.OpenAI(base_url=process.base_url, api_key="x", max_retries=0, timeout=20)
    client.chat.completions.create(
        model=SLOT, user=EMAIL, metadata={"customer": EMAIL},
        messages=[
            {"role": "user", "name": EMAIL.replace("@", "_at_"), "content": f"I am {EMAIL}"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                "name": "lookup", "arguments": json.dumps({"email": EMAIL})}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"owner": EMAIL})},
            {"role": "user", "content": [{"type": "text", "text": f"reply to {EMAIL}"}]},
        ],
        extra_headers={"x-shadowzoo-request-id": f"ticket-{EMAIL}"})
    assert post_json(f"{process.base_url}/feedback", {"request_id": f"ticket-{EMAIL}", "label": {"contact": EMAIL}}) == 202
    assert post_json(f"{process.base_url}/capture", {
        "slot": SLOT, "client_request_id": f"observed-{EMAIL}",
        "request": {"messages": [{"role": "user", "content": f"from {EMAIL}"}], "user": EMAIL},
        "response": {"choices": [{"message": {"role": "assistant", "content": f"wrote to {EMAIL}"}}]},
    }) == 202
    _spooled(ws, 3)
    stored = b"".join(path.read_bytes() for path in ready_segments(spool_dir(ws / ".shadowzoo")))
    assert EMAIL.encode() not in stored and b"[EMAIL]" in stored


def test_feedback_still_joins_its_traffic_when_the_client_id_is_redacted(tmp_path: Path) -> None:
    workspace = load_workspace(init_workspace(tmp_path / "ws"))
    redactor = Redactor({SLOT: [RedactionRule(**rule) for rule in RULES], "other": []})
    now = datetime.now(UTC)
    traffic = redactor.apply(TrafficRecord(request_id="szr_1", client_request_id=f"t-{EMAIL}", slot=SLOT,
                                           received_at=now, request={"messages": []}, output="ok"))
    label = redactor.apply(OutcomeRecord(request_key=f"t-{EMAIL}", value=EMAIL, received_at=now))
    own = redactor.apply(OutcomeRecord(request_key="szr_1", value="billing", received_at=now))
    assert traffic.client_request_id == label.request_key == "t-[EMAIL]" and label.value == "[EMAIL]"
    assert own.request_key == "szr_1"
    with Registry.open(workspace) as registry:
        spool = spool_dir(workspace.state_dir)
        spool.mkdir(parents=True)
        write_segment(spool, [record.model_dump_json().encode() for record in (traffic, label)])
        assert ingest_spool(registry.database, spool).joined_outcomes == 1
