"""What a training run needs from its caller and gives back, for both trainers (ours and external)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import NewVariant, Registration, VariantStore

Progress = Callable[[str], None]
"""Receives one line per thing a run does that an operator would want to see."""


class Register:
    """What training needs of the registry: lookups, and registering the result."""

    def __init__(self, store: VariantStore, register: Callable[[NewVariant], Registration]) -> None:
        self.store = store
        self.register = register


@dataclass
class RunResult:
    """How one spec's training ended."""

    spec: str
    status: str
    reason: str = ""
    run_dir: Path | None = None
    version_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("finished", "budget_exhausted", "no_improvement")


def trained_label(name: str) -> str:
    """Trained variants get their own label, so `base: <spec>` still means the spec itself."""
    return f"{name[:57]}-train"
