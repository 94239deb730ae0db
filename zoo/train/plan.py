"""Preparing a training run: the checked inputs of one spec, and the units it will run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry import ConfigError, Database, VariantStore, Workspace
from scorer.quality_metrics import QualityPlan, plan_quality
from zoo.resolve import Resolved, resolve_spec
from zoo.spec import SpecFile, Zoo
from zoo.train.train_config import ExternalTrainConfig, SkillOptConfig, parse_train
from zoo.train.dataset import Splits, load_items, split_items


@dataclass(frozen=True)
class Unit:
    """One resumable piece of a run: a step of an epoch, or an epoch boundary."""

    epoch: int
    step: int | None

    @property
    def name(self) -> str:
        return f"epoch{self.epoch}-step{self.step}" if self.step is not None else f"epoch{self.epoch}-boundary"


@dataclass
class Plan:
    """Everything a run of one spec needs, checked before any model call."""

    spec_file: SpecFile
    resolved: Resolved
    config: SkillOptConfig
    workspace: Workspace
    splits: Splits
    quality: QualityPlan
    base_skill: str

    @property
    def target(self) -> tuple[str, str, dict[str, Any]]:
        config = self.resolved.config
        return config["provider"], config["model"], dict(config.get("params", {}))

    def units(self) -> list[Unit]:
        per_epoch = self.config.steps_per_epoch or max(1, len(self.splits.train) // self.config.batch_size)
        boundary = self.config.slow_update or self.config.meta_skill
        units = []
        for epoch in range(1, self.config.num_epochs + 1):
            units.extend(Unit(epoch, step) for step in range(1, per_epoch + 1))
            if boundary and epoch >= 2:
                units.append(Unit(epoch, None))
        return units


def plan_run(spec_file: SpecFile, zoo: Zoo, workspace: Workspace, store: VariantStore,
             database: Database | None) -> Plan:
    """Validate the spec's train block, resolve the spec, load and split the items."""
    config = train_config(spec_file)
    if not isinstance(config, SkillOptConfig):
        raise ConfigError(f"{spec_file.path}: train: the external form is run by zoo.train.external")
    if spec_file.spec.kind != "chat":
        raise ConfigError(f"{spec_file.path}: train: only chat specs have a skill to train")
    resolved = resolve_spec(spec_file, zoo, workspace, store)
    provider = config.optimizer_model.provider
    if provider not in workspace.config.providers:
        known = ", ".join(sorted(workspace.config.providers)) or "none"
        raise ConfigError(f"{spec_file.path}: train.optimizer_model.provider: {provider!r} is not configured (providers: {known})")
    slot = spec_file.spec.slot
    quality = plan_quality(workspace.slot(slot).metrics, f"{workspace.config_path}: slots.{slot}.metrics")
    if quality.empty:
        raise ConfigError(f"{workspace.config_path}: slots.{slot}.metrics: training needs at least one metric")
    items = _items(config, workspace, slot, database)
    splits = split_items(items, config.ratio, config.seed, config.min_items)
    return Plan(spec_file, resolved, config, workspace, splits, quality, resolved.skill_text or "")


def _items(config: SkillOptConfig, workspace: Workspace, slot: str, database: Database | None) -> list:
    """The dataset, holding the database only while traffic is read (training itself takes minutes)."""
    if database is None:
        return load_items(config, workspace, slot, None)
    with database.reading() as db:
        return load_items(config, workspace, slot, db)


def train_config(spec_file: SpecFile) -> SkillOptConfig | ExternalTrainConfig:
    """The spec's `train:` block, validated; errors name the spec's file."""
    raw = spec_file.spec.train
    if raw is None:
        raise ConfigError(f"{spec_file.path}: no train: block; add one to say how to train this spec")
    return parse_train(raw, str(spec_file.path))
