"""HTTP face of the shadowzoo simulator: an OpenAI-compatible server that is not a real LLM.

It serves ``POST /v1/chat/completions`` (JSON and SSE streaming), ``GET /v1/models``
and ``GET /healthz`` with aiohttp, so the real ``openai`` client, its retries, timeouts
and usage accounting are what tests and demos exercise. What to answer and when to fail
is decided by :class:`shadow.simulator.engine.Engine`; this module only speaks the
protocol: response and error shapes, status codes, headers, delays and SSE framing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import secrets
import signal
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from registry.errors import first_problem
from shadow.simulator.engine import Answer, Engine, Fault, SimulatedModel, count_tokens
from shadow.simulator.simulator_config import SimulatorConfig
from shadow.webcommon import bearer_token

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 1.0
STREAM_CHUNK_CHARS = 16
OWNER = "shadowzoo-simulator"
INVALID = "invalid_request_error"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChatMessage(BaseModel):
    """One chat message as the simulator needs it; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(description="system, developer, user, assistant or tool.")
    content: str | list[dict[str, Any]] | None = Field(None, description="Text, or a list of content parts.")


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = Field(False, description="Send a final chunk with empty choices and the usage.")


class FunctionSpec(BaseModel):
    """A function a request offers; its description and parameters are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, description="The function's name.")


class ToolSpec(BaseModel):
    """One item of `tools`: OpenAI's function tool."""

    model_config = ConfigDict(extra="allow")

    type: Literal["function"] = Field(description="Only function tools are offered to chat models.")
    function: FunctionSpec


class ChatRequest(BaseModel):
    """The body of POST /v1/chat/completions; sampling parameters are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="Name of a model declared in the simulator config.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation.")
    stream: bool = Field(False, description="Answer as server-sent events.")
    stream_options: StreamOptions | None = Field(None, description="Streaming options.")
    max_tokens: int | None = Field(None, ge=1, description="Cap on completion tokens (legacy name).")
    max_completion_tokens: int | None = Field(None, ge=1, description="Cap on completion tokens.")
    n: int = Field(1, ge=1, le=1, description="Number of choices; the simulator supports 1.")
    tools: list[ToolSpec] | None = Field(None, description="Functions the model may call.")
    tool_choice: Any = Field(None, description='"none", "auto", "required", or one function to call.')

    def offered_tools(self) -> list[str]:
        """The names of the functions the model may call now: none with tool_choice "none", the
        named one when tool_choice names a function."""
        if not self.tools or self.tool_choice == "none":
            return []
        if isinstance(self.tool_choice, dict) and isinstance((self.tool_choice.get("function") or {}).get("name"), str):
            return [self.tool_choice["function"]["name"]]
        return [tool.function.name for tool in self.tools]

    def token_cap(self) -> int | None:
        """The effective completion-token cap: the smaller of the two fields that are set."""
        caps = [cap for cap in (self.max_tokens, self.max_completion_tokens) if cap is not None]
        return min(caps) if caps else None

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class ApiError(Exception):
    """An error a handler answers with, in OpenAI's shape; the middleware renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = INVALID,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON response ``{"error": {message, type, param, code}}``."""
        return web.json_response(self.body, status=self.status, headers=self.headers)


@dataclass
class _AppState:
    """Per-app values the handlers share: the engine, auth keys, the id counter and the start time."""

    engine: Engine
    api_keys: frozenset[str]
    created: int
    id_prefix: str
    counter: itertools.count[int]

    def next_id(self) -> str:
        """A fresh OpenAI-style completion id."""
        return f"chatcmpl-{self.id_prefix}{next(self.counter):010d}"


