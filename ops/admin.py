"""The daemon's admin API: every operator operation over HTTP, for the CLI and for scripts.

Each endpoint is declared once, with its body and answer models, and that declaration
drives both the routing and `/openapi.json`. Calls run `LocalOperations` in the daemon
(off the event loop; the database lock serialises them). `/admin/*` needs the bearer token
named in the config, compared in constant time; `/metrics`, `/healthz` and
`/openapi.json` are open (bind the daemon to loopback, the default). Errors keep their
kind: a refused promotion is 409 with the same message the CLI prints locally. The web
console (`ops.console`) is served under `/ui` with its own login and never opens `/admin/*`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ops.console.app import add_console
from ops.jobs import JobBoard, JobRequest, JobStatus
from ops.operations import LocalOperations
from registry import ConfigError, Move, NewVariant, NotFound, Refused, Registration, ShadowzooError, Variant
from registry.errors import validated
from scorer.leaderboard_model import EvidencePoint, Leaderboard
from scorer.browse import RequestFilter, RequestPage, filter_of_query
from scorer.trace import RequestTrace
from shadow.pauses import Pause
from shadow.tags import parse_where
from shadow.webcommon import SCHEMA_REF, SCHEMA_REF_PREFIX, bearer_token, component_schema, json_errors

log = logging.getLogger("shadowzoo.admin")
ERROR_STATUS = {NotFound: 404, Refused: 409, ConfigError: 400}
ERROR_KIND = {404: "not_found", 405: "method_not_allowed", 409: "refused", 400: "invalid"}


class _Body(BaseModel):
    """A request body: a misspelt or unknown key is an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid")


class PromoteBody(_Body):
    slot: str
    version_id: str
    actor: str
    reason: str | None = None
    force: bool = False


class RollbackBody(_Body):
    slot: str
    actor: str
    reason: str | None = None


class RetireBody(_Body):
    version_id: str
    actor: str
    reason: str | None = None


class PauseBody(_Body):
    version_id: str | None = Field(None, description="A challenger, or null for all shadow spend.")
    actor: str = "unknown"
    reason: str | None = None


