"""Answer, token, latency, error and rate-limit engine of the shadowzoo simulator.

This is a simulator, not a real LLM: answers come from hashes, not from a model. The
engine has no HTTP in it; ``server.py`` turns its results into OpenAI responses.

Answers are deterministic per (model, skill, conversation), where the skill is the
text of all ``system``/``developer`` messages joined by a blank line and the
conversation is the role and text of every other message. A sha256 of those gives a
uniform ``u`` in [0, 1). If the last user message is exactly the ``input`` of a
demo-task item, the model answers that item: correctly iff ``u < p``, with
``p = clamp(model.accuracy + boosts of the directives found in the skill, 0, 1)``,
otherwise with a wrong category that the same hash picks. The category is alone on the
first line; when ``reasoning_tokens > 0`` a blank line and an explanation of exactly
``4 × reasoning_tokens`` characters follow. Any other request gets ``output_tokens``
tokens of deterministic text. Sampling parameters other than the length limits are
ignored.

Grader models (``grader: true``) answer like an LLM judge instead, with one line of
JSON ``{"score": s, "reason": "..."}``. The graded answer is the text between the
first ``<answer>`` and the last ``</answer>`` of the user messages; the ticket is the
demo-task item whose ``input`` occurs in the rest of them. With both found, ``s`` is 1
when the answer's first line is the ticket's expected category (ignoring case and
surrounding space), else 0; otherwise ``s`` is ``u`` rounded to two decimals. Then
``s`` is multiplied by ``score_scale``, and with probability ``garbage_rate`` (drawn
per call like the faults, never in fast mode) the whole reply is a sentence that is
not JSON and holds no number, so that judges can be tested on replies they cannot parse.

Tool calls: when a request offers ``tools`` (and ``tool_choice`` is not ``"none"``) and
its last message is not a ``tool`` result, the answer is tool calls and no text. For a
demo-task item with ``calls``, they are its calls when right (``u < p``, where ``p`` is the
model's ``tool_accuracy`` if set, else the category's probability above); a wrong answer
makes the first call to another offered tool (picked by the hash) with the same
arguments, or, when only that tool is offered, calls it with no arguments ``{}``. Any
other request calls the offered tool the hash picks with ``{}``. Arguments are sent as
compact JSON text; ``completion_tokens`` counts the characters of the names and arguments,
and ``max_tokens`` does not cut tool calls. The answer to the ``tool`` result of a call
(the next turn of an agent loop) is text, as for any other request.

Optimizer models (``optimizer: true``) answer the tagged prompts of skill training with
JSON (see ``shadow.simulator.optimizer``): reflecting on failed demo-task items, they
propose the ``rule`` sentence of the directive of each failed label.

Token counting (the one rule used everywhere here):

* a message's text is its ``content`` string, or the concatenated ``text`` of its
  ``{"type": "text"}`` parts, or ``""``;
* ``prompt_tokens = 3 + Σ over messages (4 + ceil(len(text) / 4))``;
* ``completion_tokens = ceil(len(output) / 4)``;
* ``max_tokens`` (or ``max_completion_tokens``; the smaller if both are set) keeps the
  first ``4 × max_tokens`` characters of the output, and then ``finish_reason`` is
  ``"length"`` instead of ``"stop"``.

Latency, injected errors and jitter are drawn per call from a per-model RNG seeded with
``(config.seed, model name)``, so a run is reproducible and a retry can succeed.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from shadow.simulator.simulator_config import ModelConfig, SimulatorConfig, TaskConfig, Ticket, load_tickets
from shadow.simulator.optimizer import SimulatedOptimizer

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_PROMPT = 3
WINDOW_S = 60.0
SKILL_ROLES = frozenset({"system", "developer"})

_GENERIC_TEXT = (
    "This reply was produced by the shadowzoo simulator, which is not a real language model. "
    "Its words are picked deterministically from a hash of the model, the skill and the request, "
    "so the same request always gets the same text, and its length follows the configured output tokens. "
)
_EXPLANATION_TEXT = (
    "The customer describes the problem in their own words and the key phrases point to one queue. "
    "Mentions of money, invoices or refunds usually belong with billing. "
    "Errors, crashes and slow pages go to technical. "
    "Login, password and profile questions are account matters. "
    "Parcels, tracking and delivery dates are shipping. "
    "Anything that fits none of these is routed to other so that a person can read it. "
    "The wording here was checked against each rule before choosing the category above. "
)
_GARBAGE_TEXT = "I looked at the answer and it seems mostly fine to me, though I cannot say how sure I am."
_ANSWER_OPEN = "<answer>"
_ANSWER_CLOSE = "</answer>"


def message_text(content: object) -> str:
    """The text of a message's ``content``: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
        return "".join(str(part.get("text", "")) for part in parts)
    return ""


