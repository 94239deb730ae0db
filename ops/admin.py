"""The daemon's admin API: every operator operation over HTTP, for the CLI and for scripts.

Its routes and `/openapi.json` are generated from the operation table (`ops.optable`).
Calls run the daemon's operations (off the event loop; the database lock serialises them);
long work starts a job (`ops.jobs`) and answers its status at once. `/admin/*` needs the
bearer token named in the config, compared in constant time; `/metrics`, `/healthz` and
`/openapi.json` are open (bind the daemon to loopback, the default). Errors keep their
kind (`ops.optable.ERRORS`): a refused promotion is 409 with the same message the CLI
prints locally. The web console (`ops.console`) is served under `/ui` with its own login and never opens `/admin/*`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from functools import partial
from typing import Any, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, TypeAdapter

from ops.console.app import add_console
from ops.jobs import JobBoard, check_job
from ops.operations import LocalOperations
from ops.protocol import JobStatus
from ops.optable import OPERATIONS, Operation, arguments_of_query, error_status, query_shape
from registry import ShadowzooError
from registry.errors import validated
from shadow.webcommon import SCHEMA_REF, SCHEMA_REF_PREFIX, bearer_token, component_schema, json_errors

log = logging.getLogger("shadowzoo.admin")
HTTP_ERROR_KIND = {404: "not_found", 405: "method_not_allowed", 409: "refused", 400: "invalid"}


class Api:
    """The admin application's state: the daemon's operations and jobs, its metrics and the token."""

    def __init__(self, operations: LocalOperations, jobs: JobBoard, metrics_registry: Any, token: str | None) -> None:
        self.operations = operations
        self.jobs = jobs
        self.metrics_registry = metrics_registry
        self.token = token

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)


def build_admin_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[json_errors(_http_error), _auth(api.token)])
    for operation in OPERATIONS:
        app.router.add_route(operation.method, operation.path, _route(api, operation))
    app.router.add_get("/metrics", partial(_metrics, api))
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/openapi.json", _openapi)
    add_console(app, api)
    return app


def _auth(token: str | None):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path.startswith("/admin/"):
            given = bearer_token(request.headers.get("Authorization", ""))
            if not token or not hmac.compare_digest(given.encode(), token.encode()):
                return _error(401, "unauthorized", "missing or wrong admin token (Authorization: Bearer …)")
        return await handler(request)

    return middleware


def _route(api: Api, operation: Operation):
    """The handler of one table row: a job starts and answers its status; any other operation answers its result."""
    answer = TypeAdapter(JobStatus if operation.job else operation.result)

    async def handle(request: web.Request) -> web.Response:
        try:
            arguments = await _arguments(request, operation)
            if operation.job:
                check_job(api.operations.workspace, arguments)
                result = api.jobs.start(operation, arguments)
            else:
                result = await api.call(operation.invoke, api.operations, arguments)
        except ShadowzooError as exc:
            return _error(*error_status(exc), str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still answer JSON, and the log keeps the traceback
            log.exception("admin %s %s failed", request.method, request.path)
            return _error(500, "internal", f"{type(exc).__name__}: {exc}")
        return web.Response(body=answer.dump_json(result), content_type="application/json")

    return handle


async def _arguments(request: web.Request, operation: Operation) -> BaseModel:
    """A GET's arguments from its query and path, a POST's from its JSON body (none: no arguments)."""
    if operation.method == "GET":
        return arguments_of_query(operation, request.query, dict(request.match_info))
    return validated(operation.arguments, await request.read() or b"{}", "body")


def _http_error(status: int, reason: str) -> web.Response:
    """aiohttp's own errors (unknown path, wrong method) in the admin API's error shape."""
    return _error(status, HTTP_ERROR_KIND.get(status, "http_error"), reason)


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


async def _metrics(api: Api, request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(api.metrics_registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(openapi_document()), content_type="application/json")


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the admin API, generated from the operation table.

    Every model lands once under `components/schemas`, and every status an operation can
    answer is documented.
    """
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        answer = JobStatus if operation.job else operation.result
        schema = component_schema(TypeAdapter(answer).json_schema(mode="serialization", ref_template=SCHEMA_REF), schemas)
        described: dict[str, Any] = {
            "summary": operation.summary,
            "security": [{"bearer": []}],
            "parameters": _parameters(operation),
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
                          **{code: {"$ref": f"#/components/responses/{name}"} for code, (name, _) in ERROR_RESPONSES.items()}},
        }
        if operation.method == "POST":
            body = component_schema(operation.arguments.model_json_schema(ref_template=SCHEMA_REF), schemas)
            required = any(field.is_required() for field in operation.arguments.model_fields.values())
            described["requestBody"] = {"required": required, "content": {"application/json": {"schema": body}}}
        paths.setdefault(operation.path, {})[operation.method.lower()] = described
    return {
        "openapi": "3.1.0",
        "info": {"title": "shadowzoo admin API", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {name: {"description": description, "content": {"application/json": {
                "schema": {"$ref": f"{SCHEMA_REF_PREFIX}Error"}}}} for name, description in ERROR_RESPONSES.values()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _parameters(operation: Operation) -> list[dict[str, Any]]:
    """The path parameters, and a GET's arguments as query parameters (a list or tag map as repeated values)."""
    path = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in operation.path_fields]
    if operation.method != "GET":
        return path
    fields = operation.arguments.model_fields
    return path + [
        {"name": query_name, "in": "query", "required": fields[name].is_required(),
         "schema": {"type": "string"} if query_shape(operation, name) == "scalar"
         else {"type": "array", "items": {"type": "string"}}}
        for name, query_name in operation.query_names().items() if name not in operation.path_fields]


ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["type", "message"], "properties": {
        "type": {"type": "string", "description": "invalid, unauthorized, not_found, method_not_allowed, refused, internal"},
        "message": {"type": "string", "description": "What went wrong and what was expected, naming the field."}}}},
}
ERROR_RESPONSES = {
    "400": ("Invalid", "A query parameter or body field is missing or invalid; the message names it."),
    "401": ("Unauthorized", "Missing or wrong admin token."),
    "404": ("NotFound", "The slot, variant, skill or job does not exist."),
    "405": ("MethodNotAllowed", "Another method is expected; the Allow header names it."),
    "409": ("Refused", "Understood but not allowed in the current state (e.g. promotion without evidence)."),
    "500": ("Internal", "A fault of the daemon; its log has the traceback."),
}
