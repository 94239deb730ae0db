"""The gateway, run as `shadowzoo gateway`, used through the official openai client."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from openapi_spec_validator import validate

from ops.workspace_init import init_workspace
from registry import NewVariant, Registry, load_workspace
from shadow.apply import apply_variant
from shadow.gateway.capture import SEGMENT_BYTES
from shadow.ingest import ingest_spool
from shadow.logfile import LogFileError, read_outcome_log, read_traffic_log
from shadow.spool import read_segment, ready_segments
from tests.servers import GatewayProcess, edit_config, free_port, start_simulator, wait_until

KEY = "client-key-1"
TICKETS = Path(__file__).resolve().parent.parent / "examples" / "demo" / "tickets.jsonl"
SIM_YAML = f"""
seed: 1
task:
  name: support-triage
  dataset: {TICKETS}
  labels: [billing, technical, account, shipping, other]
models:
  sim-large: {{reasoning_tokens: 40, latency: {{base_ms: 0, per_output_token_ms: 0}}}}
  sim-chatty: {{reasoning_tokens: 400, latency: {{base_ms: 0, per_output_token_ms: 15}}}}
  sim-slow: {{latency: {{base_ms: 5000}}}}
  sim-broken: {{errors: {{http_500: 1.0}}}}
  sim-held: {{hold_open_s: 30, latency: {{base_ms: 0, per_output_token_ms: 0}}}}
"""
SLOTS = {"support-triage": "sim-large", "chatty": "sim-chatty", "slow": "sim-slow", "broken": "sim-broken",
         "dead": "sim-large", "held": "sim-held"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A workspace whose slots use simulator models, and its gateway with client keys."""
    root = tmp_path_factory.mktemp("gateway")
    sim_yaml = root / "sim.yaml"
    sim_yaml.write_text(SIM_YAML)
    simulator = start_simulator(sim_yaml)
    ws = init_workspace(root / "ws")

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator.base_url
        config["providers"]["dead"] = {"base_url": f"http://127.0.0.1:{free_port()}/v1"}
        config["gateway"] = {"client_keys_env": "TEST_GATEWAY_KEYS", "max_body_bytes": 20000}
        template = config["slots"]["support-triage"]
        template["redact"] = [{"pattern": r"\b\d{4}-\d{4}-\d{4}-\d{4}\b", "replacement": "[CARD]"}]
        for slot in SLOTS:
            config["slots"].setdefault(slot, {"defaults": template["defaults"], "timeout_s": 1.5})

    edit_config(ws, configure)
    with Registry.open(load_workspace(ws)) as registry:
        for slot, model in SLOTS.items():
            variant = registry.register(NewVariant(
                slot=slot, label="champ", kind="chat", skill_text="Answer with one category.",
                config={"kind": "chat", "provider": "dead" if slot == "dead" else "sim", "model": model,
                        "params": {"temperature": 0}},
            )).variant
            registry.promote(slot, variant.version_id, "tester", None, None)
    gateway = GatewayProcess(ws, env={"TEST_GATEWAY_KEYS": f"other,{KEY}", "SIM_API_KEY": "sim"})
    yield ws, gateway, simulator
    gateway.stop()
    simulator.stop()


@pytest.fixture
def client(served) -> openai.OpenAI:
    _, gateway, _ = served
    return openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=20)


def _ticket(n: int = 0) -> str:
    return json.loads(TICKETS.read_text().splitlines()[n])["input"]


def _direct(simulator, model: str, messages: list[dict], **extra) -> str:
    """What the champion's upstream answers when called directly with the champion applied."""
    direct = openai.OpenAI(base_url=simulator.base_url, api_key="sim", max_retries=0)
    body = apply_variant(model, {"temperature": 0}, "Answer with one category.", {"messages": messages, **extra})
    return direct.chat.completions.create(**body).choices[0].message.content