def count_tokens(text: str) -> int:
    """Tokens in a piece of output text: one per started group of four characters."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def count_prompt_tokens(messages: Sequence[Mapping[str, object]]) -> int:
    """Prompt tokens of a request: 3, plus 4 and the text's tokens for every message."""
    per_message = (TOKENS_PER_MESSAGE + count_tokens(message_text(m.get("content"))) for m in messages)
    return TOKENS_PER_PROMPT + sum(per_message)


@dataclass(frozen=True)
class ToolCallAnswer:
    """One tool call of an answer: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True)
class Answer:
    """A model's deterministic answer to one request (text, or tool calls and no text), with its usage."""

    content: str | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tool_calls: tuple[ToolCallAnswer, ...] = ()

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens, as OpenAI's usage reports them."""
        return self.prompt_tokens + self.completion_tokens


class Fault(enum.Enum):
    """What goes wrong with one call, if anything."""

    NONE = "none"
    HTTP_500 = "http_500"
    HTTP_429 = "http_429"
    HANG = "hang"
    RESET = "reset"


@dataclass(frozen=True)
class Admission:
    """The rate limiter's verdict on one request, with the headers every response carries."""

    allowed: bool
    limited_by: str | None
    retry_after_s: float
    headers: Mapping[str, str]


UNLIMITED = Admission(allowed=True, limited_by=None, retry_after_s=0.0, headers={})


@dataclass
class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits over a sliding 60 s window.

    Only admitted requests count. Headers report the limits, what remains after this
    request, and (as "reset") the time until the window is empty again.
    """

    rpm: int | None
    tpm: int | None
    clock: Callable[[], float] = time.monotonic
    _admitted: deque[tuple[float, int]] = field(default_factory=deque, init=False)
    _tokens_in_window: int = field(default=0, init=False)

    def admit(self, tokens: int) -> Admission:
        """Admit a request of ``tokens`` tokens if both windows have room, and record it.

        Without any limit nothing is tracked and no headers are sent.
        """
        if self.rpm is None and self.tpm is None:
            return UNLIMITED
        now = self.clock()
        self._expire(now)
        retry_requests = self._wait_for_requests(now)
        retry_tokens = self._wait_for_tokens(now, tokens)
        allowed = retry_requests == 0 and retry_tokens == 0
        if allowed:
            self._admitted.append((now, tokens))
            self._tokens_in_window += tokens
        limited_by = None if allowed else ("requests" if retry_requests > 0 else "tokens")
        return Admission(allowed, limited_by, max(retry_requests, retry_tokens), self._headers(now))

    def _expire(self, now: float) -> None:
        """Forget requests that left the window."""
        while self._admitted and self._admitted[0][0] <= now - WINDOW_S:
            _, tokens = self._admitted.popleft()
            self._tokens_in_window -= tokens

    def _wait_for_requests(self, now: float) -> float:
        """Seconds until one more request fits the rpm window (0 = it fits now)."""
        if self.rpm is None or len(self._admitted) < self.rpm:
            return 0.0
        return self._admitted[len(self._admitted) - self.rpm][0] + WINDOW_S - now

    def _wait_for_tokens(self, now: float, tokens: int) -> float:
        """Seconds until ``tokens`` more fit the tpm window; a request larger than tpm waits a full window."""
        if self.tpm is None or self._tokens_in_window + tokens <= self.tpm:
            return 0.0
        if tokens > self.tpm:
            return WINDOW_S
        excess = self._tokens_in_window + tokens - self.tpm
        for at, freed in self._admitted:
            excess -= freed
            if excess <= 0:
                return at + WINDOW_S - now
        return WINDOW_S

    def _headers(self, now: float) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the configured limits, after this request."""
        headers: dict[str, str] = {}
        reset = _duration(self._admitted[-1][0] + WINDOW_S - now if self._admitted else 0.0)
        if self.rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(self.rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.rpm - len(self._admitted)))
            headers["x-ratelimit-reset-requests"] = reset
        if self.tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(self.tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, self.tpm - self._tokens_in_window))
            headers["x-ratelimit-reset-tokens"] = reset
        return headers


