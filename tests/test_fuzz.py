"""The admin API and the gateway fuzzed from their own OpenAPI documents (schemathesis, hypothesis).

One `shadowzoo serve` (gateway and daemon) runs on loopback with client keys and the admin
token. Each documented operation gets bounded numbers of generated requests, valid and
invalid, with and without credentials; every answer must be documented, conform to its
schema and content type, and never be a 5xx. Each test prints how many requests it sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.servers import ADMIN_TOKEN, Served, champion_workspace, start_simulator

SLOT = "support-triage"
CLIENT_KEY = "fuzz-client-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
"""No 5xx; every answer's status, content type and body as documented."""
EXACT = [*CHECKS, positive_data_acceptance]
"""And nothing the document allows is refused as invalid: for the gateway, whose bodies the
document describes whole. The admin API also refuses what depends on the workspace (a slot
or provider not configured, a module outside it) with a documented 400."""
FUZZ = settings(max_examples=6, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
"""Bounded: six requests per operation and mode. `derandomize` makes a failure found once
recur on every run (and stay fixed once fixed); `deadline=None` because a loaded machine may be slow."""
REQUEST_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`shadowzoo serve` on the demo workspace, its champion on the simulator, with client keys."""
    simulator = start_simulator(fast=True)
    workspace_dir = champion_workspace(tmp_path_factory.mktemp("fuzz") / "ws", simulator.base_url,
                                       gateway={"client_keys_env": "FUZZ_CLIENT_KEYS"})
    server = Served(workspace_dir, env={"FUZZ_CLIENT_KEYS": CLIENT_KEY})
    yield server
    server.stop()
    simulator.stop()


def fuzz(base_url: str, headers: dict[str, str], modes: tuple[GenerationMode, ...], checks: list = CHECKS,
         pick_slot: bool = False, examples: int = FUZZ.max_examples) -> Counter:
    """Every operation of `base_url`'s `/openapi.json`, `FUZZ`-bounded per mode; returns counts
    of requests and 5xx answers. A failing check fails the test with hypothesis's minimal example.

    `pick_slot` sends half the chat requests to the served slot, so they reach the champion
    (half of those streamed);
    `examples` bounds the requests per operation and mode (fewer where all answers are alike)."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", timeout=REQUEST_TIMEOUT_S)
    tally: Counter = Counter()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            takes_input = bool(operation.body) or any(True for _ in operation.iter_parameters())
            for mode in modes if takes_input else (GenerationMode.POSITIVE,):
                @settings(FUZZ, max_examples=examples)
                @given(case=operation.as_strategy(generation_mode=mode), to_slot=st.booleans(), stream=st.booleans())
                def check(case, to_slot: bool, stream: bool) -> None:
                    if pick_slot and to_slot and isinstance(case.body, dict) and "model" in case.body:
                        case.body.update(model=SLOT, stream=stream)
                    response = case.call(base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
                    tally["requests"] += 1
                    tally["5xx"] += response.status_code >= 500
                    case.validate_response(response, checks=checks, headers=headers)

                check()
    return tally


def test_the_admin_api_answers_fuzzed_requests_with_documented_answers_and_never_a_5xx(served: Served) -> None:
    tally = fuzz(served.admin, {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                 (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))
    print(f"admin API: {tally['requests']} requests fuzzed, {tally['5xx']} 5xx")
    assert tally["requests"] > 0 and tally["5xx"] == 0


def test_the_admin_api_refuses_fuzzed_requests_without_the_token_with_documented_401s(served: Served) -> None:
    tally = fuzz(served.admin, {}, (GenerationMode.POSITIVE,), examples=3)
    print(f"admin API without token: {tally['requests']} requests fuzzed, {tally['5xx']} 5xx")
    assert tally["requests"] > 0 and tally["5xx"] == 0


def test_the_gateway_answers_fuzzed_requests_with_documented_answers_and_never_a_5xx(served: Served) -> None:
    tally = fuzz(served.gateway, {"Authorization": f"Bearer {CLIENT_KEY}"},
                 (GenerationMode.POSITIVE, GenerationMode.NEGATIVE), EXACT, pick_slot=True)
    print(f"gateway: {tally['requests']} requests fuzzed, {tally['5xx']} 5xx")
    assert tally["requests"] > 0 and tally["5xx"] == 0


def test_the_gateway_refuses_fuzzed_requests_without_a_client_key_with_documented_401s(served: Served) -> None:
    tally = fuzz(served.gateway, {}, (GenerationMode.POSITIVE,), EXACT, examples=3)
    print(f"gateway without key: {tally['requests']} requests fuzzed, {tally['5xx']} 5xx")
    assert tally["requests"] > 0 and tally["5xx"] == 0
