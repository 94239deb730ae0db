"""The OpenAI-compatible gateway: serves each slot's champion and captures its traffic.

Clients point any OpenAI SDK here and name a slot as the `model`. The handler resolves the
slot in `routes.json`, applies the champion with the shared `apply_variant`, relays the
upstream's answer unchanged, and appends a capture to memory. It waits on nothing but the
champion's upstream: no database, no challenger, no daemon.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from registry.errors import first_problem
from shadow.apply import apply_variant
from shadow.exchange import messages_problem, parse_json
from shadow.gateway.bodies import CLIENT_ID_HEADER, CaptureBody
from shadow.gateway.capture import PendingCapture, SpoolBuffer
from shadow.gateway.connection import read_body
from shadow.gateway.error_responses import error_response
from shadow.gateway.forward import Upstream
from shadow.gateway.prometheus_metrics import exposition, gateway_metrics
from shadow.gateway.openapi import openapi_document
from shadow.gateway.routing import RouteWatcher
from shadow.outcome import Outcome
from shadow.spool_records import OutcomeRecord, TrafficRecord, new_request_id
from shadow.tags import TAGS_HEADER, parse_tags_header
from shadow.webcommon import bearer_token, json_errors

log = logging.getLogger("shadowzoo.gateway")


@dataclass
class GatewayState:
    """Everything a gateway worker holds: routes, capture buffer, upstream pool, client keys."""

    routes: RouteWatcher
    captures: SpoolBuffer
    upstream: Upstream | None
    client_keys: tuple[str, ...]
    max_body_bytes: int
    body_timeout_s: float


STATE = web.AppKey("state", GatewayState)


def build_app(state: GatewayState) -> web.Application:
    """The aiohttp application; background tasks start and stop with it."""
    app = web.Application(client_max_size=state.max_body_bytes, middlewares=[json_errors(_http_error), _auth])
    app[STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/capture", capture)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.cleanup_ctx.append(_background)
    return app


async def _background(app: web.Application):
    """Start the route watcher, the capture flusher and the upstream pool; flush on shutdown."""
    state = app[STATE]
    state.upstream = Upstream()
    tasks = [asyncio.create_task(state.routes.watch()), asyncio.create_task(state.captures.run())]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await state.upstream.close()


def _http_error(status: int, reason: str) -> web.Response:
    """Every error leaves as a JSON body in the OpenAI shape, never as HTML or a traceback."""
    return error_response(status, reason, code=reason.lower().replace(" ", "_"))


@web.middleware
async def _auth(request: web.Request, handler):
    """/v1/* needs one of the configured client keys, when any are configured."""
    keys = request.app[STATE].client_keys
    if keys and request.path.startswith("/v1/"):
        token = bearer_token(request.headers.get("Authorization", ""))
        if not any(hmac.compare_digest(token.encode(), key.encode()) for key in keys):
            return error_response(401, "missing or wrong API key for this gateway", code="invalid_api_key")
    return await handler(request)


async def _json_body(request: web.Request) -> Any:
    """The parsed body, or an HTTP error response to return instead."""
    state = request.app[STATE]
    raw = await read_body(request, state.max_body_bytes, state.body_timeout_s)
    if isinstance(raw, web.Response):
        return raw
    try:
        return parse_json(raw)
    except ValueError as exc:
        return error_response(400, f"request body is not valid JSON: {exc}", code="invalid_json")


def _check_chat(payload: Any) -> str | None:
    """What is wrong with a chat request, or None."""
    if not isinstance(payload, dict):
        return "the request body must be a JSON object"
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        return "'model' must name a slot (a non-empty string)"
    return messages_problem(payload)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Serve the slot's champion; capture the exchange whatever happens."""
    received_at, started = time.time(), time.perf_counter()
    payload = await _json_body(request)
    if isinstance(payload, web.Response):
        return payload
    problem = _check_chat(payload)
    if problem:
        param = "model" if "'model'" in problem else "messages"
        return error_response(400, problem, code="invalid_request", param=param)
    try:
        tags = parse_tags_header(request.headers.get(TAGS_HEADER, ""))
    except ValueError as exc:
        return error_response(400, f"header {TAGS_HEADER}: {exc}", code="invalid_request", param=TAGS_HEADER)
    state = request.app[STATE]
    slot = payload["model"]
    route = state.routes.route(slot)
    if route is None:
        gateway_metrics().requests.labels("unknown", "404").inc()
        return _unknown_slot(state, slot, "model")
    if route.error:
        gateway_metrics().requests.labels(slot, "503").inc()
        return error_response(503, f"slot {slot!r} cannot be served: {route.error}", code="slot_misconfigured")
    stream = payload.get("stream") is True
    wants_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
    body = apply_variant(route.model, route.params, route.skill, payload)
    if stream:
        body["stream_options"] = {**(payload.get("stream_options") or {}), "include_usage": True}
    pending = PendingCapture(
        request_id=new_request_id(), client_request_id=request.headers.get(CLIENT_ID_HEADER), slot=slot,
        received_at=received_at, request=payload, champion_version=route.version_id, stream=stream,
        request_bytes=request.content.total_bytes, tags=tags or None,
    )
    try:
        return await state.upstream.forward(request, route, body, pending, wants_usage)
    finally:
        _account(state, pending, started)


def _unknown_slot(state: GatewayState, slot: str, param: str) -> web.Response:
    known = ", ".join(state.routes.slots()) or "none yet"
    return error_response(404, f"no slot {slot!r} is served here (slots: {known})", code="model_not_found", param=param)


def _account(state: GatewayState, pending: PendingCapture, started: float) -> None:
    """Keep the capture (or count it dropped) and the request's series."""
    metrics = gateway_metrics()
    if not state.captures.add(pending):
        metrics.dropped.labels(pending.slot, "buffer_full").inc()
    metrics.requests.labels(pending.slot, str(pending.status or 499)).inc()
    upstream_s = (pending.latency_ms or 0.0) / 1000
    metrics.overhead.labels(pending.slot).observe(max(0.0, time.perf_counter() - started - upstream_s))


async def list_models(request: web.Request) -> web.Response:
    """The served slots, in the shape of OpenAI's model list."""
    state = request.app[STATE]
    data = [{"id": slot, "object": "model", "created": 0, "owned_by": "shadowzoo"} for slot in state.routes.slots()]
    return web.json_response({"object": "list", "data": data})


async def capture(request: web.Request) -> web.Response:
    """Store an exchange the gateway did not serve, exactly like one it did."""
    body = await _validated(request, CaptureBody)
    if isinstance(body, web.Response):
        return body
    state = request.app[STATE]
    if state.routes.route(body.slot) is None:
        return _unknown_slot(state, body.slot, "slot")
    record = body.record(body.slot, body.request_id or new_request_id(), datetime.now(UTC), "capture")
    return _accepted(request, record, {"request_id": record.request_id})


async def feedback(request: web.Request) -> web.Response:
    """Store an outcome; one for a request not seen yet is kept and joined when it arrives."""
    body = await _validated(request, Outcome)
    if isinstance(body, web.Response):
        return body
    return _accepted(request, body.record(datetime.now(UTC)), {"request_id": body.key})


async def _validated(request: web.Request, model: type[BaseModel]) -> BaseModel | web.Response:
    payload = await _json_body(request)
    if isinstance(payload, web.Response):
        return payload
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problem = first_problem(exc)
        return error_response(400, problem.text("(body)"), code="invalid_request", param=problem.path or "(body)")


def _accepted(request: web.Request, record: TrafficRecord | OutcomeRecord, answer: dict[str, Any]) -> web.Response:
    """202 once the record's line is in the capture buffer; 400 for one that could never be written."""
    captures = request.app[STATE].captures
    try:
        line = captures.line(record)
    except PydanticSerializationError:
        return error_response(400, "the body holds text that is not valid Unicode (a lone surrogate escape)",
                              code="invalid_request")
    if not captures.add(line):
        return error_response(503, "capture buffer is full; retry shortly", code="capture_buffer_full")
    return web.json_response({"status": "accepted", **answer}, status=202)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once a route table is loaded; says which (its control-plane version on `backend: distributed`)."""
    state = request.app[STATE]
    table = state.routes.table
    if table is None:
        return web.json_response({"status": "not ready", "reason": "no routes.json loaded yet"}, status=503)
    return web.json_response({"status": "ready", "slots": state.routes.slots(), "routes_version": table.version,
                              "routes_generated_at": table.generated_at.isoformat()})
