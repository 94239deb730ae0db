"""Configuration of the shadowzoo LLM simulator (not a real LLM).

The simulator's YAML declares the models it pretends to serve (latency, injected
errors, output length, prices, rate limits, accuracy, or grading like an LLM judge)
and the demo task: a labelled dataset plus the skill directives that raise a model's
accuracy on it. Every model here is a pydantic model with ``extra="forbid"``, so a
typo is an error that names the file and the key rather than a silently ignored setting.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry.errors import field_problems, first_problem

DEFAULT_LABELS = ["billing", "technical", "account", "shipping", "other"]


class SimulatorConfigError(ValueError):
    """A simulator config or dataset that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    """Base for config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LatencyConfig(_Strict):
    """How long a model takes to answer: base + seeded jitter + a per-output-token cost."""

    base_ms: float = Field(
        0.0, ge=0, description="Fixed delay before the answer (streaming: before the first chunk), in ms."
    )
    jitter_ms: float = Field(
        0.0, ge=0, description="Extra delay drawn uniformly from [0, jitter_ms) with the seeded RNG, in ms."
    )
    per_output_token_ms: float = Field(
        0.0, ge=0, description="Delay per completion token (streaming: spread over the chunks), in ms."
    )


class ErrorConfig(_Strict):
    """Probabilities of injected failures, drawn per call from a seeded RNG (a retry can succeed)."""

    http_500: float = Field(
        0.0, ge=0, le=1, description="Probability of answering HTTP 500 (openai.InternalServerError)."
    )
    http_429: float = Field(
        0.0, ge=0, le=1,
        description="Probability of answering HTTP 429 with a Retry-After header (openai.RateLimitError).",
    )
    retry_after_s: float = Field(
        1.0, gt=0, description="Value of the Retry-After header of injected 429s, in seconds."
    )
    hang: float = Field(
        0.0, ge=0, le=1,
        description="Probability of sleeping hang_s before answering, past any sane client timeout.",
    )
    hang_s: float = Field(
        60.0, gt=0, description="How long a hanging call sleeps before it answers, in seconds."
    )
    reset: float = Field(
        0.0, ge=0, le=1, description="Probability of aborting the TCP connection (RST) instead of answering."
    )

    @model_validator(mode="after")
    def _rates_sum_to_at_most_one(self) -> ErrorConfig:
        """The failure modes are exclusive outcomes of one draw, so their rates cannot exceed 1."""
        if self.http_500 + self.http_429 + self.hang + self.reset > 1:
            raise ValueError("http_500 + http_429 + hang + reset must be at most 1")
        return self


class LimitsConfig(_Strict):
    """Per-model rate limits over a sliding 60 s window, as an upstream provider enforces them."""

    rpm: int | None = Field(None, gt=0, description="Requests admitted per 60 s window; none = unlimited.")
    tpm: int | None = Field(
        None, gt=0, description="Tokens (prompt + completion) admitted per 60 s window; none = unlimited."
    )


class ModelConfig(_Strict):
    """One simulated model: its behaviour, its price and its skill at the demo task."""

    accuracy: float = Field(
        0.7, ge=0, le=1,
        description="Base probability of answering a demo-task item correctly, before skill directives.",
    )
    output_tokens: int = Field(
        16, ge=1,
        description="Length in tokens of the deterministic answer to any request that is not a task item.",
    )
    reasoning_tokens: int = Field(
        0, ge=0,
        description="Length in tokens of the explanation after a task answer (0 = the category alone).",
    )
    input_cost_per_token: float = Field(
        0.0, ge=0,
        description="USD per prompt token (LiteLLM field name); informational, listed by /v1/models.",
    )
    output_cost_per_token: float = Field(
        0.0, ge=0,
        description="USD per completion token (LiteLLM field name); informational, listed by /v1/models.",
    )
    latency: LatencyConfig = Field(default_factory=LatencyConfig, description="Simulated response time.")
    errors: ErrorConfig = Field(default_factory=ErrorConfig, description="Injected failure rates.")
    limits: LimitsConfig = Field(
        default_factory=LimitsConfig,
        description="Rate limits enforced with HTTP 429 and x-ratelimit-* headers.",
    )
    hold_open_s: float = Field(
        0.0, ge=0,
        description="Streaming only: keep the response open this long after `data: [DONE]` before ending it, "
        "as proxies and load balancers that hold the body open do (never in fast mode).",
    )
    tool_accuracy: float | None = Field(
        None, ge=0, le=1,
        description="Probability of making the right tool calls for a demo-task item that has `calls`, when the "
        "request offers `tools`; none = the item's probability of the right category (accuracy + boosts).",
    )
    grader: bool = Field(
        False,
        description="Answer like an LLM judge: reply with JSON {\"score\", \"reason\"} grading the answer "
        "between <answer> and </answer> against the demo-task ticket quoted in the prompt.",
    )
    garbage_rate: float = Field(
        0.0, ge=0, le=1,
        description="Grader only: probability, drawn per call from the seeded RNG, of a reply that is not JSON "
        "(a retry can succeed; never in fast mode).",
    )
    score_scale: float = Field(
        1.0, gt=0,
        description="Grader only: factor on every score, as a grader on another scale would answer "
        "(e.g. 10 gives scores of 0 or 10, outside 0..1).",
    )

    optimizer: bool = Field(
        False,
        description="Play the optimizer of skill training: answer the tagged prompts of `zoo.train` "
        "(reflect, merge, rank, slow_update, meta) with JSON; reflect proposes the `rule` of the task "
        "directive of each label that failed.",
    )

    @model_validator(mode="after")
    def _grader_options_need_a_grader(self) -> ModelConfig:
        """garbage_rate and score_scale change a grader's replies; on another model they would do nothing."""
        if not self.grader and (self.garbage_rate != 0.0 or self.score_scale != 1.0):
            raise ValueError("garbage_rate and score_scale apply only to a model with grader: true")
        if self.grader and self.optimizer:
            raise ValueError("a model is a grader or an optimizer, not both")
        return self