STATE = web.AppKey("state", _AppState)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render ApiError, routing errors and unexpected exceptions as JSON errors, never a traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return ApiError(exc.status, exc.reason, headers=allow).response()
    except Exception:
        log.exception("simulator failed on %s %s", request.method, request.path)
        return ApiError(500, "The simulator failed while processing your request.", "server_error").response()


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a bearer token on /v1/*: any token, or one of the configured api_keys."""
    if request.path.startswith("/v1/"):
        token = bearer_token(request.headers.get("Authorization", ""))
        keys = request.app[STATE].api_keys
        if not token:
            message = "You didn't provide an API key (Authorization: Bearer ...)."
            raise ApiError(401, message, code="invalid_api_key")
        if keys and token not in keys:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    """Liveness probe, unauthenticated."""
    return web.json_response({"status": "ok", "simulator": True})


async def _list_models(request: web.Request) -> web.Response:
    """OpenAI's model list, with each model's LiteLLM-style prices."""
    state = request.app[STATE]
    data = [
        {
            "id": model.name,
            "object": "model",
            "created": state.created,
            "owned_by": OWNER,
            "input_cost_per_token": model.config.input_cost_per_token,
            "output_cost_per_token": model.config.output_cost_per_token,
        }
        for model in state.engine.models.values()
    ]
    return web.json_response({"object": "list", "data": data})


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    """Validate, apply the rate limits and this call's fault, then answer as JSON or SSE."""
    state = request.app[STATE]
    chat, messages = _parse_chat(await request.read())
    model = state.engine.models.get(chat.model)
    if model is None:
        message = f"The model '{chat.model}' does not exist in this simulator."
        raise ApiError(404, message, code="model_not_found", param="model")
    answer = state.engine.answer(model.name, messages, chat.token_cap(), chat.offered_tools())
    headers = {"x-request-id": f"req_{secrets.token_hex(8)}", **_admit(model, answer)}
    await _apply_fault(request, model, headers)
    if chat.stream:
        return await _stream(request, model, answer, chat.include_usage(), headers)
    await asyncio.sleep(model.first_delay_s() + model.token_delay_s(answer.completion_tokens))
    return web.json_response(_completion_body(state.next_id(), model.name, answer), headers=headers)


def _parse_chat(raw: bytes) -> tuple[ChatRequest, list[dict[str, Any]]]:
    """The validated request and its messages as sent; a 400 ApiError otherwise."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "We could not parse the JSON body of your request.") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        chat = ChatRequest.model_validate(body)
    except ValidationError as exc:
        problem = first_problem(exc)
        raise ApiError(400, f"Invalid request: {problem.text()}", param=problem.path) from exc
    return chat, body["messages"]


def _admit(model: SimulatedModel, answer: Answer) -> Mapping[str, str]:
    """The x-ratelimit-* headers of an admitted call; a 429 ApiError when a limit is reached."""
    admission = model.limiter.admit(answer.total_tokens)
    if not admission.allowed:
        kind = admission.limited_by or "requests"
        wait = admission.retry_after_s
        message = f"Rate limit reached for {model.name} in {kind} per min (simulated). Retry in {wait:.3g}s."
        raise _rate_limited(message, kind, wait, admission.headers)
    return admission.headers


def _rate_limited(message: str, kind: str, retry_after_s: float, headers: Mapping[str, str]) -> ApiError:
    """A 429 with Retry-After (whole seconds, rounded up) and the exact retry-after-ms."""
    retry = {
        "Retry-After": str(math.ceil(retry_after_s)),
        "retry-after-ms": str(math.ceil(1000 * retry_after_s)),
    }
    return ApiError(429, message, kind, code="rate_limit_exceeded", headers={**headers, **retry})


async def _apply_fault(request: web.Request, model: SimulatedModel, headers: Mapping[str, str]) -> None:
    """Apply this call's drawn fault: raise an error response, hang, reset the connection, or nothing."""
    fault = model.draw_fault()
    errors = model.config.errors
    if fault is Fault.HTTP_500:
        message = "The server had an error while processing your request (simulated)."
        raise ApiError(500, message, "server_error", headers=headers)
    if fault is Fault.HTTP_429:
        message = f"Rate limit reached for {model.name} (simulated). Please try again later."
        raise _rate_limited(message, "requests", errors.retry_after_s, headers)
    if fault is Fault.HANG:
        await asyncio.sleep(errors.hang_s)
    if fault is Fault.RESET:
        _reset_connection(request)
        raise ApiError(500, "Connection reset (simulated); this body is never delivered.", "server_error")


def _reset_connection(request: web.Request) -> None:
    """Abort the TCP connection with an RST, as a crashing upstream or middlebox would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _completion_body(completion_id: str, model: str, answer: Answer) -> dict[str, Any]:
    """OpenAI's chat.completion object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_calls:
        message["tool_calls"] = [
            {"id": _call_id(completion_id, index), "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for index, call in enumerate(answer.tool_calls)
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason, "logprobs": None}],
        "usage": _usage(answer),
    }


def _call_id(completion_id: str, index: int) -> str:
    """The id of a completion's index-th tool call."""
    return f"call_{completion_id.removeprefix('chatcmpl-')}_{index}"


def _usage(answer: Answer) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.total_tokens,
    }


async def _stream(
    request: web.Request, model: SimulatedModel, answer: Answer, include_usage: bool, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Answer as SSE: a role chunk, content chunks, a finish chunk, the usage if asked, then [DONE]."""
    response = web.StreamResponse(
        headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await asyncio.sleep(model.first_delay_s())
    await response.prepare(request)
    chunk: dict[str, Any] = {
        "id": request.app[STATE].next_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model.name,
    }
    if include_usage:
        chunk["usage"] = None
    try:
        await _send_chunks(response, chunk, model, answer, include_usage)
    except ConnectionError:
        log.debug("client left during a stream from %s", model.name)
    return response


async def _send_chunks(
    response: web.StreamResponse,
    chunk: dict[str, Any],
    model: SimulatedModel,
    answer: Answer,
    include_usage: bool,
) -> None:
    """Write the SSE events of one answer, pacing the content chunks by their tokens; tool calls
    follow as OpenAI streams them: each call's id and name, then its arguments in pieces. The
    end is held open when the model is configured to."""

    async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
        payload = json.dumps({**chunk, "choices": choices, **extra})
        await response.write(f"data: {payload}\n\n".encode())

    await send([_choice({"role": "assistant", "content": "" if answer.content is not None else None})])
    for piece in _pieces(answer.content or "", model.fast):
        await asyncio.sleep(model.token_delay_s(count_tokens(piece)))
        await send([_choice({"content": piece})])
    for index, call in enumerate(answer.tool_calls):
        opening = {"index": index, "id": _call_id(chunk["id"], index), "type": "function",
                   "function": {"name": call.name, "arguments": ""}}
        await send([_choice({"tool_calls": [opening]})])
        for piece in _pieces(call.arguments, model.fast):
            await asyncio.sleep(model.token_delay_s(count_tokens(piece)))
            await send([_choice({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})])
    await send([_choice({}, answer.finish_reason)])
    if include_usage:
        await send([], usage=_usage(answer))
    await response.write(b"data: [DONE]\n\n")
    if not model.fast:
        await asyncio.sleep(model.config.hold_open_s)
    await response.write_eof()


def _choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """The one choice of a streaming chunk."""
    return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def _pieces(content: str, fast: bool) -> list[str]:
    """The content split into streaming chunks of a few tokens (one chunk in fast mode)."""
    if fast:
        return [content] if content else []
    return [content[i : i + STREAM_CHUNK_CHARS] for i in range(0, len(content), STREAM_CHUNK_CHARS)]


def build_app(config: SimulatorConfig) -> web.Application:
    """The simulator's aiohttp application for ``config``; the task dataset is read here."""
    app = web.Application(middlewares=[_json_errors, _auth])
    app[STATE] = _AppState(
        engine=Engine(config),
        api_keys=frozenset(config.api_keys),
        created=int(time.time()),
        id_prefix=secrets.token_hex(4),
        counter=itertools.count(1),
    )
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/healthz", _healthz)
    return app


async def _start(config: SimulatorConfig, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving on ``host:port`` (0 = an ephemeral port); returns the runner and the bound port."""
    runner = web.AppRunner(build_app(config), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


async def _shutdown(runner: web.AppRunner) -> None:
    """Stop serving, then cancel what still runs (hanging calls) so that the loop closes cleanly."""
    await runner.cleanup()
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def _with_fast(config: SimulatorConfig, fast: bool) -> SimulatorConfig:
    """The config, switched to fast mode when asked."""
    return config.model_copy(update={"fast": True}) if fast else config


def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 8700, fast: bool = False) -> None:
    """Run the simulator until SIGINT or SIGTERM, printing one line once it listens."""
    asyncio.run(_serve_until_signalled(_with_fast(config, fast), host, port))


async def _serve_until_signalled(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve, wait for a termination signal, then shut down."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner, bound = await _start(config, host, port)
    print(f"shadowzoo simulator (not a real LLM) listening on http://{host}:{bound}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        await _shutdown(runner)


class SimulatorHandle:
    """A simulator serving from a daemon thread with its own event loop, for tests and demos."""

    def __init__(self, config: SimulatorConfig, host: str, port: int) -> None:
        self.host = host
        self._loop = asyncio.new_event_loop()
        started: Future[tuple[web.AppRunner, int]] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(config, port, started), name="shadowzoo-simulator", daemon=True
        )
        self._thread.start()
        self._runner, self.port = started.result()

    def _run(self, config: SimulatorConfig, port: int, started: Future[tuple[web.AppRunner, int]]) -> None:
        """Thread body: start the server on this thread's loop (reporting how it went), then serve."""
        try:
            started.set_result(self._loop.run_until_complete(_start(config, self.host, port)))
        except BaseException as exc:
            started.set_exception(exc)
            self._loop.close()
            return
        self._loop.run_forever()

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this simulator, e.g. ``http://127.0.0.1:41234/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        """Stop serving, close the loop and join the thread; calling it twice is harmless."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(_shutdown(self._runner), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SimulatorHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0, fast: bool = False
) -> SimulatorHandle:
    """Start the simulator in-process on ``port`` (0 = ephemeral); use ``.base_url`` and ``.stop()``."""
    return SimulatorHandle(_with_fast(config, fast), host, port)
