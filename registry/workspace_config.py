"""The schema of a workspace's one config file, `shadowzoo.yaml` (loaded by `registry.workspace`).

Every key has a default and a description; unknown keys are errors that name the file,
the line and the allowed keys. Secrets never appear here: a provider names the environment
variable that holds its key.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from registry.entrypoints import ENTRYPOINT_RE

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


class SamplingParams(Strict):
    """The sampling keys of a chat variant: its resolved config's `params`."""

    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0..2.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass, (0, 1].")
    max_tokens: int | None = Field(None, gt=0, description="Upper bound on output tokens.")
    seed: int | None = Field(None, description="Sampling seed, for upstreams that honour it.")
    stop: list[str] | None = Field(None, max_length=4, description="Up to four stop sequences.")
    response_format: dict[str, Any] | None = Field(None, description="OpenAI `response_format` object.")

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


CHAT_PARAM_KEYS = tuple(SamplingParams.model_fields)


class ChatParams(SamplingParams):
    """The allowlisted keys a chat variant may set (slot defaults and spec overrides)."""

    provider: str | None = Field(None, description="Name of a provider under `providers:`.")
    model: str | None = Field(None, description="The upstream model name sent in the request.")
    skill: SkillRef | None = None

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
    max_retries: int = Field(3, ge=0, description=(
        "Retries of a call that never reached the model (429, a connection that never opened); a variant's "
        "shadow call is not retried on 5xx or timeouts, as the champion's live call is not. Judge and "
        "training calls also retry 5xx, timeouts and dropped connections."))

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


def missing_api_keys(providers: dict[str, ProviderConfig]) -> dict[str, str]:
    """Providers whose `api_key_env` names a variable that is not set: {provider: variable}.

    Here, beside the config, not with the provider clients: `serve` checks it before it starts
    its children, and importing the clients (openai) would cost that process a second of CPU."""
    return {name: config.api_key_env for name, config in providers.items()
            if config.api_key_env is not None and not os.environ.get(config.api_key_env)}


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

    champion_control_rate: float = Field(
        0.0, ge=0, le=1,
        description="Share of requests the champion is replayed on, as a latency control measured under replay load. "
                    "The p95 latency guardrail compares challengers only with these replays (live latencies are not "
                    "comparable), so at 0 it is not applied and the leaderboard says so; e.g. 0.05 turns it on.",
    )
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


class _Metric(Strict):
    """What every metric has: a weight in the slot's weighted mean, and an optional name."""

    name: str | None = Field(None, description="Shown in reports; defaults to the type.")
    weight: float = Field(1.0, gt=0, description="Weight in the slot's weighted mean quality.")
    first_line: bool = Field(False, description="Score only the first line of the output.")

    @property
    def key(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]


class ExactMatchMetric(_Metric):
    """1 when the output equals the label after normalisation, else 0."""

    type: Literal["exact_match"]
    case_sensitive: bool = Field(False, description="Compare case as well.")
    normalize_whitespace: bool = Field(True, description="Trim, and fold runs of white space to one space.")
    strip_punctuation: bool = Field(False, description="Ignore punctuation characters.")


class NumericMetric(_Metric):
    """1 when the first number in the output is within `tolerance` of the numeric label."""

    type: Literal["numeric"]
    tolerance: float = Field(0.0, ge=0, description="Largest accepted absolute difference.")
    relative: bool = Field(False, description="Tolerance is a fraction of |label| instead.")


class RegexMetric(_Metric):
    """1 when `pattern` matches the output (the pattern may use the label as {label})."""

    type: Literal["regex"]
    pattern: str = Field(description="Regular expression searched in the output; `{label}` is replaced by the label.")


class ContainsMetric(_Metric):
    """1 when the output contains the label (or `text`)."""

    type: Literal["contains"]
    text: str | None = Field(None, description="Fixed text to look for instead of the label.")
    case_sensitive: bool = False


class JsonValidMetric(_Metric):
    """1 when the output parses as JSON (and matches `schema`, when given)."""

    type: Literal["json_valid"]
    json_schema: dict[str, Any] | None = Field(None, alias="schema", description="Optional JSON Schema.")


