"""`shadowzoo export`: stored answers written as JSONL, Parquet, CSV and chat fine-tuning examples.

The rows are written straight into a real DuckDB file (`tests.scoring_data`); the export
runs through the installed console script, as a user runs it, and every file is read back
with an independent reader and compared with what was stored.
"""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from registry import load_workspace, utcnow
from scorer.export import ExportFormat, ExportOptions, export_answers
from shadow.pricing import workspace_prices
from tests.scoring_data import SLOT, Answers, demo_registry

TOOLS = [{"type": "function", "function": {"name": "refund", "parameters": {"type": "object"}}}]


@pytest.fixture
def stored(workspace_dir: Path) -> dict[str, str]:
    """Three requests answered live by the baseline and replayed by two challengers: one
    label corrected, one request unlabelled, one errored answer, one answer that only calls a tool."""
    registry, ids = demo_registry(workspace_dir)
    champion, mini, flash = ids["baseline"], ids["cheap-mini"], ids["flash"]
    answers = Answers()
    answers.request("r1", champion, "billing\nbecause", label="technical", latency_ms=2500.0)
    answers.request("r2", champion, "technical", label="technical", received_at=utcnow() - timedelta(days=3))
    answers.request("r3", champion, "account")
    answers.traffic[2]["request_json"] = json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                                                   {"role": "user", "content": "refund A1"}],
                                                     "tools": TOOLS})
    answers.label("r1", "billing")  # the correction: the latest label wins
    answers.result("r1", mini, "billing")
    answers.result("r2", mini, None, status="error")
    answers.result("r3", mini, None)
    answers.result("r1", flash, "other")
    for row in answers.results:
        row["tool_calls_json"] = None
    answers.results[2]["tool_calls_json"] = json.dumps([{"name": "refund", "arguments": {"order": "A1"}}])
    answers.labels[-1]["received_at"] = utcnow() + timedelta(seconds=1)
    answers.write(registry)
    registry.close()
    return ids


def _expected(workspace_dir: Path, ids: dict[str, str]) -> dict[tuple[str, str], dict]:
    """What each (request, version) row must say, from the rows `stored` wrote and the demo's prices."""
    prices = workspace_prices(load_workspace(workspace_dir))
    model = {ids["baseline"]: "sim-large", ids["cheap-mini"]: "sim-mini", ids["flash"]: "sim-flash"}

    def row(output, label, source, status, tokens, latency_ms, quality):
        price = prices[model_of]
        cost = tokens[0] * price.input_cost_per_token + tokens[1] * price.output_cost_per_token
        latency_cost = 0.002 * max(0.0, latency_ms / 1000 - 2.0)
        net = None if quality is None else 0.01 * quality - cost - latency_cost
        return {"output": output, "label": label, "source": source, "status": status, "quality": quality,
                "cost_usd": cost, "latency_cost": latency_cost, "net": net}

    expected = {}
    for (request, version, *rest) in [
        ("r1", ids["baseline"], "billing\nbecause", "billing", "live", "ok", (100, 20), 2500.0, 1.0),
        ("r1", ids["cheap-mini"], "billing", "billing", "shadow", "ok", (120, 20), 300.0, 1.0),
        ("r1", ids["flash"], "other", "billing", "shadow", "ok", (120, 20), 300.0, 0.0),
        ("r2", ids["baseline"], "technical", "technical", "live", "ok", (100, 20), 400.0, 1.0),
        ("r2", ids["cheap-mini"], None, "technical", "shadow", "error", (120, 20), 300.0, 0.0),
        ("r3", ids["baseline"], "account", None, "live", "ok", (100, 20), 400.0, None),
        ("r3", ids["cheap-mini"], None, None, "shadow", "ok", (120, 20), 300.0, None),
    ]:
        model_of = model[version]
        expected[(request, version)] = row(*rest)
    return expected


def _assert_rows(rows: list[dict], expected: dict[tuple[str, str], dict]) -> None:
    assert [(r["request_id"], r["version_id"]) for r in rows] == list(expected), "one row per answer, by request"
    for found in rows:
        want = expected[(found["request_id"], found["version_id"])]
        for key, value in want.items():
            if isinstance(value, float):
                assert found[key] == pytest.approx(value), (found["request_id"], key)
            else:
                assert found[key] == value, (found["request_id"], key)
        assert found["slot"] == SLOT
        assert found["metric:exact_match"] == found["quality"] or found["status"] == "error"


