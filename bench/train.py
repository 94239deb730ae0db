"""Skill-training driver overhead: time in our code per step vs time waiting on model calls.

One offline training run of the demo (sim-mini as target, sim-optimizer as optimizer, the
demo tickets, the demo simulator's latencies) in a fresh workspace. Per unit, the run
records its wall time and the wall time during which at least one model call was in
flight; the difference is the driver's overhead (scoring, merging, artifacts, state).
Also reported: optimizer calls per accepted edit. The split is 1:2:1 (as in the demo), not the default 2:1:7:
with 300 items the default leaves 30 selection items, too few for the paired gate to see
a real gain of ~0.15 beyond noise. Prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

import yaml

from ops.workspace_init import init_workspace
from registry import Registry, load_workspace
from shadow.simulator import load_simulator_config, start_in_thread
from zoo import load_zoo, register_specs
from zoo.train.outcome import Register
from zoo.train.run import train_spec

REPO = Path(__file__).resolve().parent.parent
TRAIN = {"optimizer_model": {"provider": "sim", "model": "sim-optimizer"},
         "dataset": {"from": "file", "path": "tickets.jsonl"},
         "num_epochs": 3, "steps_per_epoch": 2, "batch_size": 40, "split": "1:2:1", "concurrency": 32}


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch, \
            start_in_thread(load_simulator_config(REPO / "examples" / "demo" / "simulator.yaml")) as sim:
        ws = init_workspace(Path(scratch) / "ws")
        config = yaml.safe_load((ws / "shadowzoo.yaml").read_text())
        config["providers"]["sim"]["base_url"] = sim.base_url
        (ws / "shadowzoo.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (ws / "zoo" / "bench-train.yaml").write_text(yaml.safe_dump(
            {"slot": "support-triage", "name": "bench-train", "base": "cheap-mini", "train": TRAIN}))
        workspace = load_workspace(ws)
        zoo = load_zoo(workspace.specs_dir)
        with Registry.open(workspace) as registry:
            register_specs(zoo.named("cheap-mini"), zoo, workspace, registry)
            result = train_spec(zoo.named("bench-train")[0], zoo, workspace, Register(registry, registry.register),
                                None, lambda line: None)
            state = json.loads((result.run_dir / "state.json").read_text())
    print(json.dumps({**_figures(result.status, state), "outcomes": [u["outcome"][:90] for u in state["units"]]}, indent=2))


def _figures(status: str, state: dict) -> dict:
    units = state["units"]
    walls = [u["timing"]["wall_s"] for u in units]
    waits = [u["timing"]["model_wait_s"] for u in units]
    overheads = [w - m for w, m in zip(walls, waits)]
    accepted_edits = sum(len(h["accepted"]) for h in state["history"] if "accepted" in h)
    calls = state["optimizer_stats"]["calls"]
    return {
        "bench": "train", "status": status, "units": len(units),
        "unit_wall_s_median": statistics.median(walls),
        "model_wait_s_median": statistics.median(waits),
        "driver_overhead_ms_median": 1000 * statistics.median(overheads),
        "driver_overhead_ms_max": 1000 * max(overheads),
        "driver_overhead_share": sum(overheads) / sum(walls),
        "optimizer_calls": calls, "accepted_edits": accepted_edits,
        "optimizer_calls_per_accepted_edit": calls / accepted_edits if accepted_edits else None,
        "target_calls": state["meter"]["target_calls"], "spend_usd": state["meter"]["spent_usd"],
    }


if __name__ == "__main__":
    main()