def _captured(ws: Path, request_id: str):
    """The spooled traffic record of a request, once the flusher has written it."""
    def find():
        for segment in ready_segments(ws / ".shadowzoo" / "spool"):
            for record in read_segment(segment):
                if getattr(record, "request_id", None) == request_id:
                    return record
        return None
    return wait_until(find)


def _post(gateway, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    connection.request("POST", path, body=body, headers={"Authorization": f"Bearer {KEY}",
                                                         "Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_clients_get_exactly_the_champions_answer(served, client) -> None:
    ws, _, simulator = served
    messages = [{"role": "user", "content": _ticket(3)}]
    raw = client.chat.completions.with_raw_response.create(model="support-triage", messages=messages)
    answer = raw.parse()
    assert answer.choices[0].message.content == _direct(simulator, "sim-large", messages)
    assert raw.headers["x-shadowzoo-version"].startswith("champ-")
    assert raw.headers["x-shadowzoo-request-id"].startswith("szr_")


def test_a_streamed_answer_matches_and_has_usage_only_when_asked(served, client) -> None:
    _, _, simulator = served
    messages = [{"role": "user", "content": _ticket(5)}]
    plain = list(client.chat.completions.create(model="support-triage", messages=messages, stream=True))
    assert all(chunk.choices for chunk in plain), "the usage chunk the gateway asked for leaked to the client"
    text = "".join(c.choices[0].delta.content or "" for c in plain)
    assert text == _direct(simulator, "sim-large", messages)
    with_usage = list(client.chat.completions.create(
        model="support-triage", messages=messages, stream=True, stream_options={"include_usage": True}))
    assert with_usage[-1].choices == [] and with_usage[-1].usage.completion_tokens > 0


def test_captures_keep_the_request_as_sent_with_the_answer_and_usage(served, client) -> None:
    ws, _, _ = served
    messages = [{"role": "system", "content": "client system"}, {"role": "user", "content": _ticket(7)}]
    raw = client.chat.completions.with_raw_response.create(
        model="support-triage", messages=messages, extra_headers={"x-shadowzoo-request-id": "client-42"})
    record = _captured(ws, raw.headers["x-shadowzoo-request-id"])
    assert record.request["messages"] == messages, "capture must not contain the champion's skill"
    assert record.client_request_id == "client-42"
    assert record.output == raw.parse().choices[0].message.content
    assert record.usage["completion_tokens"] == raw.parse().usage.completion_tokens
    assert record.status == 200 and record.latency_ms > 0


def test_a_streamed_capture_assembles_the_output(served, client) -> None:
    ws, gateway, _ = served
    stream = client.chat.completions.with_raw_response.create(
        model="support-triage", messages=[{"role": "user", "content": _ticket(9)}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    record = _captured(ws, stream.headers["x-shadowzoo-request-id"])
    assert record.stream and record.output == text and record.usage["completion_tokens"] > 0


def test_redaction_runs_before_captures_reach_disk(served, client) -> None:
    ws, _, _ = served
    raw = client.chat.completions.with_raw_response.create(
        model="support-triage", messages=[{"role": "user", "content": "card 1234-5678-9012-3456 was charged twice"}])
    record = _captured(ws, raw.headers["x-shadowzoo-request-id"])
    assert record.request["messages"][0]["content"] == "card [CARD] was charged twice"
    spooled = b"".join(p.read_bytes() for p in ready_segments(ws / ".shadowzoo" / "spool"))
    assert b"1234-5678-9012-3456" not in spooled


def test_a_tagged_request_reaches_the_database_with_its_tags_user_and_metadata_redacted(served, client) -> None:
    ws, _, _ = served
    raw = client.chat.completions.with_raw_response.create(
        model="support-triage", messages=[{"role": "user", "content": _ticket(2)}], user="u-1234-5678-9012-3456",
        metadata={"team": "billing"}, extra_headers={"x-shadowzoo-tags": "tier=gold, card=1234-5678-9012-3456"})
    request_id = raw.headers["x-shadowzoo-request-id"]
    _captured(ws, request_id)
    with Registry.open(load_workspace(ws)) as registry:
        ingest_spool(registry.database, ws / ".shadowzoo" / "spool", archive_dir=ws / "spool-archive")
        with registry.database.reading() as db:
            tags = db.execute("SELECT tags FROM traffic WHERE request_id = ?", [request_id]).fetchone()[0]
    assert tags == {"tier": "gold", "card": "[CARD]", "user": "u-[CARD]", "metadata.team": "billing"}


@pytest.mark.parametrize("header", [
    "tier", "tier=gold,tier=silver", "user=u-1", "metadata.team=billing", "bad key=1", "tier=" + "x" * 257,
    ",".join(f"k{n}=v" for n in range(17)),
])
def test_a_bad_tags_header_is_a_400_naming_the_header(served, header) -> None:
    _, gateway, _ = served
    body = json.dumps({"model": "support-triage", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, answer = _post(gateway, "/v1/chat/completions", body, {"x-shadowzoo-tags": header})
    assert status == 400 and answer["error"]["param"] == "x-shadowzoo-tags", answer
    assert answer["error"]["message"].startswith("header x-shadowzoo-tags: ")


def test_an_observed_exchange_keeps_its_tags_and_bad_ones_are_a_400(served) -> None:
    ws, gateway, _ = served
    status, body = _post(gateway, "/v1/capture", json.dumps({**_exchange(), "tags": {"tier": "gold"}}).encode())
    assert status == 202 and _captured(ws, body["request_id"]).tags == {"tier": "gold"}
    status, body = _post(gateway, "/v1/capture", json.dumps({**_exchange(), "tags": {"metadata.x": "1"}}).encode())
    assert status == 400 and body["error"]["param"] == "tags" and "reserved" in body["error"]["message"]


def test_invalid_json_is_a_400_in_the_openai_error_shape(served) -> None:
    _, gateway, _ = served
    status, body = _post(gateway, "/v1/chat/completions", b"{not json")
    assert status == 400 and body["error"]["code"] == "invalid_json"


def test_a_body_over_the_limit_is_a_413(served) -> None:
    _, gateway, _ = served
    huge = json.dumps({"model": "support-triage", "messages": [{"role": "user", "content": "x" * 30000}]})
    status, body = _post(gateway, "/v1/chat/completions", huge.encode())
    assert status == 413 and "larger than 20000 bytes" in body["error"]["message"]


def test_missing_or_ill_typed_messages_are_a_400(served, client) -> None:
    _, gateway, _ = served
    for messages in (None, "hello", [], ["hello"]):
        payload = {"model": "support-triage", **({} if messages is None else {"messages": messages})}
        status, body = _post(gateway, "/v1/chat/completions", json.dumps(payload).encode())
        assert status == 400 and body["error"]["param"] == "messages", messages


def test_an_unknown_slot_is_a_404(client) -> None:
    with pytest.raises(openai.NotFoundError, match="no slot 'nope'"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_a_missing_or_wrong_client_key_is_a_401(served) -> None:
    _, gateway, _ = served
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=gateway.base_url, api_key=key or "x", max_retries=0,
                            default_headers={} if key else {"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="support-triage", messages=[{"role": "user", "content": "x"}])


def test_the_bearer_scheme_of_a_client_key_is_case_insensitive(served) -> None:
    _, gateway, _ = served
    body = json.dumps({"model": "support-triage", "messages": [{"role": "user", "content": _ticket()}]}).encode()
    for scheme in ("bearer", "BEARER"):
        status, answer = _post(gateway, "/v1/chat/completions", body, {"Authorization": f"{scheme} {KEY}"})
        assert status == 200, answer


def test_a_wrong_method_is_a_405_that_says_which_methods_are_allowed(served) -> None:
    _, gateway, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    connection.request("GET", "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    assert response.status == 405 and response.getheader("Allow") == "POST"
    assert payload["error"]["code"] == "method_not_allowed"


def test_the_openapi_document_is_valid_and_describes_the_bodies_the_handlers_check(served) -> None:
    _, gateway, _ = served
    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.port}/openapi.json", timeout=20) as response:
        document = json.loads(response.read())
    validate(document)  # raises on a dangling $ref or any other violation of OpenAPI 3.1
    assert {"/v1/chat/completions", "/v1/capture", "/v1/feedback", "/v1/models", "/healthz", "/readyz"} <= set(document["paths"])
    schemas = document["components"]["schemas"]
    assert schemas["CaptureBody"]["properties"]["status"]["anyOf"][0]["maximum"] == 999
    assert schemas["Outcome"]["allOf"][0]["anyOf"][1]["required"] == ["client_request_id"]
    assert schemas["ChatRequest"]["required"] == ["model", "messages"]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert ("401" in operation["responses"]) == path.startswith("/v1/"), path


def test_an_unreachable_upstream_is_a_502_with_a_json_error(client) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="dead", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_unreachable"


def test_an_upstream_slower_than_the_slot_timeout_is_a_504(client) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 504 and caught.value.body["code"] == "upstream_timeout"


def test_upstream_errors_are_passed_through_unchanged(client) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 500 and "simulat" in json.dumps(caught.value.body).lower()


def _stream_and_leave(served, slot: str, ticket: int, read: Callable[[http.client.HTTPResponse], object]):
    """Stream an answer over a raw connection, `read` some of it, hang up; returns the capture."""
    ws, gateway, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    body = json.dumps({"model": slot, "stream": True, "messages": [{"role": "user", "content": _ticket(ticket)}]})
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    request_id = response.getheader("x-shadowzoo-request-id")
    read(response)
    connection.sock.close()
    connection.close()
    return _captured(ws, request_id)


def test_a_client_that_leaves_mid_stream_is_captured_as_partial(served) -> None:
    record = _stream_and_leave(served, "chatty", 1, lambda response: response.read1(64))
    assert record.partial and record.error == "client disconnected before the stream ended"


def test_a_client_that_leaves_after_done_while_the_upstream_holds_the_stream_has_a_complete_capture(served) -> None:
    def until_done(response: http.client.HTTPResponse) -> None:
        assert any(response.readline() == b"data: [DONE]\n" for _ in range(500))

    record = _stream_and_leave(served, "held", 2, until_done)
    assert (record.partial, record.error, record.status) == (False, None, 200)
    assert record.output and record.usage["completion_tokens"] > 0


def test_a_stream_ends_at_done_though_the_upstream_holds_it_open(served, client) -> None:
    chunks = list(client.chat.completions.create(
        model="held", messages=[{"role": "user", "content": _ticket(4)}], stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_request_with_a_lone_surrogate_loses_only_its_own_capture(served, client) -> None:
    ws, gateway, _ = served
    before = _dropped(gateway, "support-triage", "unwritable")
    body = b'{"model": "support-triage", "messages": [{"role": "user", "content": "caf\\udc80 order"}]}'
    status, answer = _post(gateway, "/v1/chat/completions", body)
    assert status == 200 and answer["choices"][0]["message"]["content"]
    for n in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="support-triage", messages=[{"role": "user", "content": f"after the surrogate {n}"}])
        assert _captured(ws, raw.headers["x-shadowzoo-request-id"]).status == 200
    assert _dropped(gateway, "support-triage", "unwritable") == before + 1


def _dropped(gateway, slot: str, reason: str) -> float:
    """The gateway's count of captures dropped for `reason`, from its /metrics."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    series = f'shadowzoo_shadow_dropped_total{{reason="{reason}",slot="{slot}"}} '
    return next((float(line[len(series):]) for line in text.splitlines() if line.startswith(series)), 0.0)


def test_json_nested_too_deeply_is_a_json_400(served) -> None:
    _, gateway, _ = served
    deep = b"[" * 9_000 + b"]" * 9_000  # under the fixture's 20000-byte body limit
    for path in ("/v1/chat/completions", "/v1/capture", "/v1/feedback"):
        status, body = _post(gateway, path, deep)
        assert status == 400 and body["error"]["code"] == "invalid_json", path
        assert "nested too deeply" in body["error"]["message"]


def test_feedback_for_an_unknown_request_is_accepted_and_spooled(served) -> None:
    ws, gateway, _ = served
    status, body = _post(gateway, "/v1/feedback", json.dumps({"request_id": "not-seen-yet", "label": "billing"}).encode())
    assert status == 202

    def outcome():
        for segment in ready_segments(ws / ".shadowzoo" / "spool"):
            for record in read_segment(segment):
                if record.type == "outcome" and record.request_key == "not-seen-yet":
                    return record
    assert wait_until(outcome).value == "billing"


@pytest.mark.parametrize(("outcome", "accepted"), [
    ({"client_request_id": "app-9", "label": "billing"}, True),
    ({"request_id": "r9", "kind": "reaction", "value": {"thumbs": "up"}}, True),
    ({"request_id": "r9", "label": "billing", "value": "technical"}, False),
    ({"request_id": "r9", "label": None}, False),
    ({"request_id": "r9", "kind": "reaction", "label": "billing"}, False),
    ({"label": "billing"}, False),
])
def test_feedback_and_an_outcomes_file_accept_and_refuse_the_same_outcomes(served, tmp_path, outcome, accepted) -> None:
    _, gateway, _ = served
    status, body = _post(gateway, "/v1/feedback", json.dumps(outcome).encode())
    assert (status == 202) == accepted, body
    logged = tmp_path / "outcomes.jsonl"
    logged.write_text(json.dumps(outcome) + "\n")
    try:
        list(read_outcome_log(logged))
        assert accepted
    except LogFileError as exc:
        assert not accepted and body["error"]["message"].split(": ", 1)[-1] in str(exc), (body, exc)


def test_observer_capture_is_spooled_like_gateway_traffic(served) -> None:
    ws, gateway, _ = served
    exchange = {
        "slot": "support-triage", "request": {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "billing"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
        "latency_ms": 120, "client_request_id": "app-7",
    }
    status, body = _post(gateway, "/v1/capture", json.dumps(exchange).encode())
    assert status == 202
    record = _captured(ws, body["request_id"])
    assert record.source == "capture" and record.output == "billing" and record.usage["completion_tokens"] == 1


def test_a_capture_for_an_unknown_slot_is_a_404_and_one_without_messages_a_400(served) -> None:
    _, gateway, _ = served
    exchange = _exchange()
    status, body = _post(gateway, "/v1/capture", json.dumps({**exchange, "slot": "nope"}).encode())
    assert status == 404 and body["error"]["param"] == "slot" and "no slot 'nope'" in body["error"]["message"]
    status, body = _post(gateway, "/v1/capture", json.dumps({**exchange, "request": {"model": "x"}}).encode())
    assert status == 400 and body["error"]["param"] == "request" and "'messages'" in body["error"]["message"]


@pytest.mark.parametrize(("change", "param"), [
    ({"status": 2147483648}, "status"),
    ({"status": "teapot"}, "status"),
    ({"latency_ms": -1}, "latency_ms"),
    ({"client_request_id": "x" * 5000}, "client_request_id"),
    ({"response": {"choices": [{"message": {"content": 5}}]}}, "response.choices.0.message.content"),
    ({"response": {"choices": [{"message": {"content": "a"}}], "usage": "lots"}}, "response.usage"),
    ({"usage": [1, 2]}, "usage"),
    ({"usage": {"prompt_tokens": -3}}, "usage.prompt_tokens"),
    ({"request": "hello"}, "request"),
])
def test_a_capture_with_a_field_of_the_wrong_type_or_range_is_a_400_naming_it(served, change, param) -> None:
    _, gateway, _ = served
    status, body = _post(gateway, "/v1/capture", json.dumps({**_exchange(), **change}).encode())
    assert status == 400 and body["error"]["param"] == param, body


def test_text_that_is_not_unicode_or_numbers_that_are_not_json_are_a_400_for_captures_and_feedback(served) -> None:
    _, gateway, _ = served
    exchange = json.dumps(_exchange())
    for path, bad in (("/v1/capture", exchange.replace('"billing"', '"bill\\udc80"')),
                      ("/v1/capture", exchange.replace('"latency_ms": 120', '"latency_ms": NaN')),
                      ("/v1/feedback", '{"request_id": "r1", "label": "bill\\udc80"}')):
        status, body = _post(gateway, path, bad.encode())
        assert status == 400 and body["error"]["code"] in ("invalid_request", "invalid_json"), bad


def _exchange() -> dict:
    return {
        "slot": "support-triage", "request": {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        "response": {"choices": [{"message": {"role": "assistant", "content": "billing"}}],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
        "latency_ms": 120, "client_request_id": "app-7",
    }


def test_a_new_champion_is_served_within_a_second_and_a_corrupt_routes_file_is_ignored(served, client) -> None:
    ws, gateway, _ = served
    routes = ws / ".shadowzoo" / "routes.json"
    good = routes.read_text()
    with Registry.open(load_workspace(ws)) as registry:
        variant = registry.register(NewVariant(
            slot="support-triage", label="next", kind="chat", skill_text="Answer with one category, please.",
            config={"kind": "chat", "provider": "sim", "model": "sim-large", "params": {}},
        )).variant
        registry.promote("support-triage", variant.version_id, "tester", None, None)

    def version() -> str:
        return client.chat.completions.with_raw_response.create(
            model="support-triage", messages=[{"role": "user", "content": "x"}]).headers["x-shadowzoo-version"]

    wait_until(lambda: version() == variant.version_id, timeout_s=5)
    routes.write_text("{ corrupt")
    wait_until(lambda: "routes.json is unreadable" in gateway.output(), timeout_s=5)
    assert version() == variant.version_id, "the gateway read the corrupt file and dropped the last good table"
    routes.write_text(good)
    wait_until(lambda: version().startswith("champ-"), timeout_s=5)


def test_a_slot_removed_from_the_config_is_a_404_for_chat_and_capture_though_it_kept_its_champion(
        served, client) -> None:
    ws, gateway, _ = served
    config_file = ws / "shadowzoo.yaml"
    kept = config_file.read_text()

    def rewrite_routes() -> None:
        with Registry.open(load_workspace(ws)) as registry:
            registry.write_routes()

    edit_config(ws, lambda config: config["slots"].pop("broken"))
    try:
        rewrite_routes()
        wait_until(lambda: "broken" not in [m.id for m in client.models.list()], timeout_s=5)
        with pytest.raises(openai.NotFoundError, match="no slot 'broken'"):
            client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
        status, body = _post(gateway, "/v1/capture", json.dumps({**_exchange(), "slot": "broken"}).encode())
        assert status == 404 and body["error"]["param"] == "slot"
    finally:
        config_file.write_text(kept)
        rewrite_routes()
    wait_until(lambda: "broken" in [m.id for m in client.models.list()], timeout_s=5)


def test_the_champion_is_served_while_the_database_is_held_by_another_process(served, client) -> None:
    ws, _, _ = served
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()",
         str(ws / ".shadowzoo" / "shadowzoo.duckdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        answer = client.chat.completions.create(model="support-triage", messages=[{"role": "user", "content": "x"}])
        assert answer.choices[0].message.content
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def _one_slot_workspace(tmp_path: Path, simulator, gateway: dict | None = None) -> Path:
    """A workspace whose one slot's champion is the simulator's sim-mini."""
    ws = init_workspace(tmp_path / "ws")

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator.base_url
        config["gateway"] = {**config.get("gateway", {}), **(gateway or {})}

    edit_config(ws, configure)
    with Registry.open(load_workspace(ws)) as registry:
        variant = registry.register(NewVariant(
            slot="support-triage", label="champ", kind="chat",
            config={"kind": "chat", "provider": "sim", "model": "sim-mini", "params": {}})).variant
        registry.promote("support-triage", variant.version_id, "tester", None, None)
    return ws


def test_sigterm_flushes_every_accepted_capture(tmp_path: Path) -> None:
    simulator = start_simulator()
    ws = _one_slot_workspace(tmp_path, simulator)
    gateway = GatewayProcess(ws, env={"SIM_API_KEY": "sim"})
    try:
        fast = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
        ids = {fast.chat.completions.with_raw_response.create(
            model="support-triage", messages=[{"role": "user", "content": f"n{i}"}]).headers["x-shadowzoo-request-id"]
            for i in range(20)}
    finally:
        gateway.stop()
        simulator.stop()
    spooled = {r.request_id for s in ready_segments(ws / ".shadowzoo" / "spool") for r in read_segment(s)}
    assert ids <= spooled


def test_a_backlog_too_large_for_one_file_is_written_in_segments_that_fit(tmp_path: Path) -> None:
    simulator = start_simulator()
    ws = _one_slot_workspace(tmp_path, simulator, {"flush_interval_s": 5})
    # Any file over SEGMENT_BYTES + 512 KiB fails to write, as on a nearly full disk; 16 captures
    # of 700 kB each arrive within about one flush interval, far more than one file may hold.
    gateway = GatewayProcess(ws, env={"SIM_API_KEY": "sim"}, file_size_limit=SEGMENT_BYTES + 512 * 1024)
    try:
        fast = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=60)

        def ask(n: int) -> str:
            return fast.chat.completions.with_raw_response.create(
                model="support-triage", messages=[{"role": "user", "content": f"{n} " + "z" * 700_000}],
            ).headers["x-shadowzoo-request-id"]

        def all_spooled() -> bool:
            return ids <= {r.request_id for s in ready_segments(ws / ".shadowzoo" / "spool") for r in read_segment(s)}

        with ThreadPoolExecutor(max_workers=8) as pool:
            ids = set(pool.map(ask, range(16)))
        wait_until(all_spooled, timeout_s=40)
    finally:
        gateway.stop()
        simulator.stop()
    segments = ready_segments(ws / ".shadowzoo" / "spool")
    assert all_spooled() and len(segments) > 1
    assert all(segment.stat().st_size <= SEGMENT_BYTES + 512 * 1024 for segment in segments)


def test_without_client_keys_the_gateway_binds_loopback_and_says_so(tmp_path: Path) -> None:
    ws = init_workspace(tmp_path / "ws")
    gateway = GatewayProcess(ws, host="0.0.0.0")
    output = gateway.stop()
    assert "no client keys configured, so binding 127.0.0.1 instead of 0.0.0.0" in output


def test_a_burst_of_captures_reaches_the_spool_without_waiting_for_the_flush_interval(tmp_path: Path) -> None:
    # A kill -9 loses what is not yet on disk: with a minute between timed flushes, only the
    # count bound (flush_max_records) can write the burst while the gateway runs.
    ws = init_workspace(tmp_path / "ws")
    edit_config(ws, lambda config: config.update(gateway={"flush_interval_s": 60, "flush_max_records": 16}))
    gateway = GatewayProcess(ws)
    try:
        sent = [f"burst-{n}" for n in range(40)]
        for key in sent:
            status, _ = _post(gateway, "/v1/feedback", json.dumps({"request_id": key, "label": "billing"}).encode())
            assert status == 202

        def spooled() -> set[str]:
            return {r.request_key for s in ready_segments(ws / ".shadowzoo" / "spool") for r in read_segment(s)}

        wait_until(lambda: len(spooled()) >= 32, timeout_s=30)
    finally:
        gateway.stop()
    assert spooled() == set(sent)


MALFORMED = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
    b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
)
ABANDONED = b'POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"request_id": '


def _connect(gateway, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    sock.sendall(data)
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    received = b""
    with sock:
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _error_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_a_flood_of_malformed_and_abandoned_requests_logs_a_few_lines_and_no_traceback(tmp_path: Path) -> None:
    gateway = GatewayProcess(init_workspace(tmp_path / "ws"))
    answers = []
    try:
        for n in range(300):
            if n % 5 == 4:
                _connect(gateway, ABANDONED).close()
            else:
                answers.append(_until_closed(_connect(gateway, MALFORMED[n % 5])))
        assert _until_closed(_connect(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                             ).startswith(b"HTTP/1.1 200")
    finally:
        output = gateway.stop()
    logged = output.split("listening on", 1)[1].splitlines()[1:]
    assert "Traceback" not in output
    assert len(logged) <= 50, "\n".join(logged)
    assert any("malformed request" in line and "suppressed" in line for line in logged), "\n".join(logged)
    assert {(status, error["code"]) for status, error in map(_error_of, answers)} == {(400, "bad_request")}


def _trickled(gateway) -> bytes:
    """Headers sent a byte every 0.2 s, never idle for long, never complete: what the server answers."""
    sock = _connect(gateway, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    sock.settimeout(0.2)
    for _ in range(150):
        try:
            answer = sock.recv(65536)
        except TimeoutError:
            sock.sendall(b"a")
            continue
        sock.settimeout(30)
        try:
            return answer + _until_closed(sock)
        except ConnectionResetError:  # a byte sent as the server closed makes it reset: its answer was read first
            return answer
    raise AssertionError("the server kept a connection whose headers never ended")


def test_slow_clients_get_a_408_and_are_disconnected_while_others_are_served(tmp_path: Path) -> None:
    simulator = start_simulator()
    ws = _one_slot_workspace(tmp_path, simulator, {"header_timeout_s": 1, "body_timeout_s": 1})
    gateway = GatewayProcess(ws, env={"SIM_API_KEY": "sim"})
    body = b'{"model": "support-triage", "messages": [{"role": "user", "content": "hi"}]}'
    try:
        fast = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=20)
        silent = [_connect(gateway) for _ in range(3)]
        half_headers = [_connect(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty")
                        for _ in range(3)]
        half_body = [_connect(gateway, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                                       b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:20])) for _ in range(3)]
        assert fast.chat.completions.create(model="support-triage", messages=[{"role": "user", "content": "x"}])
        for sock in silent + half_headers:
            status, error = _error_of(_until_closed(sock))
            assert (status, error["code"]) == (408, "header_timeout")
        for sock in half_body:
            status, error = _error_of(_until_closed(sock))
            assert (status, error["code"]) == (408, "body_timeout")
        status, error = _error_of(_trickled(gateway))
        assert (status, error["code"]) == (408, "header_timeout")
        assert fast.chat.completions.create(model="support-triage", messages=[{"role": "user", "content": "y"}])
    finally:
        gateway.stop()
        simulator.stop()


def test_a_bad_exchange_is_refused_in_the_same_words_by_capture_and_by_the_log_file_loader(served, tmp_path: Path) -> None:
    _, gateway, _ = served
    bad = {**_exchange(), "request": {"messages": []}}
    status, body = _post(gateway, "/v1/capture", json.dumps(bad).encode())
    log = tmp_path / "traffic.jsonl"
    log.write_text(json.dumps(bad) + "\n")
    with pytest.raises(LogFileError) as loaded:
        list(read_traffic_log(log))
    expected = "'messages' must be a non-empty array of message objects"
    assert status == 400 and body["error"]["param"] == "request"
    assert body["error"]["message"] == f"request: {expected}"
    assert str(loaded.value) == f"{log}: line 1: field 'request': {expected}"
