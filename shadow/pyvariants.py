"""Python-kind variants: `module:function(request, **params)` called in worker threads.

A function answers with its text (a string), or with a whole answer: a dict with
`content` (a string or None) and `tool_calls` (a list of `{"name", "arguments"}`), like the
answers of chat variants. Anything else is the variant's error.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from shadow.toolcalls import ToolCall


@dataclass(frozen=True)
class PythonAnswer:
    """What one call of a python variant gave: its text and tool calls, or its error."""

    output: str | None
    tool_calls: list[ToolCall] | None
    error: str | None
    latency_ms: float


class _Answer(BaseModel):
    """The dict form of a python variant's answer."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class PythonVariants:
    """Calls python variants off the event loop; each function is imported once."""

    def __init__(self, workers: int) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shadowzoo-python")
        self._functions: dict[str, Callable[..., Any]] = {}

    async def call(self, entrypoint: str, request: dict[str, Any], params: dict[str, Any]) -> PythonAnswer:
        """The answer of one call; an exception is the variant's error."""
        started = time.perf_counter()
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._invoke, entrypoint, request, params))
        except Exception as exc:  # noqa: BLE001 - any failure of the variant's code is its error
            answer, error = _Answer(), f"{type(exc).__name__}: {exc}"
        else:
            error = None
        return PythonAnswer(answer.content, answer.tool_calls or None, error, (time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _invoke(self, entrypoint: str, request: dict[str, Any], params: dict[str, Any]) -> _Answer:
        output = self._function(entrypoint)(request, **params)
        if isinstance(output, str):
            return _Answer(content=output)
        if not isinstance(output, dict):
            raise TypeError(f"{entrypoint} returned {type(output).__name__}, expected str or an answer dict")
        try:
            return _Answer.model_validate(output)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(part) for part in first["loc"])
            raise TypeError(f"{entrypoint} returned an answer dict with {where}: {first['msg']}") from None

    def _function(self, entrypoint: str) -> Callable[..., Any]:
        function = self._functions.get(entrypoint)
        if function is None:
            module, _, name = entrypoint.partition(":")
            function = self._functions[entrypoint] = getattr(importlib.import_module(module), name)
        return function