class Directive(_Strict):
    """A rule a skill may contain; when its pattern is found in the skill text, accuracy rises."""

    pattern: str = Field(
        description="Python regex searched case-insensitively in the skill (the text of all system messages)."
    )
    boost: float = Field(
        0.1, ge=-1, le=1,
        description="Added to the probability of a correct answer when the pattern is found.",
    )
    label: str | None = Field(
        None, description="Boost only items whose expected category is this label; none = every item."
    )
    rule: str | None = Field(
        None, description="A skill sentence that matches `pattern`: what a simulated optimizer proposes."
    )

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        """Reject a bad regex at load time rather than on the first request."""
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _rule_matches(self) -> Directive:
        """A rule the optimizer proposes must raise accuracy, so it must match the pattern."""
        if self.rule is not None and not re.search(self.pattern, self.rule, re.IGNORECASE):
            raise ValueError(f"rule {self.rule!r} does not match pattern {self.pattern!r}")
        return self


class TaskConfig(_Strict):
    """The demo task: a labelled dataset whose items the simulated models classify."""

    name: str = Field("support-triage", description="Name of the task, for humans and logs.")
    dataset: Path = Field(
        Path("tickets.jsonl"),
        description="JSONL file of {id, input, expected}; a relative path is relative to the YAML file.",
    )
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS), min_length=2,
        description="The categories; wrong answers are drawn from them.",
    )
    directives: list[Directive] = Field(
        default_factory=list, description="Skill rules that raise accuracy when present in the skill text."
    )

    @model_validator(mode="after")
    def _directive_labels_are_known(self) -> TaskConfig:
        """A directive that names an unknown label would silently never apply."""
        for index, directive in enumerate(self.directives):
            if directive.label is not None and directive.label not in self.labels:
                known = ", ".join(self.labels)
                raise ValueError(f"directives.{index}.label {directive.label!r} is not one of: {known}")
        return self


class SimulatorConfig(_Strict):
    """The whole simulator: models served, demo task, auth, seed and fast mode."""

    seed: int = Field(
        0, description="Seed of the per-model RNGs that draw latency jitter and injected errors."
    )
    fast: bool = Field(
        False,
        description="Throughput mode: no latency, no injected errors, one content chunk per stream "
        "(rate limits still apply).",
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer keys; empty = any 'Authorization: Bearer ...' is accepted.",
    )
    task: TaskConfig | None = Field(
        None, description="The demo task; none = every request gets generic deterministic text."
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=lambda: {"sim-model": ModelConfig()},
        min_length=1,
        description="Served models by name (the 'model' of a chat request).",
    )


class ExpectedCall(_Strict):
    """A tool call that answers a demo-task item: the function's name and its arguments."""

    name: str = Field(min_length=1, description="The function to call.")
    arguments: dict[str, Any] = Field(default_factory=dict, description="Its arguments, as a JSON object.")


class Ticket(_Strict):
    """One labelled item of the demo task's dataset."""

    id: str = Field(description="Stable item id, e.g. t0001.")
    input: str = Field(
        min_length=1,
        description="The text a user sends; a request whose last user message equals it is this item.",
    )
    expected: str = Field(description="The correct category.")
    calls: list[ExpectedCall] | None = Field(
        None, min_length=1,
        description="The right tool calls, in order, when a request for this item offers `tools`.",
    )


def load_simulator_config(path: str | Path) -> SimulatorConfig:
    """Read a simulator YAML file; the task dataset path is resolved relative to that file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimulatorConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise SimulatorConfigError(f"{path}: invalid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SimulatorConfigError(f"{path}: top level must be a mapping, not {type(raw).__name__}")
    config = _validate(path, raw)
    if config.task is None or config.task.dataset.is_absolute():
        return config
    task = config.task.model_copy(update={"dataset": path.parent / config.task.dataset})
    return config.model_copy(update={"task": task})


def _validate(path: Path, raw: dict[str, Any]) -> SimulatorConfig:
    """Validate the parsed YAML, turning pydantic's errors into lines that name file and key."""
    try:
        return SimulatorConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{path}: {problem.text()}" for problem in field_problems(exc)]
        raise SimulatorConfigError("\n".join(lines)) from exc


def load_tickets(task: TaskConfig) -> list[Ticket]:
    """Read the task's JSONL dataset; errors name the file and the line."""
    try:
        lines = task.dataset.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        reason = exc.strerror or exc
        raise SimulatorConfigError(f"{task.dataset}: cannot read task dataset: {reason}") from exc
    tickets: list[Ticket] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        ticket = _parse_ticket(task, number, line)
        if ticket.input in seen:
            raise SimulatorConfigError(f"{task.dataset}:{number}: input duplicates an earlier item")
        seen.add(ticket.input)
        tickets.append(ticket)
    return tickets


def _parse_ticket(task: TaskConfig, number: int, line: str) -> Ticket:
    """Parse one dataset line and check its label against the task's labels."""
    where = f"{task.dataset}:{number}"
    try:
        ticket = Ticket.model_validate(json.loads(line))
    except json.JSONDecodeError as exc:
        raise SimulatorConfigError(f"{where}: invalid JSON: {exc.msg}") from exc
    except ValidationError as exc:
        raise SimulatorConfigError(f"{where}: {first_problem(exc).text()}") from exc
    if ticket.expected not in task.labels:
        known = ", ".join(task.labels)
        raise SimulatorConfigError(f"{where}: expected {ticket.expected!r} is not one of: {known}")
    return ticket