def _decoded(row: dict) -> dict:
    """A row of a text format with its JSON columns parsed and its numbers typed."""
    for key in ("request", "tool_calls", "label"):
        row[key] = json.loads(row[key]) if row[key] not in (None, "") else None
    for key in ("quality", "cost_usd", "latency_cost", "net", "metric:exact_match"):
        row[key] = float(row[key]) if row[key] not in (None, "") else None
    row["output"] = row["output"] if row["output"] != "" else None
    return row


def test_jsonl_holds_every_answer_with_its_request_latest_label_and_scores(stored, workspace_dir, cli) -> None:
    done = cli("export", "--slot", SLOT, "--format", "jsonl", "--out", "answers.jsonl", "--json")
    assert done.code == 0, done.err
    summary = done.json()
    assert summary["rows"] == 7 and summary["requests_total"] == 3 and summary["format"] == "jsonl"
    rows = [json.loads(line) for line in (workspace_dir / "answers.jsonl").read_text().splitlines()]
    _assert_rows(rows, _expected(workspace_dir, stored))
    by_id = {(r["request_id"], r["version_id"]): r for r in rows}
    assert by_id[("r3", stored["baseline"])]["request"]["tools"] == TOOLS
    assert by_id[("r3", stored["cheap-mini"])]["tool_calls"] == [{"name": "refund", "arguments": {"order": "A1"}}]


def test_parquet_and_csv_hold_the_same_rows_as_jsonl(stored, workspace_dir, cli) -> None:
    assert cli("export", "--slot", SLOT, "--format", "parquet", "--out", "answers.parquet").code == 0
    assert cli("export", "--slot", SLOT, "--format", "csv", "--out", "answers.csv").code == 0
    expected = _expected(workspace_dir, stored)
    parquet_rows = pq.read_table(workspace_dir / "answers.parquet").to_pylist()
    _assert_rows([_decoded(row) for row in parquet_rows], expected)
    with (workspace_dir / "answers.csv").open(newline="") as handle:
        csv_rows = list(csv.DictReader(handle))
    _assert_rows([_decoded(row) for row in csv_rows], expected)


def test_labelled_since_and_version_select_the_rows(stored, workspace_dir, cli) -> None:
    done = cli("export", "--slot", SLOT, "--labelled", "--since", "1d", "--version", stored["cheap-mini"],
               "--out", "some.jsonl", "--json")
    assert done.code == 0, done.err
    rows = [json.loads(line) for line in (workspace_dir / "some.jsonl").read_text().splitlines()]
    assert [(r["request_id"], r["version_id"]) for r in rows] == [("r1", stored["cheap-mini"])]


def _chat_lines(path: Path) -> list[dict]:
    """The examples of a chat fine-tuning file, each checked against OpenAI's shape."""
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    for example in examples:
        assert set(example) <= {"messages", "tools"} and example["messages"]
        for message in example["messages"]:
            assert message["role"] in ("system", "user", "assistant", "tool")
            assert isinstance(message.get("content"), str) or message.get("tool_calls")
        last = example["messages"][-1]
        assert last["role"] == "assistant"
        for call in last.get("tool_calls", []):
            assert call["type"] == "function" and isinstance(call["id"], str)
            assert isinstance(call["function"]["name"], str) and isinstance(call["function"]["arguments"], str)
    return examples


def test_openai_chat_examples_end_with_the_version_s_successful_answers(stored, workspace_dir, cli) -> None:
    done = cli("export", "--slot", SLOT, "--format", "openai-chat", "--version", stored["cheap-mini"], "--out", "ft.jsonl")
    assert done.code == 0, done.err
    examples = _chat_lines(workspace_dir / "ft.jsonl")
    assert len(examples) == 2, "the errored answer is no example"
    assert examples[0] == {"messages": [{"role": "user", "content": "r1"}, {"role": "assistant", "content": "billing"}]}
    assert examples[1]["tools"] == TOOLS
    assert examples[1]["messages"][:2] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "refund A1"}]
    call = examples[1]["messages"][-1]["tool_calls"][0]["function"]
    assert call["name"] == "refund" and json.loads(call["arguments"]) == {"order": "A1"}


def test_openai_chat_examples_can_end_with_the_label(stored, workspace_dir, cli) -> None:
    done = cli("export", "--slot", SLOT, "--format", "openai-chat", "--answer", "label", "--out", "ft.jsonl")
    assert done.code == 0, done.err
    examples = _chat_lines(workspace_dir / "ft.jsonl")
    assert [e["messages"] for e in examples] == [
        [{"role": "user", "content": "r1"}, {"role": "assistant", "content": "billing"}],
        [{"role": "user", "content": "r2"}, {"role": "assistant", "content": "technical"}],
    ]


