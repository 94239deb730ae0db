"""The workspace and its one config file, `shadowzoo.yaml`.

Every key has a default and a description; unknown keys are errors that name the file,
the line and the allowed keys. Secrets never appear here: a provider names the environment
variable that holds its key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry.errors import ConfigError
from registry.yamlfile import load_model

CONFIG_FILE = "shadowzoo.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
NAME_RULE = "lowercase letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters"


def check_name(kind: str, value: str) -> str:
    """Slot names and labels appear in version ids, URLs and metric labels: keep them plain."""
    if not NAME_RE.match(value):
        raise ValueError(f"{kind} {value!r} is not valid: use {NAME_RULE}")
    return value


class Strict(BaseModel):
    """Base for config models: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SkillSource(Strict):
    """A skill given explicitly as a file or as inline text (exactly one of the two)."""

    file: str | None = Field(None, description="Path of a Markdown file, relative to the file that names it.")
    text: str | None = Field(None, description="The skill document itself.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "SkillSource":
        if (self.file is None) == (self.text is None):
            raise ValueError("give exactly one of 'file' or 'text'")
        return self


SkillRef = Annotated[
    str | SkillSource,
    Field(
        description=(
            "The system-prompt document: a path ending in .md, .markdown or .txt (relative to "
            "the file that names it, inside the workspace), inline text, or {file: ...} / {text: ...}."
        )
    ),
]


class ChatParams(Strict):
    """The allowlisted keys a chat variant may set (slot defaults and spec overrides)."""

    provider: str | None = Field(None, description="Name of a provider under `providers:`.")
    model: str | None = Field(None, description="The upstream model name sent in the request.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0..2.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass, (0, 1].")
    max_tokens: int | None = Field(None, gt=0, description="Upper bound on output tokens.")
    seed: int | None = Field(None, description="Sampling seed, for upstreams that honour it.")
    stop: list[str] | None = Field(None, max_length=4, description="Up to four stop sequences.")
    response_format: dict[str, Any] | None = Field(None, description="OpenAI `response_format` object.")
    skill: SkillRef | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def set_keys(self) -> dict[str, Any]:
        """Only the keys this object sets, so an overlay never erases its base."""
        return self.model_dump(exclude_unset=True, exclude_none=True)


class ProviderConfig(Strict):
    """One OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama, LiteLLM, the simulator)."""

    base_url: str = Field(description="Base URL up to and including `/v1`, e.g. http://127.0.0.1:8700/v1.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key; the key is never stored."
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-call timeout in seconds.")
    max_concurrency: int = Field(16, gt=0, description="Shadow calls in flight at once to this provider.")
    requests_per_minute: int | None = Field(None, gt=0, description="Shadow calls per minute; unlimited when unset.")
    tokens_per_minute: int | None = Field(None, gt=0, description="Shadow tokens per minute; unlimited when unset.")
    min_remaining_fraction: float = Field(
        0.2, ge=0, lt=1,
        description=(
            "Shadow calls pause while the upstream's x-ratelimit-remaining-* headers report less "
            "than this fraction of the limit left: the champion shares the quota and goes first."
        ),
    )
    max_retries: int = Field(3, ge=0, description="Shadow-call retries on 429, 5xx and connection errors.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class RedactionRule(Strict):
    """A regular expression replaced in captured text before anything reaches disk."""

    pattern: str = Field(description="Python regular expression.")
    replacement: str = Field("[REDACTED]", description="What each match becomes.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class ShadowConfig(Strict):
    """How a slot's traffic is replayed against its challengers."""

    sample_rate: float = Field(1.0, ge=0, le=1, description="Share of requests each challenger answers.")
    rates: dict[str, float] = Field(
        default_factory=dict, description="Per-challenger sample rates by label or version id (override sample_rate)."
    )
    daily_budget_usd: float = Field(
        5.0, ge=0, description="Shadow spend per UTC day; scheduling stops when the estimate reaches it."
    )

    @field_validator("rates")
    @classmethod
    def _rates_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for key, rate in value.items():
            if not 0 <= rate <= 1:
                raise ValueError(f"rate for {key!r} must be between 0 and 1, got {rate}")
        return value


class SlotConfig(Strict):
    """One production use-case; clients name it as the `model` of a chat request."""

    description: str = Field("", description="What the slot is for, shown in listings.")
    defaults: ChatParams = Field(default_factory=ChatParams, description="Base of specs with `base: defaults`.")
    timeout_s: float | None = Field(
        None, gt=0, description="Champion upstream timeout; the provider's `timeout_s` when unset."
    )
    redact: list[RedactionRule] = Field(default_factory=list, description="Applied to captures before they are stored.")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig, description="Shadow replay settings.")


class ZooConfig(Strict):
    """Where variant specs live."""

    specs: str = Field("zoo", description="Directory of spec YAML files, relative to the workspace.")


class Price(Strict):
    """Per-token prices in USD, with LiteLLM's field names."""

    input_cost_per_token: float = Field(ge=0)
    output_cost_per_token: float = Field(ge=0)
    cache_read_input_token_cost: float | None = Field(None, ge=0)
    output_cost_per_reasoning_token: float | None = Field(None, ge=0)


class GatewayConfig(Strict):
    """The OpenAI-compatible gateway that serves champions."""

    host: str = Field("127.0.0.1", description="Address to bind; non-loopback needs client keys.")
    port: int = Field(8800, ge=0, le=65535, description="Port to bind.")
    client_keys_env: str | None = Field(
        None, description="Environment variable holding comma-separated client keys accepted on /v1/*."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0, description="Larger request bodies get 413.")
    capture_buffer_records: int = Field(
        50_000, gt=0, description="Captures held in memory before new ones are dropped (and counted)."
    )
    flush_interval_s: float = Field(0.25, gt=0, le=5, description="How often captures are written to the spool.")


class WorkspaceConfig(Strict):
    """The whole of `shadowzoo.yaml`."""

    state_dir: str = Field(".shadowzoo", description="Database, routes and spool, relative to the workspace.")
    providers: dict[str, ProviderConfig] = Field(default_factory=dict, description="Upstreams by name.")
    slots: dict[str, SlotConfig] = Field(default_factory=dict, description="Slots by name.")
    zoo: ZooConfig = Field(default_factory=ZooConfig, description="The zoo of variant specs.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The champion gateway.")
    prices: dict[str, Price] = Field(default_factory=dict, description="Prices by upstream model name.")

    @field_validator("slots", "providers")
    @classmethod
    def _plain_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            check_name("name", name)
        return value

    @model_validator(mode="after")
    def _default_providers_exist(self) -> "WorkspaceConfig":
        for slot_name, slot in self.slots.items():
            provider = slot.defaults.provider
            if provider is not None and provider not in self.providers:
                raise ValueError(
                    f"slots.{slot_name}.defaults.provider: {provider!r} is not configured "
                    f"(providers: {', '.join(sorted(self.providers)) or 'none'})"
                )
        return self


class Workspace:
    """A directory holding `shadowzoo.yaml`, the zoo of specs and the state directory."""

    def __init__(self, root: Path, config: WorkspaceConfig) -> None:
        self.root = root.resolve()
        self.config = config

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def state_dir(self) -> Path:
        return (self.root / self.config.state_dir).resolve()

    @property
    def db_path(self) -> Path:
        return self.state_dir / "shadowzoo.duckdb"

    @property
    def routes_path(self) -> Path:
        return self.state_dir / "routes.json"

    @property
    def specs_dir(self) -> Path:
        return (self.root / self.config.zoo.specs).resolve()

    def slot(self, name: str) -> SlotConfig:
        """The slot's config, or an error listing the configured slots."""
        try:
            return self.config.slots[name]
        except KeyError:
            known = ", ".join(sorted(self.config.slots)) or "none"
            raise ConfigError(f"{self.config_path}: slot {name!r} is not configured (slots: {known})") from None


def load_workspace(root: Path) -> Workspace:
    """Load the workspace at `root`, or explain how to create one."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"no {CONFIG_FILE} in {root.resolve()}: create a workspace with `shadowzoo init DIR`, "
            f"or point at one with --workspace DIR (or SHADOWZOO_WORKSPACE)"
        )
    return Workspace(root, load_model(path, WorkspaceConfig))
