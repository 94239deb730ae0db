"""The bundled simulator (not a real LLM), exercised over HTTP with the real openai client."""

from __future__ import annotations

import http.client
import json
import math
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from shadow.simulator import (
    SimulatorConfig,
    SimulatorConfigError,
    SimulatorHandle,
    load_simulator_config,
    start_in_thread,
)
from shadow.simulator.engine import RateLimiter
from shadow.simulator.simulator_config import Directive, ErrorConfig, LimitsConfig, ModelConfig, Ticket, load_tickets

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"
LABELS = ["billing", "technical", "account", "shipping", "other"]
BASE_SKILL = (
    "You are a support triage assistant. Classify the customer's ticket into one of: "
    "billing, technical, account, shipping, other. Reply with the category name."
)
BILLING_RULE = "Refunds, invoices, charges and payments are billing."
ALL_RULES = "\n".join(
    [
        BILLING_RULE,
        "Errors, crashes and slow pages are technical.",
        "Password, login and profile questions are account.",
        "Delivery, tracking and parcels are shipping.",
        "Anything else, such as feedback or partnerships, is other.",
        "Think carefully and double-check before answering.",
    ]
)
HELLO = [{"role": "user", "content": "hi"}]
TEST_MODELS = {
    "sim-ok": ModelConfig(accuracy=0.6),
    "sim-sharp": ModelConfig(accuracy=0.85),
    "sim-reasoning": ModelConfig(reasoning_tokens=20),
    "sim-500": ModelConfig(errors=ErrorConfig(http_500=1.0)),
    "sim-429": ModelConfig(errors=ErrorConfig(http_429=1.0, retry_after_s=7)),
    "sim-half": ModelConfig(errors=ErrorConfig(http_500=0.5)),
    "sim-hang": ModelConfig(errors=ErrorConfig(hang=1.0, hang_s=5)),
    "sim-reset": ModelConfig(errors=ErrorConfig(reset=1.0)),
    "sim-rpm": ModelConfig(limits=LimitsConfig(rpm=3)),
    "sim-tpm": ModelConfig(limits=LimitsConfig(tpm=60)),
    "sim-grader": ModelConfig(grader=True),
    "sim-grader-flaky": ModelConfig(grader=True, garbage_rate=0.5),
    "sim-grader-tenfold": ModelConfig(grader=True, score_scale=10),
    "sim-optimizer": ModelConfig(optimizer=True),
    "sim-held": ModelConfig(hold_open_s=10),
}


@pytest.fixture(scope="module")
def config() -> SimulatorConfig:
    """The demo config (task and directives) with models made for each test."""
    return load_simulator_config(DEMO / "simulator.yaml").model_copy(update={"models": TEST_MODELS, "seed": 3})


@pytest.fixture(scope="module")
def sim(config: SimulatorConfig) -> Iterator[SimulatorHandle]:
    """One simulator on an ephemeral port for the whole module."""
    with start_in_thread(config) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(sim: SimulatorHandle) -> openai.OpenAI:
    """The real openai client, without retries, pointed at the simulator."""
    return openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


@pytest.fixture(scope="module")
def tickets(config: SimulatorConfig) -> list[Ticket]:
    """The demo task's labelled tickets."""
    assert config.task is not None
    return load_tickets(config.task)


def ask(client: openai.OpenAI, model: str, text: str, skill: str | None = BASE_SKILL, **params: Any) -> Any:
    """One chat completion with an optional skill as the system message."""
    system = [{"role": "system", "content": skill}] if skill is not None else []
    messages = [*system, {"role": "user", "content": text}]
    return client.chat.completions.create(model=model, messages=messages, **params)