def _duration(seconds: float) -> str:
    """A duration in OpenAI's header style: ``120ms`` or ``7.66s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"


class SimulatedModel:
    """One model's per-call behaviour: injected faults, delays and rate limits."""

    def __init__(self, name: str, config: ModelConfig, seed: int, fast: bool) -> None:
        self.name = name
        self.config = config
        self.fast = fast
        self.limiter = RateLimiter(config.limits.rpm, config.limits.tpm)
        self._rng = random.Random(f"{seed}:{name}")

    def draw_fault(self) -> Fault:
        """Draw this call's fault from the seeded RNG (never one in fast mode)."""
        if self.fast:
            return Fault.NONE
        errors = self.config.errors
        u = self._rng.random()
        for fault, rate in (
            (Fault.HTTP_500, errors.http_500),
            (Fault.HTTP_429, errors.http_429),
            (Fault.HANG, errors.hang),
            (Fault.RESET, errors.reset),
        ):
            if u < rate:
                return fault
            u -= rate
        return Fault.NONE

    def draw_garbage(self) -> bool:
        """Whether this call's grader reply is not JSON, drawn from the seeded RNG (never in fast mode).

        Models without a garbage rate draw nothing, so their fault sequence is unchanged.
        """
        if self.fast or self.config.garbage_rate == 0.0:
            return False
        return self._rng.random() < self.config.garbage_rate

    def first_delay_s(self) -> float:
        """Delay before the answer starts: base plus seeded jitter (0 in fast mode)."""
        if self.fast:
            return 0.0
        latency = self.config.latency
        return (latency.base_ms + self._rng.random() * latency.jitter_ms) / 1000

    def token_delay_s(self, tokens: int) -> float:
        """Delay for producing ``tokens`` completion tokens (0 in fast mode)."""
        if self.fast:
            return 0.0
        return self.config.latency.per_output_token_ms * tokens / 1000


@dataclass(frozen=True)
class _Boosts:
    """Directive boosts found in one skill: for every item, and per expected label."""

    general: float
    by_label: Mapping[str, float]


class _TextSource:
    """A long text from which answers slice pieces that start at a word or a sentence.

    ``base`` must end with ``separator``, so that every repetition starts cleanly.
    """

    def __init__(self, base: str, min_chars: int, separator: str) -> None:
        repeats = math.ceil(min_chars / len(base)) + 1
        self._text = base * repeats
        self._starts = [0] + [m.end() for m in re.finditer(re.escape(separator), base)][:-1]

    def piece(self, seed: int, chars: int) -> str:
        """``chars`` characters starting after the separator occurrence that ``seed`` picks."""
        start = self._starts[seed % len(self._starts)]
        return self._text[start : start + chars]


