"""Writing answers straight into the traffic/outcomes/shadow_results tables, for scorer tests.

The scorer reads these tables; writing them in one batch per table (as ingest and the
runner do) lets a test control exactly what each variant answered. Outcomes and results
carry their request's traffic `seq`, as ingest's join and the runner write it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from registry import Registry, load_workspace, utcnow
from registry.db import registered
from tests.servers import edit_config
from zoo import load_zoo, register_specs

SLOT = "support-triage"
RULES_SPEC = """slot: support-triage
name: rules
kind: python
base: defaults
overrides:
  entrypoint: rules:answer
  price_per_call_usd: 0.00001
"""


def add_rules_variant(workspace_dir: Path) -> None:
    """The python variant `rules` (challenger-only), a module of the workspace: the scorer reads
    its stored answers and never calls it."""
    (workspace_dir / "rules.py").write_text("def answer(request):\n    return 'billing'\n")
    (workspace_dir / "zoo" / "rules.yaml").write_text(RULES_SPEC)


def demo_registry(workspace_dir, **scoring: Any) -> tuple[Registry, dict[str, str]]:
    """The demo workspace with `scoring` settings, every spec registered, baseline the champion."""
    edit_config(workspace_dir, lambda c: c["slots"][SLOT]["scoring"].update({"min_samples": 100, **scoring}))
    workspace = load_workspace(workspace_dir)
    registry = Registry.open(workspace)
    zoo = load_zoo(workspace.specs_dir)
    outcomes = register_specs(zoo.specs, zoo, workspace, registry)
    ids = {o.spec_file.spec.name: o.registration.variant.version_id for o in outcomes}
    registry.promote(SLOT, ids["baseline"], "tester", None, {"first_champion": True})
    return registry, ids


@dataclass
class Answers:
    """Rows to append: traffic (the champion's live answers), labels, and replayed answers."""

    traffic: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)

    def request(self, request_id: str, champion: str, output: str, *, slot: str = "support-triage",
                label: Any = None, status: int = 200, latency_ms: float = 400.0, tokens: tuple[int, int] = (100, 20),
                received_at: datetime | None = None) -> None:
        self.traffic.append({
            "request_id": request_id, "slot": slot, "received_at": received_at or utcnow(),
            "request_json": json.dumps({"messages": [{"role": "user", "content": request_id}]}),
            "champion_version": champion, "status": status, "output": output, "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1], "latency_ms": latency_ms, "source": "gateway", "ingested_at": utcnow(),
        })
        if label is not None:
            self.label(request_id, label)

    def label(self, request_id: str, value: Any) -> None:
        self.labels.append({"outcome_id": f"{request_id}:{json.dumps(value)}", "request_key": request_id,
                            "request_id": request_id, "kind": "label", "value_json": json.dumps(value),
                            "received_at": utcnow()})

    def result(self, request_id: str, version_id: str, output: str | None, *, status: str = "ok",
               role: str = "challenger", latency_ms: float = 300.0, tokens: tuple[int, int] = (120, 20)) -> None:
        self.results.append({
            "request_id": request_id, "version_id": version_id, "role": role, "status": status, "output": output,
            "prompt_tokens": tokens[0], "completion_tokens": tokens[1], "latency_ms": latency_ms,
            "error": "upstream returned 500" if status == "error" else None, "finished_at": utcnow(),
        })

    def write(self, registry: Registry) -> None:
        """Append every collected row, one statement per table, then forget them."""
        with registry.database.transaction() as db:
            for table, rows in (("traffic", self.traffic), ("outcomes", self.labels), ("shadow_results", self.results)):
                if not rows:
                    continue
                columns = ", ".join(rows[0])
                if table != "traffic":
                    columns += ", request_seq"
                with registered(db, "new_rows", pl.DataFrame(rows).to_arrow()):
                    db.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM new_rows "
                               "LEFT JOIN (SELECT request_id, seq AS request_seq FROM traffic) USING (request_id)")
        self.traffic, self.labels, self.results = [], [], []


def simulate(answers: Answers, champion: str, challengers: dict[str, float], n: int, *, champion_accuracy: float = 0.7,
             seed: int = 1, start: int = 0, labels: tuple[str, ...] = ("billing", "technical", "account", "other")) -> None:
    """`n` labelled requests: the champion and each challenger answer right with their accuracy."""
    rng = random.Random(seed)
    for i in range(start, start + n):
        request_id = f"r{i:06d}"
        truth = rng.choice(labels)
        wrong = next(label for label in labels if label != truth)
        answers.request(request_id, champion, truth if rng.random() < champion_accuracy else wrong, label=truth)
        for version_id, accuracy in challengers.items():
            answers.result(request_id, version_id, truth if rng.random() < accuracy else wrong)


def stored_evidence(registry: Registry, period_id: int) -> dict[str, list[tuple]]:
    """The period's stored pairs, sums and moments, in a stable order."""
    queries = {
        "paired": "SELECT request_seq, version_id, d_net, d_quality, d_cost FROM paired WHERE period_id = ? ORDER BY 1, 2",
        "answer_stats": "SELECT version_id, source, latency_bucket, answers, errors, metric_errors, scored, quality_sum, "
                        "priced, cost_sum, valued, net_sum FROM answer_stats WHERE period_id = ? AND answers <> 0 "
                        "ORDER BY 1, 2, 3",
        "pair_moments": "SELECT version_id, measure, n, mean, m2 FROM pair_moments WHERE period_id = ? ORDER BY 1, 2",
    }
    with registry.database.reading() as db:
        return {table: db.execute(sql, [period_id]).fetchall() for table, sql in queries.items()}