def classify_all(client: openai.OpenAI, model: str, skill: str, tickets: list[Ticket]) -> list[str]:
    """The first line of the model's answer to every ticket, in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = pool.map(lambda ticket: ask(client, model, ticket.input, skill), tickets)
        return [answer.choices[0].message.content.split("\n")[0] for answer in answers]


def raw_post(sim: SimulatorHandle, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes with a bearer token; returns status, headers and body, errors included."""
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    request = urllib.request.Request(sim.base_url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def expected_prompt_tokens(*texts: str) -> int:
    """The documented rule: 3 + Σ (4 + ceil(len / 4))."""
    return 3 + sum(4 + math.ceil(len(text) / 4) for text in texts)


def test_demo_config_points_at_300_labelled_tickets(config: SimulatorConfig, tickets: list[Ticket]) -> None:
    assert config.task is not None and config.task.dataset == DEMO / "tickets.jsonl"
    assert len(tickets) == 300
    assert {ticket.expected for ticket in tickets} == set(LABELS)
    assert len({ticket.id for ticket in tickets}) == len(tickets)


def grading_prompt(ticket: Ticket, answer: str) -> str:
    """A judge prompt as scorer.judge writes one: the ticket quoted, the answer between tags."""
    return f"Rubric: the category.\n\n<conversation>\n{ticket.input}\n</conversation>\n\n<answer>\n{answer}\n</answer>"


def grade(client: openai.OpenAI, model: str, prompt: str) -> str:
    return ask(client, model, prompt, skill="You grade answers.", temperature=0).choices[0].message.content


def test_grader_scores_one_when_the_answers_first_line_is_the_tickets_category(
    client: openai.OpenAI, tickets: list[Ticket]
) -> None:
    ticket = tickets[0]
    wrong = next(label for label in LABELS if label != ticket.expected)
    right = json.loads(grade(client, "sim-grader", grading_prompt(ticket, f" {ticket.expected.upper()} \n\nwhy")))
    assert right["score"] == 1.0 and ticket.id in right["reason"]
    assert json.loads(grade(client, "sim-grader", grading_prompt(ticket, f"{wrong}\n{ticket.expected}")))["score"] == 0.0


def test_grader_without_a_ticket_gives_a_deterministic_score_from_a_hash(client: openai.OpenAI) -> None:
    prompt = "Is this polite?\n<answer>\nThank you!\n</answer>"
    first, again = (json.loads(grade(client, "sim-grader", prompt)) for _ in range(2))
    assert first == again and 0.0 <= first["score"] <= 1.0 and "hash" in first["reason"]


def test_grader_garbage_is_drawn_per_call_so_a_retry_can_get_json(
    client: openai.OpenAI, tickets: list[Ticket]
) -> None:
    replies = [grade(client, "sim-grader-flaky", grading_prompt(tickets[1], tickets[1].expected)) for _ in range(20)]
    garbage = [reply for reply in replies if not reply.startswith("{")]
    assert 0 < len(garbage) < 20
    assert all(not re.search(r"[0-9{}]", reply) for reply in garbage)
    assert all(json.loads(reply)["score"] == 1.0 for reply in replies if reply not in garbage)


def test_grader_score_scale_multiplies_the_score(client: openai.OpenAI, tickets: list[Ticket]) -> None:
    reply = grade(client, "sim-grader-tenfold", grading_prompt(tickets[2], tickets[2].expected))
    assert json.loads(reply)["score"] == 10.0


def test_grader_options_on_a_model_that_is_not_a_grader_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("models:\n  sim-a:\n    garbage_rate: 0.1\n")
    with pytest.raises(SimulatorConfigError) as caught:
        load_simulator_config(path)
    assert f"{path}: models.sim-a:" in str(caught.value) and "grader: true" in str(caught.value)


def test_demo_config_serves_a_grader_for_judge_metrics() -> None:
    judge = load_simulator_config(DEMO / "simulator.yaml").models["sim-judge"]
    assert judge.grader and judge.garbage_rate == 0.0 and judge.input_cost_per_token > 0


def test_config_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sim.yaml"
    path.write_text("models:\n  sim-a:\n    errors: {http_500: 2}\n    latency: {base: 5}\n    hold_open_s: -1\n")
    with pytest.raises(SimulatorConfigError) as caught:
        load_simulator_config(path)
    assert f"{path}: models.sim-a.errors.http_500:" in str(caught.value)
    assert f"{path}: models.sim-a.latency.base:" in str(caught.value)
    assert f"{path}: models.sim-a.hold_open_s: Input should be greater than or equal to 0" in str(caught.value)


def test_dataset_errors_name_the_file_and_the_line(tmp_path: Path) -> None:
    rows = [{"id": "a", "input": "x", "expected": "billing"}, {"id": "b", "input": "y", "expected": "weather"}]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "sim.yaml").write_text("task: {dataset: items.jsonl}\n")
    task = load_simulator_config(tmp_path / "sim.yaml").task
    assert task is not None
    with pytest.raises(SimulatorConfigError, match=r"items\.jsonl:2: expected 'weather'"):
        load_tickets(task)


