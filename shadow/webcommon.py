"""What the gateway and the admin API share at the HTTP level: bearer tokens, JSON errors, OpenAPI schemas."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("shadowzoo.http")


def bearer_token(header: str) -> str:
    """The token after a `Bearer` scheme of any case; empty when the header has another scheme.

    The auth scheme is case-insensitive (RFC 9110, section 11.1): `bearer x` and `BEARER x`
    carry the same token as `Bearer x`.
    """
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def json_errors(respond: Callable[[int, str], web.Response]):
    """A middleware answering aiohttp's own errors (404, 405, 413, …) and any unexpected failure
    (a 500, its traceback logged) with `respond(status, reason)`, so they leave as JSON like
    every other error; a 405 keeps its `Allow` header."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = respond(exc.status, exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except Exception:  # noqa: BLE001 - a bug must still answer in the shape clients parse
            log.exception("%s %s failed", request.method, request.path)
            return respond(500, "Internal Server Error")

    return middleware


SCHEMA_REF_PREFIX = "#/components/schemas/"
SCHEMA_REF = SCHEMA_REF_PREFIX + "{model}"
"""The `ref_template` for pydantic's JSON schemas that go into an OpenAPI document."""


def component_schema(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """`schema` with its `$defs` moved into the document's components (or a `$ref` to itself there).

    pydantic's `$defs` would dangle at an OpenAPI document's root, so every model lands once
    under `components/schemas`; build `schema` with `ref_template=SCHEMA_REF`.
    """
    schemas.update(schema.pop("$defs", {}))
    title = schema.get("title")
    if schema.get("type") == "object" and title and "properties" in schema:
        schemas[title] = schema
        return {"$ref": f"{SCHEMA_REF_PREFIX}{title}"}
    return schema
