"""One exchange as an application reports it: the shape `/v1/capture` and the file loader accept.

Both edges read the same JSON the same way and check it with the same models, so whatever
reaches the spool is something ingest can store: every field has its type, numbers their
range, strings a bounded length, and the request is a chat request. An edge that finds a
problem names the field and says what was expected.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from registry import canonical_json
from shadow.spool_records import STATUS_MAX, STATUS_MIN, TrafficRecord
from shadow.tags import Tags
from shadow.toolcalls import ToolCall, parsed_arguments

MAX_ID_CHARS = 256
MAX_ERROR_CHARS = 16_384
MAX_LATENCY_MS = 86_400_000.0
MAX_TOKENS = 2**53
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON: `NaN` and `Infinity` are not JSON, and nesting too deep is a `ValueError` too."""
    try:
        return json.loads(raw, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


CHAT_MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "array", "minItems": 1, "description": "The conversation; each message is passed through as sent.",
    "items": {"type": "object", "required": ["role"], "properties": {"role": {"type": "string"}}},
}
"""The JSON schema of the `messages` that `messages_problem` accepts, for the OpenAPI documents."""


def one_of_given(*fields: str) -> dict[str, Any]:
    """The JSON schema of "at least one of `fields` is given, and not null", for a model whose
    validator (or handler) checks that, so its OpenAPI document promises no more than it takes."""
    return {"anyOf": [{"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in fields]}


def messages_problem(request: dict[str, Any]) -> str | None:
    """What makes a request body not a chat request (its `messages`), or None."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array of message objects"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "every item of 'messages' must be an object with a string 'role'"
    return None


class Usage(BaseModel):
    """Token counts as OpenAI reports them; further fields (token details) are kept as given."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    total_tokens: Tokens | None = None


class _Function(BaseModel):
    name: str
    arguments: Any = None


class _ToolCall(BaseModel):
    function: _Function


class _Message(BaseModel):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None

    def stored_tool_calls(self) -> list[ToolCall] | None:
        calls = [ToolCall(name=c.function.name, arguments=parsed_arguments(c.function.arguments))
                 for c in self.tool_calls or []]
        return calls or None


class _Choice(BaseModel):
    message: _Message


class Completion(BaseModel):
    """The parts of an OpenAI `chat.completion` that are stored; other fields are ignored."""

    choices: list[_Choice] = Field(min_length=1)
    usage: Usage | None = None


class Exchange(BaseModel):
    """One request and its answer (or its error), as an application logged or posted it."""

    model_config = ConfigDict(json_schema_extra=one_of_given("response", "error"))

    slot: Id | None = None
    request: dict[str, Any] = Field(
        description="The chat request as the application sent it.",
        json_schema_extra={"required": ["messages"], "properties": {"messages": CHAT_MESSAGES_SCHEMA}})
    response: Completion | None = None
    usage: Usage | None = Field(None, description="Wins over the response's own usage.")
    latency_ms: float | None = Field(None, ge=0, le=MAX_LATENCY_MS, allow_inf_nan=False)
    request_id: Id | None = None
    client_request_id: Id | None = None
    received_at: datetime | None = None
    status: int | None = Field(None, ge=STATUS_MIN, le=STATUS_MAX)
    error: Annotated[str, StringConstraints(max_length=MAX_ERROR_CHARS)] | dict[str, Any] | None = None
    champion_version: Id | None = Field(
        None, description="The registered version that answered; by default the slot's champion when it was received.")
    tags: Tags | None = Field(None, description="Explicit tags, bounded as the `x-shadowzoo-tags` header is.")

    @field_validator("request")
    @classmethod
    def _chat_request(cls, request: dict[str, Any]) -> dict[str, Any]:
        problem = messages_problem(request)
        if problem:
            raise ValueError(problem)
        return request

    @model_validator(mode="after")
    def _answered(self) -> "Exchange":
        if self.response is None and self.error is None:
            raise ValueError("'response' is required unless an 'error' is given")
        return self

    def record(self, slot: str, request_id: str, stamp: datetime, source: str) -> TrafficRecord:
        """The traffic record of this exchange; `stamp` is its time when it gives none."""
        answer = self.response
        usage = self.usage or (answer.usage if answer else None)
        return TrafficRecord(
            request_id=request_id,
            client_request_id=self.client_request_id,
            slot=slot,
            received_at=self.received_at or stamp,
            request=self.request,
            status=self.status if self.status is not None else (200 if self.error is None else None),
            output=answer.choices[0].message.content if answer else None,
            tool_calls=answer.choices[0].message.stored_tool_calls() if answer else None,
            usage=usage.model_dump(exclude_unset=True) if usage else None,
            latency_ms=self.latency_ms,
            error=_error_text(self.error),
            source=source,
            champion_version=self.champion_version,
            tags=self.tags or None,
        )


def _error_text(error: str | dict[str, Any] | None) -> str | None:
    """An error as stored: its text, or an OpenAI error object's `message`, else the object as JSON."""
    if error is None or isinstance(error, str):
        return error
    inner = error.get("error", error)
    message = inner.get("message") if isinstance(inner, dict) else None
    return message if isinstance(message, str) else canonical_json(error)
