"""Errors in the OpenAI error shape, so any OpenAI SDK raises the right exception for them."""

from __future__ import annotations

import json

from aiohttp import web


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """`{"error": {"message", "type", "param", "code"}}` with the given HTTP status."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers=headers)
