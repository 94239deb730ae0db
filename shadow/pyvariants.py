"""Python-kind variants: `module:function(request, **params)` called in worker threads.

A function answers with its text (a string), or with a whole answer: a dict with
`content` (a string or None) and `tool_calls` (a list of `{"name", "arguments"}`), like the
answers of chat variants. Anything else is the variant's error. A call that never reaches
the variant's own code (its module does not import, the function is missing, or its params
do not fit its signature) is a configuration problem, not the variant's answer: it comes
back as `not_run`, with the reason, and is never scored. Only the workspace's own modules
(or its `python_path`) are ever imported (see `registry.entrypoints`).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from registry import ConfigError
from registry.entrypoints import load_entrypoint
from registry.errors import first_problem
from shadow.toolcalls import ToolCall


class EntrypointProblem(Exception):
    """The entrypoint cannot be called as configured (import, lookup or signature)."""


@dataclass(frozen=True)
class PythonAnswer:
    """One call's outcome: its text and tool calls, or the variant's error, or why the call was not made."""

    output: str | None
    tool_calls: list[ToolCall] | None
    error: str | None
    latency_ms: float
    not_run: str | None = None


class _Answer(BaseModel):
    """The dict form of a python variant's answer."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class PythonVariants:
    """Calls python variants off the event loop; each function is imported once it imports."""

    def __init__(self, workers: int, roots: list[Path]) -> None:
        self._roots = roots
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shadowzoo-python")
        self._functions: dict[str, Callable[..., Any]] = {}

    async def call(self, entrypoint: str, request: dict[str, Any], params: dict[str, Any]) -> PythonAnswer:
        """Run one call; an exception raised by the variant's code is its error."""
        started = time.perf_counter()
        try:
            answer = await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._invoke, entrypoint, request, params))
        except EntrypointProblem as exc:
            return PythonAnswer(None, None, None, 0.0, not_run=str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure of the variant's code is its error
            return PythonAnswer(None, None, f"{type(exc).__name__}: {exc}", _ms_since(started))
        return PythonAnswer(answer.content, answer.tool_calls or None, None, _ms_since(started))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _invoke(self, entrypoint: str, request: dict[str, Any], params: dict[str, Any]) -> _Answer:
        function = self._function(entrypoint)
        _check_arguments(entrypoint, function, request, params)
        output = function(request, **params)
        if isinstance(output, str):
            return _Answer(content=output)
        if not isinstance(output, dict):
            raise TypeError(f"{entrypoint} returned {type(output).__name__}, expected str or an answer dict")
        try:
            return _Answer.model_validate(output)
        except ValidationError as exc:
            raise TypeError(f"{entrypoint} returned an answer dict with {first_problem(exc).text()}") from None

    def _function(self, entrypoint: str) -> Callable[..., Any]:
        """The entrypoint's function; a module that fails to import is tried again next call (it may be fixed)."""
        function = self._functions.get(entrypoint)
        if function is not None:
            return function
        try:
            function = load_entrypoint(entrypoint, self._roots)
        except ConfigError as exc:
            raise EntrypointProblem(str(exc)) from exc
        self._functions[entrypoint] = function
        return function


def _check_arguments(entrypoint: str, function: Callable[..., Any], request: dict[str, Any],
                     params: dict[str, Any]) -> None:
    """Refuse a call whose params do not fit the function's signature (when it has one to read)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(request, **params)
    except TypeError as exc:
        raise EntrypointProblem(
            f"{entrypoint} does not take (request, **params) with params {sorted(params)}: {exc}") from exc


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
