"""A training run's directory: its state, one folder of artifacts per unit, and cached scores."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from registry.atomic import write_atomic
from zoo.train.plan import Plan


class RunDir:
    """A run's directory: state.json, one folder of artifacts per unit, cached scores."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def for_plan(plan: Plan, fingerprint: str) -> "RunDir":
        """The newest unfinished run of this spec with the same inputs, else a new one."""
        root = plan.workspace.state_dir / "train" / plan.spec_file.spec.name
        for candidate in sorted(root.glob("*/state.json"), reverse=True):
            state = json.loads(candidate.read_text())
            if state.get("status") == "running" and state.get("fingerprint") == fingerprint:
                return RunDir(candidate.parent)
        run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return RunDir(root / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    def state(self) -> dict[str, Any] | None:
        path = self.path / "state.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def write(self, relative: str, data: Any) -> None:
        """Write one artifact atomically: JSON, or text for .md files."""
        text = data if isinstance(data, str) else json.dumps(data, indent=2, ensure_ascii=False, default=str)
        write_atomic(self.path / relative, text.encode("utf-8"))

    def cached_scores(self, key: str) -> list[float] | None:
        path = self.path / "scores" / f"{key}.json"
        return json.loads(path.read_text()) if path.is_file() else None