def test_ticket_answer_is_a_category_with_openai_usage(client: openai.OpenAI, tickets: list[Ticket]) -> None:
    completion = ask(client, "sim-ok", tickets[0].input)
    content = completion.choices[0].message.content
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "sim-ok" and completion.choices[0].finish_reason == "stop"
    assert content in LABELS
    assert completion.usage.prompt_tokens == expected_prompt_tokens(BASE_SKILL, tickets[0].input)
    assert completion.usage.completion_tokens == math.ceil(len(content) / 4)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_reasoning_tokens_add_an_explanation_after_a_blank_line(
    client: openai.OpenAI, tickets: list[Ticket]
) -> None:
    completion = ask(client, "sim-reasoning", tickets[1].input)
    category, blank, explanation = completion.choices[0].message.content.split("\n", 2)
    assert category in LABELS and blank == ""
    assert len(explanation) == 20 * 4
    assert completion.usage.completion_tokens == math.ceil((len(category) + 2) / 4) + 20


def test_other_requests_get_output_tokens_of_text(client: openai.OpenAI) -> None:
    completion = ask(client, "sim-ok", "What is the capital of France?", skill=None)
    assert completion.usage.completion_tokens == 16
    assert len(completion.choices[0].message.content) == 16 * 4
    assert completion.usage.prompt_tokens == expected_prompt_tokens("What is the capital of France?")


def test_answers_are_deterministic_across_calls_and_servers(
    client: openai.OpenAI, config: SimulatorConfig, tickets: list[Ticket]
) -> None:
    first = [ask(client, "sim-reasoning", t.input).choices[0].message.content for t in tickets[:5]]
    again = [ask(client, "sim-reasoning", t.input).choices[0].message.content for t in tickets[:5]]
    with start_in_thread(config) as other:
        fresh = openai.OpenAI(base_url=other.base_url, api_key="x", max_retries=0)
        elsewhere = [ask(fresh, "sim-reasoning", t.input).choices[0].message.content for t in tickets[:5]]
    assert first == again == elsewhere


