"""The `train:` block of a spec: how a skill is optimized, validated in one place.

Two forms. The built-in optimizer (`optimizer: skillopt`, the default) takes the settings
of the published SkillOpt protocol, with its defaults (see SKILLOPT.md). The external form
`{entrypoint: "pkg.mod:fn", args: {...}}` hands training to a callable of the operator's.
Every field says what it does and is checked here, so a bad block fails at load time with
the key and the reason, not halfway through a paid run.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from registry import ConfigError
from registry.workspace_config import Strict
from registry.entrypoints import ENTRYPOINT_RE, ENTRYPOINT_RULE
from registry.errors import field_problems

OPTIMIZERS = ("skillopt",)
SPLIT_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*:\s*(\d+)\s*$")


class OptimizerModel(Strict):
    """The frozen model that reads trajectories and proposes edits."""

    provider: str = Field(description="Name of a provider under `providers:` in shadowzoo.yaml.")
    model: str = Field(description="The upstream model name sent in the optimizer's requests.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature of optimizer calls.")
    max_tokens: int = Field(2048, gt=0, description="Output cap of one optimizer call.")


class FileDataset(Strict):
    """Items from a JSONL file of `{input, expected}` objects (an `id` is optional)."""

    source: Literal["file"] = Field(alias="from", description="`file`.")
    path: str = Field(description="The JSONL file, relative to the workspace.")


class TrafficDataset(Strict):
    """Captured requests whose outcomes hold a label: input = last user message, expected = the label."""

    source: Literal["traffic"] = Field(alias="from", description="`traffic`.")
    slot: str | None = Field(None, description="Whose traffic; defaults to the spec's slot.")
    since: datetime | None = Field(None, description="Only requests received at or after this time (UTC).")


Dataset = Annotated[FileDataset | TrafficDataset, Field(discriminator="source")]


class SkillOptConfig(Strict):
    """The built-in skill optimizer (SKILLOPT.md): epochs of rollout, reflect, aggregate, select, update, gate."""

    optimizer: str = Field("skillopt", description=f"The training algorithm; one of: {', '.join(OPTIMIZERS)}.")
    optimizer_model: OptimizerModel = Field(description="The model that proposes edits: {provider, model}.")
    dataset: Dataset = Field(description="{from: file, path} or {from: traffic, slot, since}.")
    num_epochs: int = Field(4, ge=1, description="Passes over the train split.")
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per epoch; default: train items / batch_size, at least 1."
    )
    batch_size: int = Field(40, ge=1, description="Train items rolled out per step.")
    minibatch_size: int = Field(8, ge=1, description="Trajectories the optimizer reads per reflect call.")
    merge_batch_size: int = Field(8, ge=2, description="Patches merged per merge call.")
    edit_budget: int = Field(4, ge=1, description="Edits kept per step at the start (the 'learning rate').")
    min_edit_budget: int = Field(2, ge=1, description="Edits kept per step at the end of the schedule.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="How the edit budget decays from edit_budget to min_edit_budget."
    )
    failure_only: bool = Field(False, description="Reflect on failed trajectories only (skip successes).")
    gate: Literal["paired", "strict"] = Field(
        "paired", description="paired: accept when the paired gain is positive beyond noise; strict: higher mean."
    )
    gate_metric: Literal["hard", "soft", "mixed"] = Field(
        "hard", description="hard: item right (0/1); soft: slot quality in [0,1]; mixed: (1-w)·hard + w·soft."
    )
    mixed_weight: float = Field(0.5, ge=0, le=1, description="w of the mixed gate metric.")
    gate_alpha: float = Field(0.1, gt=0, lt=1, description="One-sided level of the paired gate's sign test.")
    split: str = Field("2:1:7", description="train : selection : test proportions, e.g. 2:1:7.")
    min_items: int = Field(3, ge=1, description="Fewest items each split must hold; fewer is refused.")
    seed: int = Field(42, description="Seeds the split and the batches, so a run is reproducible.")
    slow_update: bool = Field(True, description="At epoch boundaries from epoch 2, write guidance into the protected region.")
    meta_skill: bool = Field(True, description="Keep an optimizer-only memory of what worked across epochs.")
    max_cost_usd: float | None = Field(None, gt=0, description="Spend cap; reaching it ends the run, keeping the best skill.")
    max_skill_tokens: int | None = Field(None, gt=0, description="Candidates longer than this are rejected unscored.")
    concurrency: int = Field(16, ge=1, description="Target calls in flight during a rollout.")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; known: {', '.join(OPTIMIZERS)}")
        return value

    @field_validator("split")
    @classmethod
    def _ratio(cls, value: str) -> str:
        match = SPLIT_RE.match(value)
        if match is None or any(int(part) == 0 for part in match.groups()):
            raise ValueError(f"expected three positive integers 'train:selection:test', e.g. 2:1:7; got {value!r}")
        return value

    @model_validator(mode="after")
    def _budgets_ordered(self) -> "SkillOptConfig":
        if self.min_edit_budget > self.edit_budget:
            raise ValueError("min_edit_budget must not exceed edit_budget")
        return self

    @property
    def ratio(self) -> tuple[int, int, int]:
        """The split as three integers."""
        match = SPLIT_RE.match(self.split)
        assert match is not None
        train, selection, test = (int(part) for part in match.groups())
        return train, selection, test


class ExternalTrainConfig(Strict):
    """Training done elsewhere: `module:function(base_config, **args)` returns allowlisted overrides."""

    entrypoint: str = Field(description="`package.module:function` to call.")
    args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to the function.")

    @field_validator("entrypoint")
    @classmethod
    def _module_colon_function(cls, value: str) -> str:
        if not ENTRYPOINT_RE.match(value):
            raise ValueError(ENTRYPOINT_RULE)
        return value


def _train_form(value: Any) -> str:
    """Which form a `train:` block is: external when it names an entrypoint."""
    if isinstance(value, dict):
        return "external" if "entrypoint" in value else "skillopt"
    return "external" if isinstance(value, ExternalTrainConfig) else "skillopt"


TrainConfig = Annotated[
    Annotated[SkillOptConfig, Tag("skillopt")] | Annotated[ExternalTrainConfig, Tag("external")],
    Discriminator(_train_form),
]


def parse_train(raw: Any, where: str) -> TrainConfig:
    """The validated `train:` block (a model already, or a mapping); errors name `where` and the key."""
    if isinstance(raw, (SkillOptConfig, ExternalTrainConfig)):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: train: expected a mapping")
    model: type[SkillOptConfig] | type[ExternalTrainConfig] = (
        ExternalTrainConfig if _train_form(raw) == "external" else SkillOptConfig
    )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{where}: train.{problem.path}: {problem.expected}" for problem in field_problems(exc)]
        raise ConfigError("\n".join(lines)) from None
