"""Clients for the configured OpenAI-compatible providers, under the limits shadow calls obey.

Shadow calls are guests on a quota the champion also uses, so every call to a provider
passes, per attempt: the upstream's own headroom (while its `x-ratelimit-remaining-*`
headers report less than `min_remaining_fraction` of the limit left, new calls wait), the
configured requests-per-minute and tokens-per-minute buckets (tokens are estimated from
the request before the call and corrected from the usage after it), and a concurrency cap.

Transient failures (429, 5xx, timeouts, connection errors) are retried with exponential
back-off and full jitter, honouring `Retry-After`, up to `max_retries`; any other 4xx is
final. A call made `as_live` (a variant's scored answer, compared with the champion's)
follows the champion's path instead, so errors weigh alike on both sides of a pair: the
gateway makes one attempt and relays whatever the model's side answered, so such a call is
retried only where its request never reached the model: throttling (429, usually the
shadow load itself) and a connection that could not be opened (nothing was sent); a 5xx,
a timeout or a dropped connection is its answer, as it would have been live. A refusal of
the configuration (401, 403, 404: the key, the permission, the model or URL) is marked
`refused`: the model never saw the request. The SDK's own retries are off. API keys are
read from the environment and never logged or stored.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import openai

from registry.workspace_config import ProviderConfig
from shadow.toolcalls import ToolCall, tool_calls_of

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0
MAX_RETRY_AFTER_S = 60.0
DEFAULT_HEADROOM_PAUSE_S = 1.0
DEFAULT_COMPLETION_TOKENS = 256
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
NO_KEY = "shadowzoo-no-key"
ERROR_TEXT_CHARS = 500
REFUSALS = frozenset({401, 403, 404})
"""Statuses that refuse the call's configuration (key, permission, model or URL), not its content."""
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

Sleep = Callable[[float], Awaitable[None]]


