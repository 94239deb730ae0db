"""Realistic traffic through the real service: the evidence is what a rebuild from the stored rows gives.

One `shadowzoo serve` in front of the simulator takes what a user's application really sends,
all mixed: plain and streamed chat requests (the upstream holds each stream open after
`[DONE]`, as proxies do), exchanges the application observed itself, tool-call answers, labels
that arrive late, labels corrected before their request arrived, and a judge whose daily
budget runs out. Once the daemon has caught up, the evidence it built incrementally must be
what one rebuild from the stored rows gives, and its pair counts what the rows say.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

from ops.workspace_init import init_workspace
from registry import NewVariant, Registry, load_workspace
from scorer.quality_metrics import is_sampled, plan_quality
from scorer.service import Scorer
from tests.scoring_data import stored_evidence
from tests.servers import Served, edit_config, free_port, post_json, start_simulator, wait_until

TRIAGE, TOOLS = "support-triage", "tools"
DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo"
TICKETS = [json.loads(line) for line in (DEMO / "tickets.jsonl").read_text().splitlines()[:40]]
REFUND = {"name": "refund", "arguments": {"order": "A1"}}
TOOL_TICKETS = [
    {"id": "k1", "input": "Please refund order A1", "expected": "billing", "calls": [REFUND]},
    {"id": "k2", "input": "Escalate ticket 9", "expected": "other",
     "calls": [{"name": "escalate", "arguments": {"ticket": 9}}]},
    {"id": "k3", "input": "Refund order B7, then escalate ticket 4", "expected": "billing",
     "calls": [{"name": "refund", "arguments": {"order": "B7"}}, {"name": "escalate", "arguments": {"ticket": 4}}]},
]
TOOL_SPECS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
              for name in ("refund", "escalate")]
SIM_YAML = """
seed: 5
task: {{dataset: {dataset}, labels: [billing, technical, account, shipping, other]}}
models:
  sim-champ: {{accuracy: 0.6, tool_accuracy: 0.0, hold_open_s: 0.3}}
  sim-better: {{accuracy: 0.9, tool_accuracy: 1.0}}
  sim-judge: {{grader: true}}
"""
PRICE = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
JUDGE = {"type": "judge", "provider": "sim", "model": "sim-judge", "rubric": "The first line is the right category.",
         "sample_rate": 0.5, "daily_budget_usd": 0.003}


@pytest.fixture
def service(tmp_path: Path):
    """`serve` on a workspace of two slots (categories, and tool calls), champions on sim-champ,
    challengers on sim-better; the simulator holds streams open after [DONE]."""
    dataset = tmp_path / "tickets.jsonl"
    dataset.write_text("".join(json.dumps(t) + "\n" for t in TICKETS + TOOL_TICKETS))
    (tmp_path / "sim.yaml").write_text(SIM_YAML.format(dataset=dataset))
    simulator = start_simulator(tmp_path / "sim.yaml")
    ws = init_workspace(tmp_path / "ws")
    for spec in (ws / "zoo").glob("*.yaml"):
        spec.unlink()

    def configure(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = simulator.base_url
        config["prices"] = {model: PRICE for model in ("sim-champ", "sim-better", "sim-judge")}
        config["gateway"]["port"] = free_port()
        config["daemon"].update(admin_port=free_port(), score_interval_s=1, ingest_interval_s=0.3)
        triage = config["slots"][TRIAGE]
        triage["defaults"]["model"] = "sim-champ"
        triage["metrics"] = [{"type": "exact_match", "first_line": True}, JUDGE]
        triage["shadow"] = {"sample_rate": 1.0}
        triage["scoring"]["min_samples"] = 20
        config["slots"][TOOLS] = {**triage, "metrics": [{"type": "tool_call"}]}

    edit_config(ws, configure)
    ids = {}
    with Registry.open(load_workspace(ws)) as registry:
        for slot in (TRIAGE, TOOLS):
            for label, model in (("champ", "sim-champ"), ("better", "sim-better")):
                ids[slot, label] = registry.register(NewVariant(
                    slot=slot, label=label, kind="chat", skill_text="Answer with the category, or call a tool.",
                    config={"kind": "chat", "provider": "sim", "model": model})).variant.version_id
            registry.promote(slot, ids[slot, "champ"], "tester", "first champion", None)
    served = Served(ws)
    yield served, ids
    served.stop()
    simulator.stop()


def _label(served: Served, client_id: str, value) -> None:
    assert post_json(f"{served.gateway}/v1/feedback", {"request_id": client_id, "label": value}) == 202


def _send_traffic(served: Served) -> dict[str, int]:
    """Every kind of traffic a user's application sends; returns how many requests of each slot."""
    client = openai.OpenAI(base_url=f"{served.gateway}/v1", api_key="x", max_retries=0, timeout=30)
    for index, ticket in enumerate(TICKETS[32:36]):  # labels corrected before their request arrives
        _label(served, f"c{index}", "a wrong first guess")
        _label(served, f"c{index}", ticket["expected"])

    def chat(client_id: str, ticket: dict, stream: bool = False, **extra) -> None:
        messages = [{"role": "user", "content": ticket["input"]}]
        headers = {"x-shadowzoo-request-id": client_id}
        if stream:
            for _ in client.chat.completions.create(model=extra.pop("model", TRIAGE), messages=messages, stream=True,
                                                    extra_headers=headers, **extra):
                pass
        else:
            client.chat.completions.create(model=extra.pop("model", TRIAGE), messages=messages, extra_headers=headers,
                                           **extra)

    with ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(chat, f"g{i}", t) for i, t in enumerate(TICKETS[:16])]
        jobs += [pool.submit(chat, f"s{i}", t, True) for i, t in enumerate(TICKETS[16:24])]
        jobs += [pool.submit(chat, f"c{i}", t) for i, t in enumerate(TICKETS[32:36])]
        jobs += [pool.submit(chat, f"k{i}", t, i % 2 == 1, model=TOOLS, tools=TOOL_SPECS)
                 for i, t in enumerate(TOOL_TICKETS * 2)]
        for job in jobs:
            job.result()
    for index, ticket in enumerate(TICKETS[24:32]):  # observed by the application itself
        answer = ticket["expected"] if index % 2 else "other"
        assert post_json(f"{served.gateway}/v1/capture", {
            "slot": TRIAGE, "client_request_id": f"o{index}", "latency_ms": 200,
            "request": {"model": "sim-champ", "messages": [{"role": "user", "content": ticket["input"]}]},
            "response": {"choices": [{"message": {"role": "assistant", "content": answer}}],
                         "usage": {"prompt_tokens": 30, "completion_tokens": 1}}}) == 202
    for prefix, tickets in (("g", TICKETS[:16]), ("s", TICKETS[16:24]), ("o", TICKETS[24:32])):  # late labels
        for index, ticket in enumerate(tickets):
            _label(served, f"{prefix}{index}", ticket["expected"])
    for index, ticket in enumerate(TOOL_TICKETS * 2):
        _label(served, f"k{index}", ticket["calls"][0] if len(ticket["calls"]) == 1 else ticket["calls"])
    return {TRIAGE: 36, TOOLS: 6}


