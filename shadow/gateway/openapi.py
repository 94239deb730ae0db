"""The gateway's OpenAPI 3.1 document, served at `/openapi.json`.

The capture and feedback bodies are the pydantic models their handlers validate with; a
chat request is an OpenAI-compatible body passed through as sent, so it is described as
an open object with the `model` (the slot) and the `messages` the handler checks. Every
status the gateway itself answers is listed; other statuses of a chat completion are the
champion upstream's, relayed unchanged.
"""

from __future__ import annotations

from typing import Any

from shadow.exchange import CHAT_MESSAGES_SCHEMA
from shadow.gateway.bodies import CLIENT_ID_HEADER, CaptureBody
from shadow.outcome import Outcome
from shadow.webcommon import SCHEMA_REF, SCHEMA_REF_PREFIX, component_schema

ERROR_SCHEMA = {
    "type": "object", "required": ["error"], "description": "OpenAI's error shape, so any OpenAI SDK raises on it.",
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string", "description": "What went wrong and what was expected, naming the field."},
        "type": {"type": "string", "enum": ["invalid_request_error", "api_error"]},
        "param": {"type": ["string", "null"], "description": "The field at fault, when one is."},
        "code": {"type": ["string", "null"]}}}},
}
CHAT_REQUEST_SCHEMA = {
    "type": "object", "title": "ChatRequest", "required": ["model", "messages"], "additionalProperties": True,
    "description": "An OpenAI chat completions request; every field but `model` reaches the champion as sent.",
    "properties": {"model": {"type": "string", "minLength": 1, "description": "The slot to serve."},
                   "messages": CHAT_MESSAGES_SCHEMA},
}
ACCEPTED_SCHEMA = {
    "type": "object", "required": ["status", "request_id"],
    "properties": {"status": {"const": "accepted"}, "request_id": {"type": "string"}},
}
MODELS_SCHEMA = {
    "type": "object", "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
        "type": "object", "required": ["id", "object", "created", "owned_by"],
        "properties": {"id": {"type": "string", "description": "A slot."}, "object": {"const": "model"},
                       "created": {"type": "integer"}, "owned_by": {"type": "string"}}}}},
}
ERRORS = {
    "400": "The body is not JSON, or a field is missing or invalid; `param` names it.",
    "401": "Missing or wrong client key (when the gateway has client keys).",
    "404": "No such slot is served here.",
    "405": "Another method is expected; the Allow header names it.",
    "413": "The body is larger than `gateway.max_body_bytes`.",
    "502": "The champion's upstream is unreachable.",
    "503": "The slot cannot be served, or the capture buffer is full; retry shortly.",
    "504": "The champion's upstream did not answer within the slot's timeout.",
}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the gateway: chat completions, capture, feedback, models, health, metrics."""
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA, "Accepted": ACCEPTED_SCHEMA, "ModelList": MODELS_SCHEMA}
    capture = component_schema(CaptureBody.model_json_schema(ref_template=SCHEMA_REF), schemas)
    feedback = component_schema(Outcome.model_json_schema(ref_template=SCHEMA_REF), schemas)
    schemas["ChatRequest"] = CHAT_REQUEST_SCHEMA
    chat = _operation("Serve the slot's champion and capture the exchange.", {"$ref": f"{SCHEMA_REF_PREFIX}ChatRequest"},
                      {"200": _json("The champion's answer, relayed unchanged.", {"type": "object"}, stream=True)},
                      ("400", "401", "404", "405", "413", "502", "503", "504"))
    chat["parameters"] = [{"name": CLIENT_ID_HEADER, "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "The client's own id for the request; feedback may use it."}]
    chat["responses"]["default"] = {"description": "Any other status is the champion upstream's, relayed unchanged."}
    accepted = {"202": _json("Stored in the capture buffer; spooled within a flush interval.", _ref("Accepted"))}
    return {
        "openapi": "3.1.0",
        "info": {"title": "shadowzoo gateway", "version": "1"},
        "paths": {
            "/v1/chat/completions": {"post": chat},
            "/v1/capture": {"post": _operation("Report an exchange the application served itself (observer mode).",
                                               capture, accepted, ("400", "401", "404", "405", "413", "503"))},
            "/v1/feedback": {"post": _operation("A label or reaction for a request, by either id.", feedback, accepted,
                                                ("400", "401", "405", "413", "503"))},
            "/v1/models": {"get": _operation("The served slots, as OpenAI's model list.", None,
                                             {"200": _json("The slots.", _ref("ModelList"))}, ("401", "405"))},
            "/healthz": {"get": _open("The worker is up.", _json("Up.", _status_schema("ok")))},
            "/readyz": {"get": _open("A route table is loaded.", _json("Ready.", _status_schema("ready")), {
                "503": _json("No routes.json loaded yet.", _status_schema("not ready"))})},
            "/metrics": {"get": _open("Prometheus metrics of every worker.", {
                "description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}})},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A client key, when the gateway has any."}},
        },
    }


def _operation(summary: str, body: dict[str, Any] | None, answers: dict[str, Any],
               errors: tuple[str, ...]) -> dict[str, Any]:
    """A `/v1/*` operation: needs a client key; gives one of `answers` or of the listed errors."""
    operation: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {**answers, **{code: _json(ERRORS[code], _ref("Error")) for code in errors}},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return operation


def _open(summary: str, answer: dict[str, Any], more: dict[str, Any] | None = None) -> dict[str, Any]:
    """An operation open to anyone (no client key), for probes and scrapers."""
    return {"summary": summary, "security": [], "responses": {"200": answer, **(more or {}),
                                                              "405": _json(ERRORS["405"], _ref("Error"))}}


def _json(description: str, schema: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if stream:
        content["text/event-stream"] = {"schema": {
            "description": "With `stream: true`, server-sent events: each a `chat.completion.chunk`, then `[DONE]`.",
            "anyOf": [{"type": "object"}, {"const": "[DONE]"}]}}
    return {"description": description, "content": content}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"{SCHEMA_REF_PREFIX}{name}"}


def _status_schema(status: str) -> dict[str, Any]:
    return {"type": "object", "required": ["status"], "properties": {"status": {"const": status}}}