def estimate_tokens(body: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens a request may use, before it is sent.

    The prompt is estimated from the characters of its messages; the completion is the
    request's output cap, or a default when it sets none.
    """
    chars = 0
    messages = body.get("messages") or []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        chars += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    prompt = chars // CHARS_PER_TOKEN + TOKENS_PER_MESSAGE * len(messages)
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_COMPLETION_TOKENS
    return prompt, int(cap)


class TokenBucket:
    """`per_minute` units refilled continuously; taking more than is left waits for the refill."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def take(self, amount: float) -> None:
        """Wait until `amount` units are available (at most a full bucket), then take them."""
        amount = min(amount, self.capacity)
        async with self._lock:
            self._refill()
            while self.level < amount:
                await self._sleep((amount - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def give_back(self, amount: float) -> None:
        """Return units taken in excess (a negative amount takes more: an underestimate)."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now


class Headroom:
    """Per-model pauses driven by the upstream's rate-limit headers: the champion goes first.

    When a response reports less than `min_fraction` of a limit remaining, new shadow
    calls to that model wait for the time the quota needs to refill back to that fraction,
    estimated from the `x-ratelimit-reset-*` header (the time to a full refill).
    """

    def __init__(self, min_fraction: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_fraction = min_fraction
        self._clock = clock
        self._resume_at: dict[str, float] = {}

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        """Read one response's headers; close the gate for `model` if the quota runs low."""
        pause = max(self._pause_for(headers, "requests"), self._pause_for(headers, "tokens"))
        if pause > 0:
            until = self._clock() + pause
            if until > self._resume_at.get(model, 0.0):
                self._resume_at[model] = until

    def paused_for(self, model: str) -> float:
        """Seconds until shadow calls to `model` may start again (0 = now)."""
        return max(0.0, self._resume_at.get(model, 0.0) - self._clock())

    async def wait(self, model: str) -> None:
        """Return once shadow calls to `model` may start."""
        while (pause := self.paused_for(model)) > 0:
            await asyncio.sleep(pause)

    def _pause_for(self, headers: Mapping[str, str], kind: str) -> float:
        limit = _number(headers.get(f"x-ratelimit-limit-{kind}"))
        remaining = _number(headers.get(f"x-ratelimit-remaining-{kind}"))
        if not limit or remaining is None or remaining >= self.min_fraction * limit:
            return 0.0
        full_refill = _duration_s(headers.get(f"x-ratelimit-reset-{kind}"))
        if full_refill is None:
            return DEFAULT_HEADROOM_PAUSE_S
        return full_refill * (self.min_fraction * limit - remaining) / max(limit - remaining, 1.0)


@dataclass(frozen=True)
class ChatResult:
    """The outcome of one shadow chat call, after any retries."""

    ok: bool
    output: str | None
    usage: dict[str, Any] | None
    latency_ms: float
    attempts: int
    error: str | None
    tool_calls: list[ToolCall] | None = None
    refused: bool = False
    """The upstream refused the configuration (key, permission, model): the model never saw the request."""


@dataclass(frozen=True)
class _Answer:
    output: str | None
    usage: dict[str, Any] | None
    tool_calls: list[ToolCall] | None = None


@dataclass(frozen=True)
class _Failure:
    error: str
    transient: bool
    """Worth another attempt: throttling, a server error, a timeout, a connection error."""
    reached_model: bool = True
    """False when the request never reached the model (throttled, or the connection never opened)."""
    retry_after_s: float | None = None
    refused: bool = False


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The SDK's default TLS context (certificates and host names verified), made once per process
    and shared by every client: making one reads the CA certificates, about 25 ms of CPU, which
    each new client (every runner pass, judge run and training run) paid."""
    import httpx2

    return httpx2.create_ssl_context()


class ProviderClient:
    """One provider: an `AsyncOpenAI` client on the aiohttp transport, and its limits."""

    def __init__(self, name: str, config: ProviderConfig, sleep: Sleep = asyncio.sleep) -> None:
        """`sleep` waits between retries (tests pass one that records the delays instead)."""
        self.name = name
        self.config = config
        self._sleep = sleep
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=_api_key(name, config),
            max_retries=0,
            timeout=config.timeout_s,
            http_client=openai.DefaultAioHttpClient(verify=tls_context()),
        )
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._requests = TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        self._tokens = TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        self.headroom = Headroom(config.min_remaining_fraction)

    async def chat(self, body: dict[str, Any], as_live: bool = False) -> ChatResult:
        """Send a non-streaming chat completion, retrying what is worth retrying (`as_live`: only
        what never reached the model, as the champion's live call would have fared)."""
        estimate = sum(estimate_tokens(body))
        attempts = 0
        while True:
            attempts += 1
            outcome, latency_ms = await self._attempt(body, estimate)
            if isinstance(outcome, _Answer):
                return ChatResult(True, outcome.output, outcome.usage, latency_ms, attempts, None, outcome.tool_calls)
            delay = self._retry_delay(outcome, attempts, as_live)
            if delay is None:
                return ChatResult(False, None, None, latency_ms, attempts, _final_error(outcome),
                                  refused=outcome.refused)
            await self._sleep(delay)

    async def aclose(self) -> None:
        await self._client.close()

    async def _attempt(self, body: dict[str, Any], estimate: int) -> tuple[_Answer | _Failure, float]:
        """One HTTP call under the limits: its parsed answer or failure, and its latency."""
        model = str(body.get("model"))
        await self.headroom.wait(model)
        if self._requests is not None:
            await self._requests.take(1)
        if self._tokens is not None:
            await self._tokens.take(estimate)
        async with self._slots:
            started = time.perf_counter()
            outcome = await self._send(model, body)
            latency_ms = (time.perf_counter() - started) * 1000
        if self._tokens is not None:
            self._tokens.give_back(estimate - _tokens_used(outcome, estimate))
        return outcome, latency_ms

    async def _send(self, model: str, body: dict[str, Any]) -> _Answer | _Failure:
        """POST the body as it is.

        The body is already OpenAI JSON (a captured request with a variant applied), so all
        of it but the model travels in `extra_body`: the SDK then sends it untouched, and
        skips its typed-parameter transform of the messages, ~1 ms of CPU per call.
        """
        extra = {key: value for key, value in body.items() if key != "model"}
        try:
            raw = await self._client.chat.completions.with_raw_response.create(
                model=model, messages=openai.omit, extra_body=extra
            )
        except openai.APIStatusError as exc:
            self.headroom.observe(model, exc.response.headers)
            return _status_failure(exc)
        except openai.APIConnectionError as exc:
            return _connection_failure(exc, self.config.timeout_s)
        self.headroom.observe(model, raw.headers)
        return _parse_completion(raw.content)

    def _retry_delay(self, failure: _Failure, attempts: int, as_live: bool) -> float | None:
        """Seconds to wait before the next attempt, or None when this failure is final."""
        retryable = failure.transient and not (as_live and failure.reached_model)
        if not retryable or attempts > self.config.max_retries:
            return None
        if failure.retry_after_s is not None:
            return failure.retry_after_s if failure.retry_after_s <= MAX_RETRY_AFTER_S else None
        return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempts - 1)))


class ProviderPool:
    """One client per configured provider, created on first use inside the running loop."""

    def __init__(self, providers: Mapping[str, ProviderConfig], sleep: Sleep = asyncio.sleep) -> None:
        self._configs = dict(providers)
        self._sleep = sleep
        self._clients: dict[str, ProviderClient] = {}
        self._retired: list[ProviderClient] = []

    def update(self, providers: Mapping[str, ProviderConfig]) -> None:
        """Take a reloaded config: the next calls to a changed or removed provider use new settings.

        Calls in flight finish on their old client; it is closed by `close_retired`, once none can be.
        """
        self._configs = dict(providers)
        for name, client in list(self._clients.items()):
            if self._configs.get(name) != client.config:
                self._retired.append(self._clients.pop(name))

    async def close_retired(self) -> None:
        """Close the clients replaced by `update` (call it when no call is in flight)."""
        retired, self._retired = self._retired, []
        await asyncio.gather(*(client.aclose() for client in retired), return_exceptions=True)

    def get(self, name: str) -> ProviderClient | None:
        """The client of provider `name`, or None when it is not configured."""
        client = self._clients.get(name)
        if client is None and name in self._configs:
            client = self._clients[name] = ProviderClient(name, self._configs[name], self._sleep)
        return client

    async def aclose(self) -> None:
        """Close every client's connections."""
        self._retired += self._clients.values()
        self._clients = {}
        await self.close_retired()


def _api_key(name: str, config: ProviderConfig) -> str:
    if config.api_key_env is None:
        return NO_KEY
    key = os.environ.get(config.api_key_env)
    if not key:
        log.warning("provider %s: $%s is not set; calling without an API key", name, config.api_key_env)
    return key or NO_KEY


def _status_failure(exc: openai.APIStatusError) -> _Failure:
    """An HTTP error: 429 and 5xx are transient; only a 429 stopped the request before the model."""
    status = exc.status_code
    transient = status == 429 or status >= 500
    retry_after = _retry_after_s(exc.response.headers) if transient else None
    return _Failure(_clip(f"HTTP {status}: {exc.message}"), transient, reached_model=status != 429,
                    retry_after_s=retry_after, refused=status in REFUSALS)


def _connection_failure(exc: openai.APIConnectionError, timeout_s: float) -> _Failure:
    """A transport error, transient; it reached the model unless the connection never opened."""
    if _never_sent(exc):
        return _Failure(_clip(f"could not connect: {_root_cause(exc)}"), transient=True, reached_model=False)
    if isinstance(exc, openai.APITimeoutError):
        return _Failure(f"timed out after {timeout_s:g} s", transient=True)
    return _Failure(_clip(f"connection error: {exc.__cause__ or exc}"), transient=True)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and the chain of causes under it, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _never_sent(exc: BaseException) -> bool:
    """Whether the transport failed to connect (refused, unreachable, connect timeout): the request never left."""
    connect_failures = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectionRefusedError)
    return any(isinstance(cause, connect_failures) for cause in _causes(exc))