class ToolCallMetric(_Metric):
    """1 when the answer's tool calls are exactly the label's: the same names and arguments, in order.

    The label is one call `{"name": ..., "arguments": {...}}` or a list of them (`[]`: no call
    is right). Arguments compare as JSON values: key order is irrelevant, 1 equals 1.0, and
    "1" does not equal 1. A missing, extra or reordered call scores 0; a label of another
    shape cannot be scored (a metric error).
    """

    type: Literal["tool_call"]

    @model_validator(mode="after")
    def _no_first_line(self) -> "ToolCallMetric":
        if self.first_line:
            raise ValueError("first_line applies to the answer's text; tool_call compares its tool calls")
        return self


class JudgeMetric(_Metric):
    """An LLM grader: a configured provider scores the output 0..1 against a rubric."""

    type: Literal["judge"]
    provider: str = Field(description="A provider under `providers:`.")
    model: str = Field(description="The grader model.")
    rubric: str = Field(description="What a good answer is; the grader sees it with the request and output.")
    sample_rate: float = Field(0.1, ge=0, le=1, description="Share of requests graded (hash-sampled).")
    daily_budget_usd: float = Field(1.0, ge=0, description="Grader spend per UTC day (evaluation spend).")
    uses_label: bool = Field(
        False, description="Show the grader the request's label as the reference answer: an answer is then judged "
                           "once its label is known, and again when the label is corrected.")


class PythonMetric(_Metric):
    """`module:function(request, output, outcome) -> float in [0, 1]`; a function that takes an
    `answer` keyword also gets the whole answer: `{"content": text or None, "tool_calls": [{name, arguments}]}`."""

    type: Literal["python"]
    entrypoint: str = Field(
        pattern=ENTRYPOINT_RE.pattern, description="`package.module:function`, a module of the workspace (or python_path)."
    )
    uses_label: bool = Field(
        True, description="The function reads `outcome` (the request's label): it is called once the label is "
                          "known, and again when the label is corrected. Set false for a metric of the answer "
                          "alone; `outcome` is then None and answers are scored without waiting for labels.")


Metric = Annotated[
    ExactMatchMetric | NumericMetric | RegexMetric | ContainsMetric | JsonValidMetric | ToolCallMetric | JudgeMetric
    | PythonMetric,
    Field(discriminator="type"),
]


class ScoringConfig(Strict):
    """How a slot's variants are valued and when a challenger is ready (see README, Scoring)."""

    value_per_point: float = Field(
        0.01, ge=0, description="USD a perfect answer is worth on one request: net = value × quality − cost − latency cost."
    )
    latency_slo_s: float = Field(5.0, gt=0, description="Latency above this costs `latency_cost_per_s` per second.")
    latency_cost_per_s: float = Field(0.0, ge=0, description="USD per second above the latency SLO.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Error budget of the slot's confidence sequences.")
    min_samples: int = Field(200, ge=10, description="Pairs needed before any verdict.")
    min_effect_usd: float = Field(
        0.0, ge=0, description="Per-request net gain the interval's lower bound must exceed to be ready."
    )
    variance_floor_fraction: float = Field(
        0.01, ge=0, description="Floor on the pair variance, as a fraction of value_per_point² (guards rare-loss cases)."
    )
    max_error_rate_increase: float = Field(
        0.02, ge=0, le=1, description="Guardrail: a challenger's error rate may exceed the champion's by this much."
    )
    max_p95_latency_ratio: float | None = Field(
        1.5, gt=0, description="Guardrail: challenger p95 latency ÷ the p95 of the champion's control replays "
                               "(needs shadow.champion_control_rate > 0); none = off."
    )
    auto_promote: bool = Field(False, description="Promote a ready challenger without a human (after a cooldown).")
    auto_promote_cooldown_s: float = Field(
        3600.0, ge=0, description="auto_promote waits this long after the last alias move of the slot."
    )
    watch_s: float = Field(
        3600.0, ge=0, description="After a promotion, guardrails are watched this long and broken ones roll back."
    )


class RetentionConfig(Strict):
    """How long raw captures are kept; aggregates (pairs' moments, snapshots, audit) are kept."""

    traffic_days: float = Field(30.0, gt=0, description="Traffic, outcomes and shadow results older than this are deleted.")


class SlotConfig(Strict):
    """One production use-case; clients name it as the `model` of a chat request."""

    description: str = Field("", description="What the slot is for, shown in listings.")
    defaults: ChatParams = Field(default_factory=ChatParams, description="Base of specs with `base: defaults`.")
    timeout_s: float | None = Field(
        None, gt=0, description="Champion upstream timeout; the provider's `timeout_s` when unset."
    )
    redact: list[RedactionRule] = Field(default_factory=list, description="Applied to captures before they are stored.")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig, description="Shadow replay settings.")
    metrics: list[Metric] = Field(default_factory=list, description="What quality means for this slot.")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig, description="Net value and readiness settings.")
    retention: RetentionConfig = Field(default_factory=RetentionConfig, description="How long raw rows are kept.")