Handler = Callable[["Api", web.Request, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    """One admin route: what it takes, what it answers, and what it does."""

    method: str
    path: str
    summary: str
    handler: Handler
    body: type[BaseModel] | None = None
    answer: Any = None
    query: tuple[str, ...] = ()


class Api:
    """The admin application's state: operations, jobs, metrics, token and status source."""

    def __init__(self, operations: LocalOperations, jobs: JobBoard, metrics_registry: Any, token: str | None,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.operations = operations
        self.jobs = jobs
        self.metrics_registry = metrics_registry
        self.token = token
        self.status = status

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)


async def _status(api: Api, request: web.Request, body: None) -> dict[str, Any]:
    return await api.call(api.status)


async def _variants(api: Api, request: web.Request, body: None) -> list[Variant]:
    return await api.call(api.operations.variants, request.query.get("slot"), request.query.get("status"))


async def _variant(api: Api, request: web.Request, body: None) -> Variant:
    return await api.call(api.operations.variant, request.match_info["version_id"])


async def _champion(api: Api, request: web.Request, body: None) -> Variant | None:
    return await api.call(api.operations.champion, _required(request, "slot"))


async def _by_label(api: Api, request: web.Request, body: None) -> Variant | None:
    return await api.call(api.operations.latest_with_label, _required(request, "slot"), _required(request, "label"))


async def _by_fingerprint(api: Api, request: web.Request, body: None) -> Variant | None:
    return await api.call(api.operations.variant_with_fingerprint, _required(request, "slot"),
                          _required(request, "fingerprint"))


async def _skill(api: Api, request: web.Request, body: None) -> str:
    return await api.call(api.operations.skill_text, request.match_info["sha"])


async def _register(api: Api, request: web.Request, body: NewVariant) -> Registration:
    return await api.call(api.operations.register, body)


async def _promote(api: Api, request: web.Request, body: PromoteBody) -> Move:
    return await api.call(api.operations.promote, body.slot, body.version_id, body.actor, body.reason, body.force)


async def _rollback(api: Api, request: web.Request, body: RollbackBody) -> Move:
    return await api.call(api.operations.rollback, body.slot, body.actor, body.reason)


async def _retire(api: Api, request: web.Request, body: RetireBody) -> Move:
    return await api.call(api.operations.retire, body.version_id, body.actor, body.reason)


async def _pause(api: Api, request: web.Request, body: PauseBody) -> Pause:
    return await api.call(api.operations.pause, body.version_id, body.actor, body.reason)


async def _resume(api: Api, request: web.Request, body: PauseBody) -> Pause | None:
    return await api.call(api.operations.resume, body.version_id)


async def _pauses(api: Api, request: web.Request, body: None) -> list[Pause]:
    return await api.call(api.operations.pauses)


async def _history(api: Api, request: web.Request, body: None) -> list[Move]:
    return await api.call(api.operations.history, _required(request, "slot"))


async def _leaderboard(api: Api, request: web.Request, body: None) -> Leaderboard:
    since = request.query.get("since")
    try:
        moment = datetime.fromisoformat(since) if since else None
    except ValueError:
        raise ConfigError(f"since: {since!r} is not an ISO date-time") from None
    try:
        where = parse_where(request.query.getall("where", []))
    except ValueError as exc:
        raise ConfigError(f"where: {exc}") from None
    return await api.call(api.operations.leaderboard, _required(request, "slot"), moment, where)


async def _evidence(api: Api, request: web.Request, body: None) -> list[EvidencePoint]:
    return await api.call(api.operations.evidence_history, _required(request, "slot"))


async def _trace(api: Api, request: web.Request, body: None) -> RequestTrace:
    return await api.call(api.operations.trace, request.match_info["request_id"], request.query.get("slot"))


async def _requests(api: Api, request: web.Request, body: None) -> RequestPage:
    """The page the query asks for; each `tag=k=v` keeps only requests carrying that tag."""
    query = {name: value for name, value in request.query.items() if name != "tag"}
    return await api.call(api.operations.requests, filter_of_query(query, request.query.getall("tag", [])))


async def _start_job(api: Api, request: web.Request, body: JobRequest) -> JobStatus:
    if body.slot is not None and body.slot not in api.operations.registry.workspace.config.slots:
        raise ConfigError(f"slot: {body.slot!r} is not configured in shadowzoo.yaml")
    return api.jobs.start(body)


async def _job(api: Api, request: web.Request, body: None) -> JobStatus:
    return api.jobs.status(request.match_info["job_id"])


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/admin/status", "Daemon health, spool lag, queue, budgets, pauses, last jobs, routes drift.", _status, answer=dict),
    Endpoint("GET", "/admin/variants", "Registered variants, oldest first.", _variants, answer=list[Variant], query=("slot", "status")),
    Endpoint("GET", "/admin/variants/{version_id}", "One variant.", _variant, answer=Variant),
    Endpoint("GET", "/admin/champion", "A slot's champion (null when it has none).", _champion, answer=Variant | None, query=("slot",)),
    Endpoint("GET", "/admin/variants-by-label", "The newest active variant with a label.", _by_label, answer=Variant | None, query=("slot", "label")),
    Endpoint("GET", "/admin/variants-by-fingerprint", "The variant with a config fingerprint.", _by_fingerprint, answer=Variant | None, query=("slot", "fingerprint")),
    Endpoint("GET", "/admin/skills/{sha}", "A skill document by sha256.", _skill, answer=str),
    Endpoint("POST", "/admin/variants", "Register a resolved variant (idempotent).", _register, NewVariant, Registration),
    Endpoint("POST", "/admin/promote", "Promote on evidence (or by force, with a reason).", _promote, PromoteBody, Move),
    Endpoint("POST", "/admin/rollback", "Move the champion back one promotion.", _rollback, RollbackBody, Move),
    Endpoint("POST", "/admin/retire", "Retire a challenger.", _retire, RetireBody, Move),
    Endpoint("POST", "/admin/pause", "Pause one challenger's shadow calls, or all.", _pause, PauseBody, Pause),
    Endpoint("POST", "/admin/resume", "Resume one challenger, or all.", _resume, PauseBody, Pause | None),
    Endpoint("GET", "/admin/pauses", "Current pauses.", _pauses, answer=list[Pause]),
    Endpoint("GET", "/admin/history", "A slot's audit log.", _history, answer=list[Move], query=("slot",)),
    Endpoint("GET", "/admin/leaderboard", "A slot's leaderboard, freshly scored.", _leaderboard, answer=Leaderboard, query=("slot", "since", "where")),
    Endpoint("GET", "/admin/evidence", "How each challenger's evidence grew.", _evidence, answer=list[EvidencePoint], query=("slot",)),
    Endpoint("GET", "/admin/requests/{request_id}", "One request traced: every answer, its metrics, net value and pair (by request id or client request id).",
             _trace, answer=RequestTrace, query=("slot",)),
    Endpoint("GET", "/admin/requests", "A page of a slot's requests: disagreements, errors, or the worst paired net differences.",
             _requests, answer=RequestPage, query=tuple(name if name != "tags" else "tag" for name in RequestFilter.model_fields)),
    Endpoint("POST", "/admin/jobs", "Start long work (replay, report) as a daemon job.", _start_job, JobRequest, JobStatus),
    Endpoint("GET", "/admin/jobs/{job_id}", "A job's progress and result.", _job, answer=JobStatus),
)


def build_admin_app(api: Api) -> web.Application:
    app = web.Application(middlewares=[json_errors(_http_error), _auth(api.token)])
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, _route(api, endpoint))
    app.router.add_get("/metrics", lambda request: _metrics(api))
    app.router.add_get("/healthz", lambda request: _healthz())
    app.router.add_get("/openapi.json", lambda request: _openapi())
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