def test_an_export_in_small_ranges_writes_the_same_file_and_reports_progress(stored, workspace_dir) -> None:
    from registry import Registry

    with Registry.open(load_workspace(workspace_dir)) as registry:
        for fmt in (ExportFormat.csv, ExportFormat.jsonl):
            options = ExportOptions(slot=SLOT, format=fmt)
            whole = export_answers(registry, options, workspace_dir / f"whole.{fmt}")
            seen = []
            parts = export_answers(registry, options, workspace_dir / f"parts.{fmt}", progress=lambda p: seen.append(p.model_copy()),
                                   chunk_requests=1)
            assert (workspace_dir / f"parts.{fmt}").read_bytes() == (workspace_dir / f"whole.{fmt}").read_bytes()
            assert (whole.rows, parts.rows) == (7, 7)
            assert [p.requests_done for p in seen] == [0, 1, 2, 3] and seen[-1].requests_total == 3


def test_rows_written_while_an_export_runs_are_left_out(stored, workspace_dir) -> None:
    from registry import Registry

    with Registry.open(load_workspace(workspace_dir)) as registry:
        late = Answers()

        def write_between_ranges(progress) -> None:
            if progress.requests_done == 1:  # the first range is written, the lock released
                late.result("r3", stored["flash"], "account")
                late.label("r3", "account")
                late.write(registry)

        summary = export_answers(registry, ExportOptions(slot=SLOT), workspace_dir / "during.jsonl",
                                 progress=write_between_ranges, chunk_requests=1)
        rows = [json.loads(line) for line in (workspace_dir / "during.jsonl").read_text().splitlines()]
        assert summary.rows == 7 and ("r3", stored["flash"]) not in {(r["request_id"], r["version_id"]) for r in rows}
        assert all(r["label"] is None for r in rows if r["request_id"] == "r3")
        after = export_answers(registry, ExportOptions(slot=SLOT), workspace_dir / "after.jsonl")
        assert after.rows == 8


@pytest.mark.parametrize(("args", "named"), [
    (["--format", "xml"], "--format"),
    (["--format", "openai-chat"], "--version"),
    (["--answer", "label"], "--answer label"),
    (["--format", "openai-chat", "--answer", "best"], "--answer"),
    (["--since", "yesterday"], "--since"),
    (["--version", "nobody-20260101-00000000"], "--version"),
    (["--slot", "nowhere"], "nowhere"),
])
def test_a_bad_argument_is_refused_naming_the_option(workspace_dir, cli, args, named) -> None:
    base = {"--slot": SLOT, "--out": "x.jsonl"}
    for index in range(0, len(args), 2):
        base[args[index]] = args[index + 1]
    done = cli("export", *[part for pair in base.items() for part in pair])
    assert done.code in (1, 2) and named in done.err, done.err
    assert "Traceback" not in done.err and not (workspace_dir / "x.jsonl").exists()


def test_while_the_daemon_runs_it_writes_the_export_inside_the_workspace(stored, workspace_dir, cli) -> None:
    from tests.test_admin_api import TOKEN, Daemon

    assert cli("export", "--slot", SLOT, "--format", "parquet", "--out", "local.parquet").code == 0
    assert cli("pause", "--all").code == 0  # the daemon's runner then adds no answer of its own
    daemon = Daemon(workspace_dir)
    try:
        env = {"SHADOWZOO_ADMIN_TOKEN": TOKEN}
        done = cli("export", "--slot", SLOT, "--format", "parquet", "--out", "exports/served.parquet", "--json", env=env)
        assert done.code == 0, done.err
        assert done.json()["rows"] == 7 and Path(done.json()["path"]) == (workspace_dir / "exports" / "served.parquet").resolve()
        served = pq.read_table(workspace_dir / "exports" / "served.parquet")
        assert served.equals(pq.read_table(workspace_dir / "local.parquet"))
        outside = cli("export", "--slot", SLOT, "--out", str(workspace_dir.parent / "escaped.jsonl"), env=env)
        assert outside.code == 1 and "out: " in outside.err and "outside the workspace" in outside.err
        body = {"options": {"slot": SLOT}, "out": "../escaped.jsonl"}
        status, answer, _ = daemon.call("POST", "/admin/jobs/export", body)
        assert status == 400 and answer["error"]["message"].startswith("out:"), answer
        assert not (workspace_dir.parent / "escaped.jsonl").exists()
    finally:
        daemon.stop()
