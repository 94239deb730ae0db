"""What a variant must be to be registered, however it arrives (spec, training, admin API).

A resolved configuration from the zoo passes by construction; one posted to the admin API
is held to the same rules: a configured slot, a plain label, a config of its kind with
only allowlisted keys and valid values, a configured provider, and a python entrypoint
inside the workspace. Each error names the field and what was expected.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from registry.workspace_config import SamplingParams, Strict, check_name
from registry.entrypoints import check_entrypoint
from registry.errors import ConfigError, field_path, first_problem
from registry.identity import sha256_text
from registry.records import NewVariant
from registry.workspace import Workspace

SOURCES = ("spec", "api", "train")


class ChatConfig(Strict):
    """A chat variant's resolved config: provider, model, sampling keys, its skill by sha256."""

    kind: Literal["chat"]
    provider: str
    model: str = Field(min_length=1)
    params: SamplingParams = Field(default_factory=SamplingParams)
    skill_sha: str | None = None


class PythonConfig(Strict):
    """A python variant's resolved config: the function, its keyword arguments, its price."""

    kind: Literal["python"]
    entrypoint: str
    params: dict[str, Any] = Field(default_factory=dict)
    price_per_call_usd: float | None = Field(None, ge=0)


def check_new_variant(new: NewVariant, workspace: Workspace) -> None:
    """Raise `ConfigError` naming the first field of `new` that breaks the rules."""
    for field, value in (("slot", new.slot), ("label", new.label)):
        try:
            check_name(field, value)
        except ValueError as exc:
            raise ConfigError(f"{field}: {exc}") from None
    if new.source not in SOURCES:
        raise ConfigError(f"source: expected one of {', '.join(SOURCES)} (got {new.source!r})")
    if new.slot not in workspace.config.slots:
        known = ", ".join(sorted(workspace.config.slots)) or "none"
        raise ConfigError(f"slot: {new.slot!r} is not configured in {workspace.config_path} (slots: {known})")
    if new.config.get("kind") != new.kind:
        raise ConfigError(f"config.kind: must be {new.kind!r}, the variant's kind (got {new.config.get('kind')!r})")
    model = ChatConfig if new.kind == "chat" else PythonConfig
    try:
        config = model.model_validate(new.config)
    except ValidationError as exc:
        where, what = first_problem(exc)
        raise ConfigError(f"{field_path(['config', where] if where else ['config'])}: {what}") from None
    if isinstance(config, ChatConfig):
        _check_chat(config, new, workspace)
    else:
        _check_python(config, new, workspace)


def _check_chat(config: ChatConfig, new: NewVariant, workspace: Workspace) -> None:
    if config.provider not in workspace.config.providers:
        known = ", ".join(sorted(workspace.config.providers)) or "none"
        raise ConfigError(f"config.provider: {config.provider!r} is not configured (providers: {known})")
    if config.skill_sha is not None and (new.skill_text is None or sha256_text(new.skill_text) != config.skill_sha):
        raise ConfigError("config.skill_sha: must be the sha256 of skill_text; send the skill as skill_text")


def _check_python(config: PythonConfig, new: NewVariant, workspace: Workspace) -> None:
    if new.skill_text is not None:
        raise ConfigError("skill_text: a python variant has no skill")
    try:
        check_entrypoint(config.entrypoint, workspace.python_roots)
    except ConfigError as exc:
        raise ConfigError(f"config.entrypoint: {exc}") from None
