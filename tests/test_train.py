"""Skill training end to end: the real simulator over HTTP as target and optimizer, real registry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ops.cli_train import runs, train
from ops.session import Session
from registry import Registry, load_workspace, utcnow
from shadow.simulator import SimulatorHandle, load_simulator_config, start_in_thread
from shadow.simulator.simulator_config import ErrorConfig, ModelConfig
from tests.servers import DEMO_SIM, edit_config
from zoo import load_zoo, register_specs
from zoo.train.dataset import Item, split_items
from zoo.train.edits import Edit, apply_edits, set_guidance
from zoo.train.gate import decide, sign_test_p
from zoo.train.outcome import Register, RunResult
from zoo.train.run import train_spec
from zoo.train.optimizer import extract_json
from zoo.train.schedule import edit_budget

SMALL = {"num_epochs": 2, "steps_per_epoch": 1, "batch_size": 24, "split": "1:2:1"}
SIM_MODELS = {
    "sim-mini": ModelConfig(accuracy=0.6),
    "sim-optimizer": ModelConfig(optimizer=True),
    "sim-chatty": ModelConfig(output_tokens=40),
    "sim-hang": ModelConfig(errors=ErrorConfig(hang=1.0, hang_s=3)),
}


def external_trainer(base: dict[str, Any], suffix: str) -> dict[str, Any]:
    """An external trainer for the hook test: appends a sentence to the base skill."""
    return {"skill": base["skill"] + suffix, "temperature": 0.3}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    config = load_simulator_config(DEMO_SIM).model_copy(update={"models": SIM_MODELS})
    with start_in_thread(config) as handle:
        yield handle


@pytest.fixture
def ws(workspace_dir: Path, sim: SimulatorHandle) -> Path:
    """The demo workspace on the test simulator, with a provider that gives up fast."""
    def change(config: dict) -> None:
        config["providers"]["sim"]["base_url"] = sim.base_url
        config["providers"]["impatient"] = {"base_url": sim.base_url, "timeout_s": 0.3, "max_retries": 0}
        config["prices"]["sim-optimizer"] = {"input_cost_per_token": 1e-6, "output_cost_per_token": 4e-6}
        config["python_path"] = [str(Path(__file__).resolve().parent.parent)]  # the external trainer is in this module
    edit_config(workspace_dir, change)
    demo_trainee = workspace_dir / "zoo" / "cheap-mini.yaml"  # the demo trains it from traffic; these tests own training
    spec = yaml.safe_load(demo_trainee.read_text())
    spec.pop("train")
    demo_trainee.write_text(yaml.safe_dump(spec))
    return workspace_dir


def write_spec(ws: Path, name: str, train: dict[str, Any] | None, base: str = "cheap-mini") -> None:
    spec: dict[str, Any] = {"slot": "support-triage", "name": name, "base": base}
    if train is not None:
        spec["train"] = train
    (ws / "zoo" / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def skillopt(**changes: Any) -> dict[str, Any]:
    return {"optimizer_model": {"provider": "sim", "model": "sim-optimizer"},
            "dataset": {"from": "file", "path": "tickets.jsonl"}, **SMALL, **changes}


def run(ws: Path, name: str, progress=lambda line: None, register_base: bool = True) -> RunResult:
    workspace = load_workspace(ws)
    zoo = load_zoo(workspace.specs_dir)
    with Registry.open(workspace) as registry:
        if register_base:
            register_specs(zoo.named("cheap-mini"), zoo, workspace, registry)
        return train_spec(zoo.named(name)[0], zoo, workspace, Register(registry, registry.register), registry.database,
                          progress)


def trained_variants(ws: Path) -> list:
    with Registry.open(load_workspace(ws)) as registry:
        return [v for v in registry.variants() if v.source == "train"]


def test_offline_demo_beats_parent_under_paired_gate_and_registers_challenger(ws: Path) -> None:
    write_spec(ws, "mini-train", skillopt())
    result = run(ws, "mini-train")
    assert result.status == "finished", result.reason
    first = json.loads((result.run_dir / "epoch1-step1" / "decision.json").read_text())
    assert first["decision"]["accepted"] and first["decision"]["p_value"] < 0.1
    assert first["decision"]["wins"] > first["decision"]["losses"]
    assert result.summary["selection"]["best"] > result.summary["selection"]["base"]
    assert result.summary["test"] is not None and result.summary["spend_usd"] > 0
    for artifact in ("candidate.md", "edits.json", "scores.json", "decision.json"):
        assert (result.run_dir / "epoch1-step1" / artifact).is_file()
    with Registry.open(load_workspace(ws)) as registry:
        variant = registry.variant(result.version_id)
        base = registry.latest_with_label("support-triage", "cheap-mini")
        assert variant.source == "train" and variant.parent == base.version_id
        assert variant.meta["selection"] == result.summary["selection"]
        assert registry.champion("support-triage") is None
        assert "are billing" in registry.skill_text(variant.skill_sha) or "are technical" in registry.skill_text(variant.skill_sha)


def test_spec_without_train_block_is_refused(ws: Path) -> None:
    result = run(ws, "cheap-mini")
    assert result.status == "failed" and "no train: block" in result.reason


def test_unknown_optimizer_is_refused(ws: Path) -> None:
    write_spec(ws, "odd", skillopt(optimizer="gepa"))
    workspace = load_workspace(ws)
    zoo = load_zoo(workspace.specs_dir)
    found = zoo.named("odd")
    if found:
        result = run(ws, "odd")
        assert result.status == "failed" and "unknown optimizer 'gepa'" in result.reason
    else:
        assert any("unknown optimizer 'gepa'" in error for error in zoo.errors)


def test_unconfigured_optimizer_provider_is_refused(ws: Path) -> None:
    write_spec(ws, "lost", skillopt(optimizer_model={"provider": "nowhere", "model": "m"}))
    result = run(ws, "lost")
    assert result.status == "failed" and "'nowhere' is not configured" in result.reason


@pytest.mark.parametrize("provider, model", [("sim", "sim-chatty"), ("impatient", "sim-hang")])
def test_useless_optimizer_fails_the_run_and_registers_nothing(ws: Path, provider: str, model: str) -> None:
    write_spec(ws, "doomed", skillopt(optimizer_model={"provider": provider, "model": model}, num_epochs=3))
    result = run(ws, "doomed")
    assert result.status == "failed" and "no usable reply" in result.reason
    assert trained_variants(ws) == []
    assert json.loads((result.run_dir / "state.json").read_text())["status"] == "failed"


def test_too_small_dataset_is_refused_with_counts(ws: Path) -> None:
    (ws / "few.jsonl").write_text("\n".join(json.dumps({"input": f"q{i}", "expected": "other"}) for i in range(5)))
    write_spec(ws, "tiny", skillopt(dataset={"from": "file", "path": "few.jsonl"}))
    result = run(ws, "tiny")
    assert result.status == "failed" and "too few items: 5" in result.reason and "selection" in result.reason
    (ws / "none.jsonl").write_text("")
    write_spec(ws, "empty", skillopt(dataset={"from": "file", "path": "none.jsonl"}))
    assert "no items (0 found)" in run(ws, "empty").reason


def test_interrupted_run_resumed_twice_matches_an_uninterrupted_one(ws: Path) -> None:
    write_spec(ws, "straight", skillopt(num_epochs=3))
    write_spec(ws, "bumpy", skillopt(num_epochs=3))
    straight = run(ws, "straight")

    def interrupt(line: str) -> None:
        if line.startswith("["):
            raise KeyboardInterrupt

    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run(ws, "bumpy", progress=interrupt)
    lines: list[str] = []
    resumed = run(ws, "bumpy", progress=lines.append)
    assert any("resumed at unit 3" in line for line in lines)
    assert len(list((ws / ".shadowzoo" / "train" / "bumpy").iterdir())) == 1
    assert resumed.status == straight.status == "finished"
    assert resumed.summary["best_skill_sha"] == straight.summary["best_skill_sha"]
    assert resumed.version_id == straight.version_id


def test_spend_cap_ends_the_run_cleanly(ws: Path) -> None:
    write_spec(ws, "thrifty", skillopt(max_cost_usd=0.0001))
    result = run(ws, "thrifty")
    assert result.status == "budget_exhausted" and result.ok


def test_candidates_over_max_skill_tokens_are_rejected_unscored(ws: Path) -> None:
    write_spec(ws, "terse", skillopt(max_skill_tokens=60, slow_update=False))
    result = run(ws, "terse")
    assert result.status == "no_improvement"
    decision = json.loads((result.run_dir / "epoch1-step1" / "decision.json").read_text())
    assert "rejected unscored" in decision["summary"]["outcome"]
    assert not (result.run_dir / "epoch1-step1" / "scores.json").exists()


def test_traffic_dataset_joins_labels(ws: Path) -> None:
    tickets = [json.loads(line) for line in (ws / "tickets.jsonl").read_text().splitlines()][:40]
    with Registry.open(load_workspace(ws)) as registry, registry.database.transaction() as db:
        for index, ticket in enumerate(tickets):
            request = {"model": "support-triage", "messages": [{"role": "system", "content": "x"},
                                                                {"role": "user", "content": ticket["input"]}]}
            db.execute("INSERT INTO traffic (request_id, slot, received_at, request_json, source, ingested_at) "
                       "VALUES (?, 'support-triage', ?, ?, 'test', ?)", [f"r{index}", utcnow(), json.dumps(request), utcnow()])
            if index % 4:
                db.execute("INSERT INTO outcomes (outcome_id, request_key, request_id, kind, value_json, received_at) "
                           "VALUES (?, ?, ?, 'label', ?, ?)",
                           [f"o{index}", f"r{index}", f"r{index}", json.dumps(ticket["expected"]), utcnow()])
    write_spec(ws, "live", skillopt(dataset={"from": "traffic"}, split="1:1:1", min_items=20))
    result = run(ws, "live")
    assert result.status == "failed" and "too few items: 30" in result.reason


def test_external_trainer_registers_a_challenger(ws: Path) -> None:
    write_spec(ws, "outside", {"entrypoint": "tests.test_train:external_trainer", "args": {"suffix": "\nBe brief."}})
    result = run(ws, "outside")
    assert result.status == "finished"
    (variant,) = trained_variants(ws)
    assert variant.meta["optimizer"] == "external" and variant.config["params"]["temperature"] == 0.3


def test_all_active_trains_one_at_a_time_and_reports_failures(ws: Path) -> None:
    write_spec(ws, "good", {"entrypoint": "tests.test_train:external_trainer", "args": {"suffix": "\nBe kind."}})
    write_spec(ws, "bad", skillopt(optimizer_model={"provider": "nowhere", "model": "m"}))
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = Session(ws)

    app.command("train")(train)
    app.command("runs")(runs)
    outcome = CliRunner().invoke(app, ["train", "--all-active"])
    assert outcome.exit_code == 1
    assert "1 succeeded, 1 failed (bad)" in outcome.output
    assert CliRunner().invoke(app, ["runs"]).exit_code == 0


def test_train_all_active_with_a_limit_trains_the_least_recently_trained_specs(ws: Path, cli) -> None:
    """As the daemon's job and its rotation pick them (the command once took the first N in the zoo)."""
    quick = skillopt(num_epochs=1, steps_per_epoch=1)
    write_spec(ws, "first", quick)
    write_spec(ws, "second", quick)
    assert cli("zoo", "train", "--spec", "first").code == 0
    picked = cli("zoo", "train", "--all-active", "--limit", "1")
    assert picked.code == 0, picked.err
    trained = re.findall(r"^(\w+): (?:finished|no_improvement|budget_exhausted)", picked.out, re.MULTILINE)
    assert set(trained) == {"second"} and "1 succeeded, 0 failed" in picked.out