def _settled(served: Served, sent: dict[str, int]) -> dict[str, dict]:
    """The slots' boards once the daemon has taken in everything sent: the spool and the shadow
    queue empty, and three looks in a row alike."""
    looks: list = []

    def look():
        _, status = served.call("/admin/status")
        answers = {slot: served.call(f"/admin/leaderboard?slot={slot}") for slot in sent}
        if any(code == 404 for code, _ in answers.values()):  # not scored for the first time yet
            looks.append(None)
            time.sleep(1.0)
            return None
        boards = {slot: board for slot, (_, board) in answers.items()}
        seen = [(row["version_id"], row["n"], (row.get("comparison") or {}).get("pairs"))
                for board in boards.values() for row in board["rows"]]
        seen.append(tuple(judge["unjudged"] for judge in boards[TRIAGE]["judges"]))
        looks.append(seen if status["spool_segments"] == 0 and not status["queue_depth"] else None)
        time.sleep(1.0)
        return boards if len(looks) >= 3 and looks[-1] is not None and looks[-3:].count(looks[-1]) == 3 else None

    return wait_until(look, timeout_s=180, interval_s=0)


def test_the_evidence_of_realistic_traffic_is_what_a_rebuild_from_its_rows_gives(service) -> None:
    served, ids = service
    sent = _send_traffic(served)
    boards = _settled(served, sent)
    served.stop()
    workspace = load_workspace(served.workspace_dir)
    with Registry.open(workspace) as registry:
        db = registry.database.connection
        assert db.execute("SELECT count(*) FROM traffic WHERE partial OR status <> 200 OR error IS NOT NULL"
                          ).fetchone() == (0,), "a stream closed after [DONE] is complete"
        judge_key = next(iter(plan_quality(workspace.slot(TRIAGE).metrics, "m").row_metrics))
        judged = {(r, v) for r, v in db.execute(
            "SELECT request_id, version_id FROM metric_values WHERE metric_key = ? AND value IS NOT NULL", [judge_key]
        ).fetchall()}
        requests = [r for (r,) in db.execute("SELECT request_id FROM traffic WHERE slot = ?", [TRIAGE]).fetchall()]
        versions = (ids[TRIAGE, "champ"], ids[TRIAGE, "better"])
        complete = [r for r in requests if not is_sampled(r, judge_key, JUDGE["sample_rate"])
                    or all((r, v) in judged for v in versions)]
        rows = {slot: {row["version_id"]: row for row in board["rows"]} for slot, board in boards.items()}
        triage_pairs = rows[TRIAGE][ids[TRIAGE, "better"]]["comparison"]["pairs"]
        assert triage_pairs == len(complete) and len(complete) < len(requests), "the judge's budget ran out"
        assert boards[TRIAGE]["judges"][0]["unjudged"] > 0
        tools = rows[TOOLS]
        assert tools[ids[TOOLS, "better"]]["comparison"]["pairs"] == sent[TOOLS]
        assert (tools[ids[TOOLS, "champ"]]["mean_quality"], tools[ids[TOOLS, "better"]]["mean_quality"]) == (0.0, 1.0)
        kept = {slot: stored_evidence(registry, boards[slot]["period_id"]) for slot in sent}
        with registry.database.transaction() as tx:
            for table in ("paired", "answer_stats", "pair_moments", "scoring_watermarks"):
                tx.execute(f"DELETE FROM {table}")
        scorer = Scorer(workspace, registry)
        for slot in sent:
            rebuilt = stored_evidence(registry, scorer.refresh(slot).period_id)
            for table, fresh in rebuilt.items():
                assert len(kept[slot][table]) == len(fresh), (slot, table)
                for stored, again in zip(kept[slot][table], fresh):
                    assert [v for v in stored if not isinstance(v, float)] == [v for v in again if not isinstance(v, float)]
                    assert [v for v in stored if isinstance(v, float)] == pytest.approx(
                        [v for v in again if isinstance(v, float)], rel=1e-9, abs=1e-12), (slot, table)