def _root_cause(exc: BaseException) -> BaseException:
    return _causes(exc)[-1]


def _final_error(failure: _Failure) -> str:
    """The error to record; says so when an upstream asked for a wait too long to honour."""
    wait = failure.retry_after_s
    if wait is not None and wait > MAX_RETRY_AFTER_S:
        return f"{failure.error} (Retry-After {wait:g} s is over {MAX_RETRY_AFTER_S:g} s: not retried)"
    return failure.error


def _tokens_used(outcome: _Answer | _Failure, estimate: int) -> int:
    """Tokens a call counted against the quota: its usage; none for a failure; the estimate if unreported."""
    if isinstance(outcome, _Failure):
        return 0
    used = (outcome.usage or {}).get("total_tokens")
    return int(used) if used is not None else estimate


def _parse_completion(content: bytes) -> _Answer | _Failure:
    """The assistant text, tool calls and usage of a chat.completion body."""
    try:
        data = json.loads(content)
        message = data["choices"][0]["message"]
        output = message.get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return _Failure(_clip(f"malformed response ({type(exc).__name__}): {content[:200]!r}"), transient=False)
    usage = data.get("usage")
    return _Answer(output, usage if isinstance(usage, dict) else None, tool_calls_of(message))


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait an upstream asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return max(0.0, millis / 1000)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    seconds = _number(raw)
    if seconds is not None:
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _duration_s(raw: str | None) -> float | None:
    """OpenAI's reset durations: `120ms`, `7.66s`, `1m30s`, or plain seconds."""
    if raw is None:
        return None
    plain = _number(raw)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(raw)
    if not parts or "".join(a + u for a, u in parts) != raw.strip():
        return None
    return sum(float(amount) * _DURATION_UNITS[unit] for amount, unit in parts)


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_TEXT_CHARS else text[: ERROR_TEXT_CHARS - 1] + "…"
