"""Python-kind variants: `module:function(request, **params)` called in worker threads.

Only the workspace's own modules (or its `python_path`) are ever imported (see
`registry.entrypoints`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from registry.entrypoints import load_entrypoint


class PythonVariants:
    """Calls python variants off the event loop; each function is imported once."""

    def __init__(self, workers: int, roots: list[Path]) -> None:
        self._roots = roots
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shadowzoo-python")
        self._functions: dict[str, Callable[..., Any]] = {}

    async def call(self, entrypoint: str, request: dict[str, Any], params: dict[str, Any]) -> tuple[str | None, str | None, float]:
        """(output, error, latency in ms) of one call; an exception is the variant's error."""
        started = time.perf_counter()
        try:
            output = await asyncio.get_running_loop().run_in_executor(
                self._executor, partial(self._invoke, entrypoint, request, params))
        except Exception as exc:  # noqa: BLE001 - any failure of the variant's code is its error
            output, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = None
        return output, error, (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _invoke(self, entrypoint: str, request: dict[str, Any], params: dict[str, Any]) -> str:
        output = self._function(entrypoint)(request, **params)
        if not isinstance(output, str):
            raise TypeError(f"{entrypoint} returned {type(output).__name__}, expected str")
        return output

    def _function(self, entrypoint: str) -> Callable[..., Any]:
        function = self._functions.get(entrypoint)
        if function is None:
            function = self._functions[entrypoint] = load_entrypoint(entrypoint, self._roots)
        return function