class Engine:
    """Everything the simulator decides without HTTP, built once from the config."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.models = {
            name: SimulatedModel(name, settings, config.seed, config.fast)
            for name, settings in config.models.items()
        }
        task = config.task or TaskConfig()
        self._tickets = {ticket.input: ticket for ticket in load_tickets(task)} if config.task else {}
        self._wrong = {label: [other for other in task.labels if other != label] for label in task.labels}
        self._directives = [(re.compile(d.pattern, re.IGNORECASE), d.boost, d.label) for d in task.directives]
        self._optimizer = SimulatedOptimizer(task.directives)
        sizes = [max(m.output_tokens, m.reasoning_tokens) for m in config.models.values()]
        longest = CHARS_PER_TOKEN * max(sizes)
        self._generic = _TextSource(_GENERIC_TEXT, longest, " ")
        self._explanation = _TextSource(_EXPLANATION_TEXT, longest, ". ")
        self._boosts = functools.lru_cache(maxsize=1024)(self._find_boosts)

    def answer(
        self, model: str, messages: Sequence[Mapping[str, object]], max_tokens: int | None, tools: Sequence[str] = ()
    ) -> Answer:
        """The deterministic answer of ``model`` to a chat request's messages; ``tools`` are the
        names of the functions the request offers the model to call."""
        skill, conversation, last_user = _split(messages)
        # surrogatepass: JSON may carry a lone surrogate escape, which strict UTF-8 cannot encode
        digest = hashlib.sha256("\x00".join((model, skill, conversation)).encode("utf-8", "surrogatepass")).digest()
        ticket = self._tickets.get(last_user) if last_user is not None else None
        simulated = self.models[model]
        settings = simulated.config
        if tools and not (settings.grader or settings.optimizer) and messages[-1].get("role") != "tool":
            calls = self._tool_calls(settings, skill, ticket, digest, tools)
            text = "".join(call.name + call.arguments for call in calls)
            return Answer(None, "tool_calls", count_prompt_tokens(messages), count_tokens(text), calls)
        if settings.grader:
            full = _GARBAGE_TEXT if simulated.draw_garbage() else self._grade(settings, messages, digest)
        elif settings.optimizer:
            full = self._optimizer.reply("\n\n".join(message_text(m.get("content")) for m in messages))
        elif ticket is None:
            full = self._generic.piece(_int(digest, 8, 16), settings.output_tokens * CHARS_PER_TOKEN)
        else:
            full = self._ticket_answer(settings, skill, ticket, digest)
        content, finish_reason = _truncate(full, max_tokens)
        return Answer(content, finish_reason, count_prompt_tokens(messages), count_tokens(content))

    def _ticket_answer(self, settings: ModelConfig, skill: str, ticket: Ticket, digest: bytes) -> str:
        """The category (right iff u < p) and, if configured, an explanation after a blank line."""
        u = _int(digest, 0, 8) / 2**64
        if u < self._correct_probability(settings, skill, ticket.expected):
            category = ticket.expected
        else:
            wrong = self._wrong[ticket.expected]
            category = wrong[_int(digest, 16, 24) % len(wrong)]
        if settings.reasoning_tokens == 0:
            return category
        chars = settings.reasoning_tokens * CHARS_PER_TOKEN
        explanation = self._explanation.piece(_int(digest, 8, 16), chars)
        return f"{category}\n\n{explanation}"

    def _tool_calls(
        self, settings: ModelConfig, skill: str, ticket: Ticket | None, digest: bytes, tools: Sequence[str]
    ) -> tuple[ToolCallAnswer, ...]:
        """The item's calls (right iff u < p), a wrong first call, or a call of the tool the hash picks."""
        picked = _int(digest, 16, 24)
        if ticket is None or ticket.calls is None:
            return (ToolCallAnswer(tools[picked % len(tools)], "{}"),)
        right = tuple(ToolCallAnswer(call.name, _compact(call.arguments)) for call in ticket.calls)
        p = settings.tool_accuracy
        if p is None:
            p = self._correct_probability(settings, skill, ticket.expected)
        if _int(digest, 0, 8) / 2**64 < p:
            return right
        first = right[0]
        others = [name for name in tools if name != first.name]
        if others:
            wrong = ToolCallAnswer(others[picked % len(others)], first.arguments)
        else:
            wrong = ToolCallAnswer(first.name, "{}")
        return (wrong, *right[1:])

    def _grade(self, settings: ModelConfig, messages: Sequence[Mapping[str, object]], digest: bytes) -> str:
        """A judge's JSON verdict: 1 or 0 against the quoted ticket, else a score from the hash."""
        prompt = "\n\n".join(message_text(m.get("content")) for m in messages if m.get("role") == "user")
        answer, rest = _graded_answer(prompt)
        ticket = self._quoted_ticket(rest)
        if answer is None or ticket is None:
            score = round(_int(digest, 0, 8) / 2**64, 2)
            reason = "No demo-task ticket and answer found to grade; this score comes from a hash."
        else:
            given = answer.strip().split("\n", 1)[0].strip()
            score = 1.0 if given.casefold() == ticket.expected.casefold() else 0.0
            reason = f"The answer's first line is {given!r}; ticket {ticket.id} is {ticket.expected!r}."
        return json.dumps({"score": score * settings.score_scale, "reason": reason})

    def _quoted_ticket(self, text: str) -> Ticket | None:
        """The demo-task item whose input occurs in ``text`` (the longest, if several do)."""
        found = [ticket for ticket in self._tickets.values() if ticket.input in text]
        return max(found, key=lambda ticket: len(ticket.input), default=None)

    def _correct_probability(self, settings: ModelConfig, skill: str, expected: str) -> float:
        """p for an item of category ``expected``: the model's accuracy plus the skill's boosts, clamped."""
        boosts = self._boosts(skill)
        p = settings.accuracy + boosts.general + boosts.by_label.get(expected, 0.0)
        return min(1.0, max(0.0, p))

    def _find_boosts(self, skill: str) -> _Boosts:
        """Sum the boosts of the directives whose pattern occurs in the skill."""
        general = 0.0
        by_label: dict[str, float] = {}
        for pattern, boost, label in self._directives:
            if not pattern.search(skill):
                continue
            if label is None:
                general += boost
            else:
                by_label[label] = by_label.get(label, 0.0) + boost
        return _Boosts(general, by_label)


