"""Hostile input while normal traffic flows: no accepted capture is lost or doubled, ingest goes on.

A real `shadowzoo serve` (gateway and daemon) takes a bounded stream of normal chat requests
through the official `openai` client, each followed by its label, while another thread
sends what issue 14 lists: out-of-range numbers, lone surrogates, JSON nested 10k deep,
non-string content, unknown slots, bodies over the limit, slowloris connections, wrong
admin tokens, and, straight into the spool, bad lines and a directory named like a
segment. Afterwards the DuckDB file holds every normal request and label exactly once and
no hostile one, and what ingest could not store waits in quarantine.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import openai
import pytest

from registry import load_workspace, utcnow
from shadow.spool_records import TrafficRecord
from shadow.spool import spool_dir, write_segment
from tests.servers import ADMIN_TOKEN, DEMO_SIM, Served, champion_workspace, start_simulator, wait_until

SLOT = "support-triage"
NORMAL, LATER, HOSTILE_ROUNDS, SLOWLORIS = 200, 20, 3, 4
REQUEST_TIMEOUT_S = 60
TICKETS = [json.loads(line) for line in DEMO_SIM.with_name("tickets.jsonl").read_text().splitlines()]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`shadowzoo serve` on the demo workspace, its champion on the simulator, ingesting often."""
    simulator = start_simulator(fast=True)
    workspace_dir = champion_workspace(tmp_path / "ws", simulator.base_url, gateway={"flush_interval_s": 0.2},
                                       daemon={"ingest_interval_s": 0.3})
    server = Served(workspace_dir)
    yield server
    server.stop()
    simulator.stop()


class Traffic:
    """Normal requests and their labels through the gateway; what was accepted, by shadowzoo's id."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.client = openai.OpenAI(base_url=f"{served.gateway}/v1", api_key="x", max_retries=0, timeout=60)
        self.accepted: dict[str, str] = {}
        self.labelled: set[str] = set()
        self.lock = threading.Lock()

    def send(self, i: int) -> None:
        ticket = TICKETS[i % len(TICKETS)]
        raw = self.client.chat.completions.with_raw_response.create(
            model=SLOT, messages=[{"role": "user", "content": ticket["input"]}],
            extra_headers={"x-shadowzoo-request-id": f"normal-{i}"})
        request_id = raw.headers["x-shadowzoo-request-id"]
        status, _ = _post(self.served.gateway, "/v1/feedback", json.dumps({"request_id": request_id, "label": ticket["expected"]}))
        with self.lock:
            self.accepted[request_id] = f"normal-{i}"
            if status == 202:
                self.labelled.add(request_id)


def _post(base: str, path: str, body: str | bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of one POST, sent as raw bytes so the body can be anything."""
    return _request(base, "POST", path, body.encode() if isinstance(body, str) else body,
                    {"Content-Type": "application/json", **(headers or {})})


def _get(base: str, path: str, authorization: str = f"Bearer {ADMIN_TOKEN}") -> tuple[int, bytes]:
    return _request(base, "GET", path, None, {"Authorization": authorization})