def _route(api: Api, endpoint: Endpoint):
    async def handle(request: web.Request) -> web.Response:
        try:
            body = await _body(request, endpoint.body) if endpoint.body else None
            answer = await endpoint.handler(api, request, body)
        except ShadowzooError as exc:
            status = next((code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind)), 400)
            return _error(status, ERROR_KIND[status], str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still answer JSON, and the log keeps the traceback
            log.exception("admin %s %s failed", request.method, request.path)
            return _error(500, "internal", f"{type(exc).__name__}: {exc}")
        return web.Response(body=TypeAdapter(endpoint.answer).dump_json(answer), content_type="application/json")

    return handle


async def _body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    return validated(model, await request.read(), "body")


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise ConfigError(f"query parameter {name!r} is required")
    return value


def _http_error(status: int, reason: str) -> web.Response:
    """aiohttp's own errors (unknown path, wrong method) in the admin API's error shape."""
    return _error(status, ERROR_KIND.get(status, "http_error"), reason)


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


async def _metrics(api: Api) -> web.Response:
    return web.Response(body=generate_latest(api.metrics_registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz() -> web.Response:
    return web.json_response({"status": "ok"})


async def _openapi() -> web.Response:
    return web.Response(text=json.dumps(openapi_document()), content_type="application/json")


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the admin API, generated from the endpoint table.

    Every model lands once under `components/schemas`, and every status an endpoint can
    answer is documented.
    """
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        answer = component_schema(TypeAdapter(endpoint.answer).json_schema(mode="serialization", ref_template=SCHEMA_REF), schemas)
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "security": [{"bearer": []}],
            "parameters": [{"name": name, "in": "query", "schema": {"type": "string"}} for name in endpoint.query]
            + [{"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
               for part in endpoint.path.split("/") if part.startswith("{")],
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": answer}}},
                          **{code: {"$ref": f"#/components/responses/{name}"} for code, (name, _) in ERROR_RESPONSES.items()}},
        }
        if endpoint.body is not None:
            body = component_schema(endpoint.body.model_json_schema(ref_template=SCHEMA_REF), schemas)
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
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
