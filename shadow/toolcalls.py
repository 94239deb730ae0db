"""Tool calls as part of an answer: read from an OpenAI message, or assembled from stream deltas.

An answer is its text and its tool calls. A tool call is stored as its function's `name`
and `arguments`, in the order the model made them; the arguments are the JSON value the
model sent (OpenAI sends them as a string of JSON), parsed when they are valid JSON and
kept as the string otherwise, so a malformed call is stored as it was and scores as wrong.
Call ids and the `type` are not kept: they say nothing about whether the call was right.
An answer without tool calls stores none (not an empty list).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ToolCall(BaseModel):
    """One function call an answer made."""

    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: Any = Field(description="The arguments as a JSON value; the string sent when it is not valid JSON.")


def parsed_arguments(raw: Any) -> Any:
    """Arguments as stored: a JSON string parsed when valid (strict JSON: no NaN or infinite
    numbers, which no JSON column could hold); anything else as it came."""
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except ValueError:
        return raw


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text} is too large for a JSON number")
    return value


def tool_calls_of(message: Any) -> list[ToolCall] | None:
    """The tool calls of a chat.completion message (None when it made none, or is not a message)."""
    calls = message.get("tool_calls") if isinstance(message, dict) else None
    if not isinstance(calls, list):
        return None
    found = [_call(call.get("function")) for call in calls if isinstance(call, dict)]
    return [call for call in found if call is not None] or None


def _call(function: Any) -> ToolCall | None:
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    return ToolCall(name=function["name"], arguments=parsed_arguments(function.get("arguments")))


class StreamedToolCalls:
    """Tool calls assembled from the `delta.tool_calls` of streamed chunks.

    Each fragment names the call it belongs to by `index`; a call's name and arguments
    arrive in pieces, concatenated in arrival order. A fragment without an index belongs
    to the call at its position in the chunk's list.
    """

    def __init__(self) -> None:
        self._names: dict[int, list[str]] = {}
        self._arguments: dict[int, list[str]] = {}

    def add(self, fragments: Any) -> None:
        """Take the `tool_calls` list of one chunk's delta."""
        if not isinstance(fragments, list):
            return
        for position, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index")
            index = index if isinstance(index, int) else position
            function = fragment.get("function") if isinstance(fragment.get("function"), dict) else {}
            self._names.setdefault(index, [])
            self._arguments.setdefault(index, [])
            if isinstance(function.get("name"), str):
                self._names[index].append(function["name"])
            if isinstance(function.get("arguments"), str):
                self._arguments[index].append(function["arguments"])

    def calls(self) -> list[ToolCall] | None:
        """The assembled calls in index order (None when there were none); a call without a name is dropped."""
        calls = [ToolCall(name="".join(self._names[i]), arguments=parsed_arguments("".join(self._arguments[i])))
                 for i in sorted(self._names) if self._names[i]]
        return calls or None


def calls_sql(value: str) -> str:
    """SQL: whether the JSON `value` is a list of calls as `ToolCall` declares them, each an
    object of exactly a string `name` and `arguments` (never NULL)."""
    return (
        f"coalesce(json_type({value}) = 'ARRAY' AND coalesce(list_bool_and(list_transform("
        f"json_extract({value}, '$[*]'), lambda call: json_type(call, '$.name') = 'VARCHAR' "
        "AND list_sort(json_keys(call)) = ['arguments', 'name'])), true), false)"
    )


def tool_calls_json(calls: Iterable[ToolCall] | None) -> str | None:
    """Tool calls as stored in a `tool_calls_json` column (None when there are none)."""
    if calls is None:
        return None
    return json.dumps([call.model_dump() for call in calls], ensure_ascii=False, separators=(",", ":"))