def _request(base: str, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    """(status, body) of one request; a server that never answers fails the test naming the request."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=REQUEST_TIMEOUT_S)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except TimeoutError:
        raise AssertionError(f"{method} {base}{path} ({len(body or b'')} bytes) got no answer") from None
    finally:
        connection.close()


def _exchange(tag: str, **change) -> dict:
    exchange = {"slot": SLOT, "request_id": tag, "client_request_id": tag,
                "request": {"model": SLOT, "messages": [{"role": "user", "content": "hostile"}]},
                "response": {"choices": [{"message": {"role": "assistant", "content": "other"}}]}}
    return {**exchange, **change}


def _hostile_requests(tag: str, max_body: int) -> list[tuple[str, str | bytes, dict[str, str], int]]:
    """(path, body, headers, expected status) of each hostile request; the ids of those that must
    never be stored start with `tag`, that of an odd but valid request (content as an object) with `odd-`."""
    deep = "[" * 10_000 + "]" * 10_000
    chat = {"model": SLOT, "messages": [{"role": "user", "content": "x"}]}
    huge = json.dumps({**chat, "messages": [{"role": "user", "content": "x" * max_body}]})
    return [
        ("/v1/capture", json.dumps(_exchange(f"{tag}-status", status=2147483648)), {}, 400),
        ("/v1/capture", json.dumps(_exchange(f"{tag}-surrogate", request={**chat, "messages": [{"role": "user", "content": "\udc80"}]})), {}, 400),
        ("/v1/feedback", json.dumps({"request_id": f"{tag}-surrogate", "label": "\udc80"}), {}, 400),
        ("/v1/capture", json.dumps(_exchange(f"{tag}-content", response={"choices": [{"message": {"content": 123}}]})), {}, 400),
        ("/v1/capture", json.dumps(_exchange(f"{tag}-slot", slot="no-such-slot")), {}, 404),
        ("/v1/capture", json.dumps(_exchange(f"{tag}-nan", latency_ms=float("nan"))), {}, 400),
        ("/v1/chat/completions", json.dumps({**chat, "model": "no-such-slot"}), {"x-shadowzoo-request-id": f"{tag}-slot"}, 404),
        ("/v1/chat/completions", json.dumps({**chat, "messages": [{"role": "user", "content": {"not": "text"}}]}),
         {"x-shadowzoo-request-id": f"odd-{tag}-parts"}, None),
        ("/v1/chat/completions", json.dumps({**chat, "messages": [{"role": "user", "content": "\udc80"}]}),
         {"x-shadowzoo-request-id": f"{tag}-surrogate-chat"}, 200),
        *[(path, deep, {"x-shadowzoo-request-id": f"{tag}-deep"}, 400) for path in ("/v1/chat/completions", "/v1/capture", "/v1/feedback")],
        *[(path, huge, {"x-shadowzoo-request-id": f"{tag}-huge"}, 413) for path in ("/v1/chat/completions", "/v1/capture", "/v1/feedback")],
    ]


def _send_hostile(served: Served, max_body: int) -> list[str]:
    """Every hostile request, `HOSTILE_ROUNDS` times; returns what was answered otherwise than expected."""
    surprises = []
    for round_ in range(HOSTILE_ROUNDS):
        for path, body, headers, expected in _hostile_requests(f"hostile{round_}", max_body):
            status, answer = _post(served.gateway, path, body, headers)
            if (expected is not None and status != expected) or status >= 500 or not answer.startswith(b"{"):
                surprises.append(f"{path} {headers}: {status} {answer[:200]!r}")
        for token in ("Bearer wrong", "Bearer ", "Basic " + ADMIN_TOKEN, "Bearer " + "x" * 8000, f"Bearer {ADMIN_TOKEN}x"):
            if (status := _get(served.admin, "/admin/status", token)[0]) != 401:
                surprises.append(f"admin token {token[:20]!r}: {status}")
    return surprises


def _spool_hostile_records(spool: Path) -> None:
    """A segment with one good record and three bad ones, and a directory named like a segment."""
    good = TrafficRecord(request_id="spooled-good", slot=SLOT, received_at=utcnow(),  # within retention
                         request={"messages": [{"role": "user", "content": "hi"}]}, status=200, output="other")
    line = json.loads(good.model_dump_json())
    bad = [{**line, "request_id": "hostile-spooled-status", "status": 2147483648},
           {**line, "request_id": "hostile-spooled-surrogate", "output": "\udc80"},
           {**line, "request_id": "hostile-spooled-deep", "request": json.loads("[" * 500 + "]" * 500)}]
    write_segment(spool, [good.model_dump_json().encode(), *(json.dumps(record).encode() for record in bad)])
    (spool / "x.jsonl").mkdir()


def _slowloris(base: str) -> list[socket.socket]:
    """Connections that send part of a request's headers and then nothing."""
    host, port = base.removeprefix("http://").split(":")
    held = []
    for _ in range(SLOWLORIS):
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\nX-a: ")
        held.append(sock)
    return held


def _rows(workspace_dir: Path, query: str, params: list | None = None) -> list[tuple]:
    with duckdb.connect(str(workspace_dir / ".shadowzoo" / "shadowzoo.duckdb"), read_only=True) as db:
        return db.execute(query, params).fetchall()


def test_hostile_input_amid_normal_traffic_loses_no_accepted_capture_and_stores_none_of_its_own(served: Served) -> None:
    workspace = load_workspace(served.workspace_dir)
    spool = spool_dir(workspace.state_dir)
    traffic = Traffic(served)
    held = _slowloris(served.gateway) + _slowloris(served.admin)
    try:
        with ThreadPoolExecutor(8) as pool, ThreadPoolExecutor(1) as hostile:
            surprises = hostile.submit(_send_hostile, served, workspace.config.gateway.max_body_bytes)
            _spool_hostile_records(spool)
            list(pool.map(traffic.send, range(NORMAL)))
            assert surprises.result(timeout=300) == []
            list(pool.map(traffic.send, range(NORMAL, NORMAL + LATER)))  # after every hostile input
    finally:
        for sock in held:
            sock.close()

    def drained() -> dict | None:
        status = json.loads(_get(served.admin, "/admin/status")[1])
        return status if status["spool_segments"] == 0 and status["spool_quarantined_records"] >= 4 else None

    status = wait_until(drained, timeout_s=60, interval_s=0.3)
    assert status["spool_quarantined_records"] == 4, "three bad spooled lines and the directory, nothing else"
    served.stop()

    stored = dict(_rows(served.workspace_dir, "SELECT request_id, client_request_id FROM traffic WHERE request_id IN "
                                               "(SELECT unnest(?))", [list(traffic.accepted)]))
    assert len(traffic.accepted) == NORMAL + LATER and stored == traffic.accepted
    labels = _rows(served.workspace_dir, "SELECT request_key, count(*) FROM outcomes WHERE request_key IN "
                                         "(SELECT unnest(?)) GROUP BY request_key", [list(traffic.labelled)])
    assert len(traffic.labelled) == NORMAL + LATER and dict(labels) == dict.fromkeys(traffic.labelled, 1)
    hostile = _rows(served.workspace_dir, "SELECT request_id FROM traffic WHERE request_id LIKE 'hostile%' "
                                          "OR client_request_id LIKE 'hostile%'")
    assert hostile == []
    odd = _rows(served.workspace_dir, "SELECT client_request_id, count(*) FROM traffic WHERE client_request_id LIKE 'odd-%' "
                                      "GROUP BY ALL")
    assert dict(odd) == {f"odd-hostile{round_}-parts": 1 for round_ in range(HOSTILE_ROUNDS)}
    assert _rows(served.workspace_dir, "SELECT count(*) FROM traffic WHERE request_id = 'spooled-good'") == [(1,)]
    assert not (spool / "x.jsonl").exists() and (spool / "quarantine" / "x.jsonl").is_dir()