class ZooConfig(Strict):
    """Where variant specs live, and when the daemon trains them."""

    specs: str = Field("zoo", description="Directory of spec YAML files, relative to the workspace.")
    schedule: str | None = Field(
        None, description="Cron expression (UTC, 5 fields) at which the daemon trains the stalest specs; off when unset."
    )
    rotation_limit: int = Field(1, ge=1, description="Specs trained per scheduled rotation, stalest first.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"not a 5-field cron expression: {exc}") from None
        return value


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
    capture_buffer_bytes: int = Field(
        256 * 1024 * 1024, gt=0,
        description="Bytes of captures held in memory (not yet on disk) before new ones are dropped (and counted).",
    )
    flush_interval_s: float = Field(
        0.25, gt=0, le=60,
        description="How often captures are written to the spool: a `kill -9` of a worker loses at most this long's.",
    )
    flush_max_records: int = Field(
        256, gt=0,
        description="Captures are also written as soon as this many arrived since the last write: a `kill -9` of a "
                    "worker loses at most about twice this many (those held and a batch being written).",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection whose request headers are not complete this long after they began "
                                "(or after it opened) gets 408 and is closed.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request whose body stops arriving for this long gets 408 and its connection is closed.",
    )

    @model_validator(mode="after")
    def _flush_before_full(self) -> "GatewayConfig":
        if self.flush_max_records > self.capture_buffer_records:
            raise ValueError(f"flush_max_records ({self.flush_max_records}) must not exceed capture_buffer_records "
                             f"({self.capture_buffer_records}): the buffer would be full before it is written")
        return self


class DaemonConfig(Strict):
    """The daemon: the database's only owner, its jobs, and the admin API."""

    admin_host: str = Field("127.0.0.1", description="Admin API and /metrics address.")
    admin_port: int = Field(8900, ge=0, le=65535, description="Admin API and /metrics port.")
    admin_token_env: str = Field(
        "SHADOWZOO_ADMIN_TOKEN", description="Environment variable holding the admin API bearer token."
    )
    ingest_interval_s: float = Field(1.0, gt=0, description="How often the spool is ingested.")
    score_interval_s: float = Field(60.0, gt=0, description="How often every slot is re-scored and snapshotted.")
    watch_interval_s: float = Field(30.0, gt=0, description="How often recent promotions are checked.")
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads (keep below the cores left to gateways).")
    duckdb_memory_limit: str = Field("2GB", description="DuckDB memory limit, e.g. 2GB.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="How long in-flight shadow calls may finish on shutdown.")


HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""A gateway host's name: one part of the keys its spool segments are shipped under."""


class ObjectStoreConfig(Strict):
    """S3-compatible object storage: the lake's Parquet files and the gateways' shipped spool segments."""

    endpoint: str | None = Field(
        None, description="S3 API base URL, e.g. http://127.0.0.1:9000 (MinIO, SeaweedFS); AWS's own when unset."
    )
    bucket: str = Field(min_length=3, max_length=63, description="The bucket (it must exist).")
    region: str = Field("us-east-1", description="The bucket's region.")
    access_key_env: str = Field("AWS_ACCESS_KEY_ID", description="Environment variable holding the access key id.")
    secret_key_env: str = Field("AWS_SECRET_ACCESS_KEY", description="Environment variable holding the secret key.")
    url_style: Literal["path", "vhost"] = Field(
        "path", description="`path` (http://host/bucket/key, for most self-hosted servers) or `vhost` (AWS's default)."
    )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ValueError(f"{value!r} is not an http(s)://host[:port] URL")
        return value.rstrip("/") if value else value


class DistributedConfig(Strict):
    """Where the distributed backend's engines are (used when `backend: distributed`, and by
    `shadowzoo migrate --to distributed`)."""

    postgres_url: str = Field(description=(
        "libpq URL of PostgreSQL, which holds the control tables and the lake's catalog, e.g. "
        "postgresql://shadowzoo@db:5432/shadowzoo. No password here: libpq reads PGPASSWORD or ~/.pgpass. "
        "Its query parameters (?sslmode=verify-full&sslrootcert=...) apply to every session."
    ))
    object_store: ObjectStoreConfig = Field(description="Object storage for the lake's data and shipped segments.")
    lake_prefix: str = Field("lake/", description="Key prefix of the lake's Parquet files in the bucket.")
    spool_prefix: str = Field("spool/", description="Key prefix of shipped spool segments in the bucket.")
    host: str | None = Field(
        None, description="This host's name among the gateway hosts (its shipped segments carry it); the hostname when unset."
    )
    extension_directory: str | None = Field(None, description=(
        "A DuckDB extension directory holding ducklake, postgres and httpfs, for hosts without internet access; "
        "when unset, DuckDB installs them from its repository on first use."
    ))
    segment_lease_ttl_s: float = Field(300.0, gt=0, description=(
        "How long an ingest worker holds a segment it claimed (never renewed: above the longest ingest of one "
        "batch): how long a killed worker's segments wait before another ingest worker takes them."
    ))
    replay_lease_ttl_s: float = Field(30.0, gt=0, description=(
        "How long a runner holds a replay batch without renewing it (it renews every third of it): how long a "
        "killed runner's batches wait before another runner takes them."
    ))

    @field_validator("postgres_url")
    @classmethod
    def _no_password(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
            raise ValueError(f"{value!r} is not a postgresql://user@host[:port]/database URL")
        if parts.password:
            raise ValueError("holds a password: put it in PGPASSWORD or ~/.pgpass, not in shadowzoo.yaml")
        return value

    @field_validator("host")
    @classmethod
    def _host_name(cls, value: str | None) -> str | None:
        if value is not None and not HOST_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name (letters, digits, . _ -, at most 63): "
                             "it is one part of its shipped segments' keys")
        return value

    @field_validator("lake_prefix", "spool_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"([A-Za-z0-9._-]+/)+", value):
            raise ValueError(f"{value!r} is not a key prefix like 'lake/' (letters, digits, . _ -, each part ending in /)")
        return value


class WorkspaceConfig(Strict):
    """The whole of `shadowzoo.yaml`."""

    state_dir: str = Field(".shadowzoo", description="Database, routes and spool, relative to the workspace.")
    backend: Literal["embedded", "distributed"] = Field(
        "embedded", description="`embedded`: one DuckDB file in state_dir; `distributed`: PostgreSQL, object storage "
                                "and DuckLake, as set under `distributed:`."
    )
    distributed: DistributedConfig | None = Field(None, description="The distributed backend's engines.")
    providers: dict[str, ProviderConfig] = Field(default_factory=dict, description="Upstreams by name.")
    slots: dict[str, SlotConfig] = Field(default_factory=dict, description="Slots by name.")
    zoo: ZooConfig = Field(default_factory=ZooConfig, description="The zoo of variant specs.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The champion gateway.")
    daemon: DaemonConfig = Field(default_factory=DaemonConfig, description="The daemon and its admin API.")
    prices: dict[str, Price] = Field(
        default_factory=dict, description="Prices by upstream model name; these override `prices_file`."
    )
    prices_file: str | None = Field(
        None, description="LiteLLM's model_prices_and_context_window.json (or one like it), relative to the workspace."
    )
    python_path: list[str] = Field(
        default_factory=list,
        description=(
            "Directories, besides the workspace itself, whose modules python entrypoints (variants, metrics, "
            "trainers) may name; relative to the workspace."
        ),
    )

    @field_validator("slots", "providers")
    @classmethod
    def _plain_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            check_name("name", name)
        return value

    @model_validator(mode="after")
    def _distributed_is_configured(self) -> "WorkspaceConfig":
        if self.backend == "distributed" and self.distributed is None:
            raise ValueError("backend is 'distributed' but there is no `distributed:` section naming its engines")
        return self

    @model_validator(mode="after")
    def _named_providers_exist(self) -> "WorkspaceConfig":
        known = ", ".join(sorted(self.providers)) or "none"
        for slot_name, slot in self.slots.items():
            named = [("defaults.provider", slot.defaults.provider)] + [
                (f"metrics[{i}].provider", m.provider) for i, m in enumerate(slot.metrics) if isinstance(m, JudgeMetric)
            ]
            for key, provider in named:
                if provider is not None and provider not in self.providers:
                    raise ValueError(f"slots.{slot_name}.{key}: {provider!r} is not configured (providers: {known})")
        return self