def _split(messages: Sequence[Mapping[str, object]]) -> tuple[str, str, str | None]:
    """The skill text, the rest of the conversation as one string, and the last user message."""
    skill: list[str] = []
    conversation: list[str] = []
    last_user: str | None = None
    for message in messages:
        role = str(message.get("role", ""))
        text = message_text(message.get("content"))
        if role in SKILL_ROLES:
            skill.append(text)
            continue
        conversation.append(f"{role}:{text}")
        if role == "user":
            last_user = text
    return "\n\n".join(skill), "\x00".join(conversation), last_user


def _graded_answer(prompt: str) -> tuple[str | None, str]:
    """The text between the first <answer> and the last </answer>, and the prompt without it."""
    start = prompt.find(_ANSWER_OPEN)
    end = prompt.rfind(_ANSWER_CLOSE)
    if start < 0 or end < start:
        return None, prompt
    return prompt[start + len(_ANSWER_OPEN) : end], prompt[:start] + prompt[end + len(_ANSWER_CLOSE) :]


def _compact(value: object) -> str:
    """JSON text as a model sends tool-call arguments: compact, keys in their given order."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _truncate(text: str, max_tokens: int | None) -> tuple[str, str]:
    """Cut the output to ``max_tokens`` tokens; the finish reason says whether it was cut."""
    if max_tokens is None or count_tokens(text) <= max_tokens:
        return text, "stop"
    return text[: max_tokens * CHARS_PER_TOKEN], "length"


def _int(digest: bytes, start: int, end: int) -> int:
    """An unsigned integer from a slice of the digest."""
    return int.from_bytes(digest[start:end], "big")