def test_edits_skip_absent_targets_and_the_protected_region() -> None:
    skill = set_guidance("# Skill\nRoute tickets.\n", "Keep gains.")
    edits = [Edit("replace", target="Route cases.", content="Route nothing."), Edit("delete", target="Keep gains."),
             Edit("append", content="Be brief."), Edit("insert_after", target="<!-- slow-update:end -->", content="x"),
             Edit("replace", target="Route tickets.", content="Route support tickets."),
             Edit("insert_after", target="absent", content="Tail.")]
    new, statuses = apply_edits(skill, edits)
    assert statuses == ["skipped_replace_target_not_found", "skipped_delete_protected_region", "applied_append",
                        "skipped_insert_after_protected_region", "applied_replace", "applied_insert_after_appended"]
    assert new.rstrip().endswith("<!-- slow-update:end -->") and "Keep gains." in new
    assert new.index("Be brief.") < new.index("<!-- slow-update:start")


def test_lenient_json_gate_schedule_and_split() -> None:
    assert extract_json('{"edits": []}') == {"edits": []}
    assert extract_json('Sure:\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('noise {"a": {"b": 2}} tail') == {"a": {"b": 2}}
    assert extract_json("no json here") is None and extract_json("[1, 2]") is None
    assert sign_test_p(5, 0) == 1 / 32
    assert decide("paired", [1, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], 0.1).accepted
    assert not decide("paired", [1, 1, 0], [0, 0, 0], 0.1).accepted
    assert decide("strict", [1, 1, 0], [0, 0, 0], 0.1).accepted
    assert [edit_budget("cosine", s, 5, 4, 2) for s in range(5)] == [4, 4, 3, 2, 2]
    assert edit_budget("constant", 3, 5, 4, 2) == 4 and edit_budget("linear", 4, 5, 4, 2) == 2
    items = [Item(str(i), f"q{i}", "x") for i in range(30)]
    assert split_items(items, (2, 1, 7), 42, 3) == split_items(items, (2, 1, 7), 42, 3)
    assert split_items(items, (2, 1, 7), 42, 3) != split_items(items, (2, 1, 7), 7, 3)


def test_daemon_rotation_trains_the_stalest_spec_each_time(ws: Path) -> None:
    from ops.prometheus_metrics import DaemonMetrics
    from ops.operations import LocalOperations
    from ops.tasks import TaskContext, rotate

    write_spec(ws, "tuned-a", skillopt())
    write_spec(ws, "tuned-b", skillopt())
    edit_config(ws, lambda c: c["zoo"].update(schedule="0 3 * * *", rotation_limit=1))
    workspace = load_workspace(ws)
    with Registry.open(workspace) as registry:
        zoo = load_zoo(workspace.specs_dir)
        register_specs(zoo.named("cheap-mini"), zoo, workspace, registry)
        context = TaskContext(workspace, LocalOperations(registry), DaemonMetrics())
        first, second = rotate(context), rotate(context)
    trained = [line.split(":")[0] for line in first["trained"] + second["trained"]]
    assert sorted(trained) == ["tuned-a", "tuned-b"] and not first["failed"] and not second["failed"]


def test_a_bad_rotation_schedule_names_the_key(workspace_dir: Path) -> None:
    from registry import ConfigError

    edit_config(workspace_dir, lambda c: c["zoo"].update(schedule="every night"))
    with pytest.raises(ConfigError, match=r"zoo.schedule: not a 5-field cron expression"):
        load_workspace(workspace_dir)