def test_streaming_without_usage_sends_the_same_content_and_a_finish_chunk(
    client: openai.OpenAI, tickets: list[Ticket]
) -> None:
    whole = ask(client, "sim-reasoning", tickets[2].input).choices[0].message.content
    chunks = list(ask(client, "sim-reasoning", tickets[2].input, stream=True))
    assert all(chunk.object == "chat.completion.chunk" and chunk.usage is None for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streaming_ends_with_usage_chunk_when_requested(client: openai.OpenAI, tickets: list[Ticket]) -> None:
    usage = ask(client, "sim-reasoning", tickets[3].input).usage
    options = {"include_usage": True}
    chunks = list(ask(client, "sim-reasoning", tickets[3].input, stream=True, stream_options=options))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.model_dump() == usage.model_dump()
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_stream_is_terminated_by_the_done_marker(sim: SimulatorHandle) -> None:
    messages = [{"role": "user", "content": "hi"}]
    body = json.dumps({"model": "sim-ok", "stream": True, "messages": messages}).encode()
    status, headers, raw = raw_post(sim, "/chat/completions", body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert raw.endswith(b"data: [DONE]\n\n")


def test_a_stream_can_be_held_open_after_the_done_marker_as_proxies_do(sim: SimulatorHandle) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    body = json.dumps({"model": "sim-held", "stream": True, "messages": HELLO})
    connection.request("POST", "/v1/chat/completions", body=body, headers={"Authorization": "Bearer x"})
    response = connection.getresponse()
    assert any(response.readline() == b"data: [DONE]\n" for _ in range(200)), "the whole answer comes first"
    assert response.readline() == b"\n"
    connection.sock.settimeout(0.2)
    with pytest.raises(TimeoutError):  # nothing more comes, and the body has not ended
        response.readline()
    connection.close()


def test_skill_with_directives_answers_more_tickets_correctly(
    client: openai.OpenAI, tickets: list[Ticket]
) -> None:
    expected = [ticket.expected for ticket in tickets]
    plain = classify_all(client, "sim-ok", BASE_SKILL, tickets)
    ruled = classify_all(client, "sim-ok", BASE_SKILL + "\n" + ALL_RULES, tickets)
    assert set(plain) <= set(LABELS) and set(ruled) <= set(LABELS)
    plain_correct = sum(a == e for a, e in zip(plain, expected))
    ruled_correct = sum(a == e for a, e in zip(ruled, expected))
    assert ruled_correct > plain_correct


def test_a_labelled_directive_boosts_only_its_own_category(
    client: openai.OpenAI, tickets: list[Ticket]
) -> None:
    sample = tickets[:100]
    answers = classify_all(client, "sim-sharp", BASE_SKILL + "\n" + BILLING_RULE, sample)
    billing = [a == t.expected for a, t in zip(answers, sample) if t.expected == "billing"]
    others = [a == t.expected for a, t in zip(answers, sample) if t.expected != "billing"]
    assert billing and all(billing)
    assert not all(others)


def test_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI) -> None:
    completion = ask(client, "sim-ok", "Tell me a story.", max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    assert len(completion.choices[0].message.content) == 12


def test_injected_500_surfaces_as_internal_server_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        ask(client, "sim-500", "hello")
    assert caught.value.type == "server_error"


def test_injected_429_surfaces_as_rate_limit_error_with_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "sim-429", "hello")
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


def test_injected_errors_are_drawn_per_call_so_a_retry_can_succeed(client: openai.OpenAI) -> None:
    outcomes = set()
    for _ in range(20):
        try:
            ask(client, "sim-half", "hello")
            outcomes.add("ok")
        except openai.InternalServerError:
            outcomes.add("500")
    assert outcomes == {"ok", "500"}


def test_rpm_limit_rejects_requests_beyond_the_window(client: openai.OpenAI) -> None:
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model="sim-rpm", messages=HELLO)
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "sim-rpm", "hi")
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_tpm_limit_counts_prompt_and_completion_tokens(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="sim-tpm", messages=HELLO)
    used = raw.parse().usage.total_tokens
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(60 - used)
    with pytest.raises(openai.RateLimitError) as caught:
        ask(client, "sim-tpm", "hi")
    assert caught.value.type == "tokens"


def test_sliding_window_admits_again_once_old_requests_expire() -> None:
    now = [1000.0]
    limiter = RateLimiter(rpm=2, tpm=None, clock=lambda: now[0])
    assert limiter.admit(10).allowed and limiter.admit(10).allowed
    now[0] += 30
    refused = limiter.admit(10)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(30)
    now[0] += 30
    assert limiter.admit(10).allowed


def test_hanging_call_times_out_on_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        ask(client, "sim-hang", "hello", timeout=0.3)


def test_reset_surfaces_as_a_connection_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError) as caught:
        ask(client, "sim-reset", "hello")
    assert not isinstance(caught.value, openai.APITimeoutError)


def test_fast_mode_skips_injected_errors(config: SimulatorConfig) -> None:
    with start_in_thread(config, fast=True) as fast:
        fast_client = openai.OpenAI(base_url=fast.base_url, api_key="x", max_retries=0)
        assert ask(fast_client, "sim-500", "hello").choices[0].message.content


