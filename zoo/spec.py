"""Variant specs: declarative YAML files, one variant each, in the workspace's zoo directory.

A spec names its slot and label, a base to start from, and overrides of allowlisted keys.
Which keys are allowed depends on the kind: a chat variant sets model and sampling keys
and its skill; a python variant (challenger-only) names a callable and its price.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from registry import ChatParams, ConfigError, check_name
from registry.workspace_config import Strict
from registry.entrypoints import ENTRYPOINT_RE, ENTRYPOINT_RULE
from registry.yamlfile import describe_validation_error, read_yaml
from zoo.train.train_config import TrainConfig

SPEC_SUFFIXES = (".yaml", ".yml")


class PythonParams(Strict):
    """The allowlisted keys of a python variant."""

    entrypoint: str | None = Field(None, description="`module:function` called with each captured request.")
    params: dict[str, Any] | None = Field(None, description="Keyword arguments passed to the function.")
    price_per_call_usd: float | None = Field(None, ge=0, description="What one call costs, in USD.")

    @field_validator("entrypoint")
    @classmethod
    def _module_colon_function(cls, value: str | None) -> str | None:
        if value is not None and not ENTRYPOINT_RE.match(value):
            raise ValueError(ENTRYPOINT_RULE)
        return value

    def set_keys(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude_none=True)


class _SpecBase(Strict):
    slot: str = Field(description="The slot this variant answers.")
    name: str = Field(description="The label; the first part of every version id of this spec.")
    status: Literal["active", "retired"] = Field("active", description="Retired specs are not registered.")
    base: str = Field(
        "defaults", description="What the overrides apply to: `defaults`, `champion`, or another spec's name."
    )
    description: str = Field("", description="Why this variant exists.")
    train: TrainConfig | None = Field(None, description="How to train this spec (see `shadowzoo zoo train`).")

    @field_validator("slot", "name")
    @classmethod
    def _plain(cls, value: str, info: Any) -> str:
        return check_name(info.field_name, value)


class ChatSpec(_SpecBase):
    """A skill + model + sampling parameters."""

    kind: Literal["chat"] = "chat"
    overrides: ChatParams = Field(default_factory=ChatParams, description="Keys set over the base.")


class PythonSpec(_SpecBase):
    """A Python callable that answers captured requests (never live users)."""

    kind: Literal["python"]
    overrides: PythonParams = Field(default_factory=PythonParams, description="Keys set over the base.")


Spec = ChatSpec | PythonSpec


@dataclass(frozen=True)
class SpecFile:
    """A spec and the file it came from."""

    path: Path
    spec: Spec


@dataclass
class Zoo:
    """Every spec of a workspace, and the files that could not be loaded."""

    specs: list[SpecFile] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def find(self, slot: str, name: str) -> SpecFile | None:
        """The spec with this name in this slot."""
        return next((s for s in self.specs if s.spec.slot == slot and s.spec.name == name), None)

    def named(self, name: str) -> list[SpecFile]:
        """Specs with this name, in any slot."""
        return [s for s in self.specs if s.spec.name == name]


def load_spec(path: Path) -> SpecFile:
    """Read and validate one spec file; errors name the file, line, key and what was expected."""
    data, marks = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with slot, name, base and overrides")
    kind = data.get("kind", "chat")
    if kind not in ("chat", "python"):
        line, column = marks.get(("kind",), (1, 1))
        raise ConfigError(f"{path}:{line}:{column}: kind: expected 'chat' or 'python', got {kind!r}")
    model: type[ChatSpec] | type[PythonSpec] = PythonSpec if kind == "python" else ChatSpec
    try:
        return SpecFile(path=path, spec=model.model_validate(data))
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc, model, marks)) from None


def load_zoo(specs_dir: Path) -> Zoo:
    """Load every spec under `specs_dir`; a bad file is recorded and never stops the others."""
    zoo = Zoo()
    if not specs_dir.is_dir():
        zoo.errors.append(f"{specs_dir}: the zoo directory does not exist (zoo.specs in shadowzoo.yaml)")
        return zoo
    for path in sorted(p for p in specs_dir.rglob("*") if p.suffix in SPEC_SUFFIXES and p.is_file()):
        try:
            loaded = load_spec(path)
        except ConfigError as exc:
            zoo.errors.append(str(exc))
            continue
        twin = zoo.find(loaded.spec.slot, loaded.spec.name)
        if twin is not None:
            zoo.errors.append(
                f"{path}: name {loaded.spec.name!r} is already used in slot {loaded.spec.slot!r} by {twin.path}"
            )
            continue
        zoo.specs.append(loaded)
    return zoo
