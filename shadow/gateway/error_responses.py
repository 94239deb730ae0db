"""Errors in the OpenAI error shape, so any OpenAI SDK raises the right exception for them."""

from __future__ import annotations

import json

from aiohttp import web


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> bytes:
    """`{"error": {"message", "type", "param", "code"}}` as JSON bytes."""
    kind = "invalid_request_error" if status < 500 else "api_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An error with the given HTTP status and `error_body`."""
    return web.Response(status=status, body=error_body(status, message, code, param), content_type="application/json",
                        headers=headers)