def test_api_keys_reject_other_bearer_tokens(config: SimulatorConfig) -> None:
    with start_in_thread(config.model_copy(update={"api_keys": ["sk-good"]})) as locked:
        good = openai.OpenAI(base_url=locked.base_url, api_key="sk-good", max_retries=0)
        bad = openai.OpenAI(base_url=locked.base_url, api_key="sk-bad", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(bad, "sim-ok", "hello")
        assert caught.value.code == "invalid_api_key"
        assert ask(good, "sim-ok", "hello").choices


def test_bad_json_gets_a_400_json_error(sim: SimulatorHandle) -> None:
    status, _, body = raw_post(sim, "/chat/completions", b"{not json")
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_missing_messages_gets_a_400_naming_the_param(sim: SimulatorHandle) -> None:
    status, _, body = raw_post(sim, "/chat/completions", json.dumps({"model": "sim-ok"}).encode())
    assert status == 400
    assert json.loads(body)["error"]["param"] == "messages"


def test_unknown_model_gets_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        ask(client, "gpt-nonexistent", "hello")
    assert caught.value.code == "model_not_found"


def test_unknown_route_gets_a_json_404(sim: SimulatorHandle) -> None:
    status, _, body = raw_post(sim, "/embeddings", b"{}")
    assert status == 404 and "error" in json.loads(body)


def test_models_endpoint_lists_every_model_with_its_prices(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert set(models) == set(TEST_MODELS)
    assert models["sim-ok"].owned_by == "shadowzoo-simulator"
    assert models["sim-ok"].model_dump()["input_cost_per_token"] == 0.0


def test_module_entry_point_announces_itself_and_stops_on_sigterm() -> None:
    command = [sys.executable, "-m", "shadow.simulator", "--config", str(DEMO / "simulator.yaml"), "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert re.fullmatch(r"shadowzoo simulator \(not a real LLM\) listening on http://127\.0\.0\.1:\d+/v1\n", line)


def optimize(client: openai.OpenAI, prompt: str) -> dict[str, Any]:
    """The sim-optimizer's JSON reply to one training prompt."""
    return json.loads(ask(client, "sim-optimizer", prompt, skill="You improve skills.").choices[0].message.content)


def test_optimizer_reflect_proposes_rules_for_failed_labels_only(client: openai.OpenAI, tickets: list[Ticket]) -> None:
    billing = next(t for t in tickets if t.expected == "billing")
    shipping = next(t for t in tickets if t.expected == "shipping")
    failed = (f'<task>reflect</task>\n<skill>\n{BASE_SKILL}\n</skill>\n<trajectories kind="failed">\n'
              f"<item>\ninput: {billing.input}\nexpected: billing\nanswer: other\n</item>\n"
              f"<item>\ninput: {shipping.input}\nexpected: shipping\nanswer: other\n</item>\n</trajectories>")
    edits = optimize(client, failed)["edits"]
    assert [e["op"] for e in edits] == ["append", "append"]
    boosted_skill = BASE_SKILL + "\n" + "\n".join(e["content"] for e in edits)
    assert accuracy_of(client, boosted_skill, tickets, "billing") > accuracy_of(client, BASE_SKILL, tickets, "billing")
    already = failed.replace(BASE_SKILL, BASE_SKILL + "\n" + BILLING_RULE)
    assert [e["content"] for e in optimize(client, already)["edits"]] == [edits[1]["content"]]
    rejected = failed.replace("</skill>", f"</skill>\n<rejected>\n{json.dumps([edits[0]])}\n</rejected>")
    assert len(optimize(client, rejected)["edits"]) == 1
    succeeded = failed.replace('kind="failed"', 'kind="succeeded"')
    assert optimize(client, succeeded) == {"edits": []}


def test_optimizer_answers_merge_rank_slow_update_and_meta(client: openai.OpenAI) -> None:
    a, b = {"op": "append", "content": "A."}, {"op": "append", "content": "B."}
    merged = optimize(client, f"<task>merge</task>\n<patches>\n{json.dumps([[a, b], [b]])}\n</patches>")
    assert merged == {"edits": [a, b]}
    assert optimize(client, f"<task>rank</task>\n<edits>\n{json.dumps([a, b])}\n</edits>") == {"order": [0, 1]}
    guidance = optimize(client, "<task>slow_update</task>")["guidance"]
    assert re.search(r"double[- ]check", guidance)
    assert optimize(client, "<task>meta</task>")["memory"]
    assert "error" in optimize(client, "hello")


def test_directive_rule_must_match_its_pattern() -> None:
    with pytest.raises(ValueError, match="does not match pattern"):
        Directive(pattern="refund[^.]*billing", rule="Shipping is shipping.", label="billing")
    with pytest.raises(ValueError, match="grader or an optimizer"):
        ModelConfig(grader=True, optimizer=True)


def accuracy_of(client: openai.OpenAI, skill: str, tickets: list[Ticket], label: str) -> float:
    chosen = [t for t in tickets if t.expected == label]
    answers = classify_all(client, "sim-ok", skill, chosen)
    return sum(a == t.expected for a, t in zip(answers, chosen)) / len(chosen)
