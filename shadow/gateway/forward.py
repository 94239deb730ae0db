"""Forwarding one request to the champion's upstream and passing the answer back as it comes.

This is the champion path, so it does as little as it can: no retries (a retry would change
what the user sees), status and body passed through unchanged, SSE events written to the
client as they arrive. The only edit is for streams: the gateway asks the upstream for a
usage chunk so cost is known, and drops that chunk when the client did not ask for it.
It speaks plain HTTP with aiohttp rather than through the `openai` SDK because it must
relay bytes, not parse and re-serialise them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
from aiohttp import web

from registry import Route
from shadow.gateway.capture import PendingCapture
from shadow.gateway.error_responses import error_response

PASSED_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")
PASSED_PREFIX = "x-ratelimit-"


class Upstream:
    """One HTTP connection pool for all champion upstreams of a gateway worker."""

    def __init__(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self.session.close()

    async def forward(self, request: web.Request, route: Route, body: dict, capture: PendingCapture,
                      wants_usage: bool) -> web.StreamResponse:
        """Send `body` upstream and relay the answer; 502 when unreachable, 504 when too slow."""
        started = time.perf_counter()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {_api_key(route)}"}
        timeout = aiohttp.ClientTimeout(total=None if capture.stream else route.timeout_s,
                                        sock_connect=route.timeout_s, sock_read=route.timeout_s)
        try:
            async with self.session.post(f"{route.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, timeout=timeout) as upstream:
                if capture.stream and upstream.status == 200:
                    return await _relay_stream(request, upstream, capture, wants_usage)
                return await _relay_body(upstream, capture)
        except asyncio.TimeoutError:
            capture.status, capture.error = 504, f"upstream timed out after {route.timeout_s:g}s"
            return error_response(504, f"the upstream of slot {capture.slot!r} did not answer within "
                                  f"{route.timeout_s:g}s", code="upstream_timeout")
        except aiohttp.ClientError as exc:
            capture.status, capture.error = 502, f"upstream unreachable: {exc}"
            return error_response(502, f"the upstream of slot {capture.slot!r} is unreachable: "
                                  f"{type(exc).__name__}", code="upstream_unreachable")
        finally:
            capture.latency_ms = (time.perf_counter() - started) * 1000


def _api_key(route: Route) -> str:
    """The provider's key from its environment variable (a placeholder when it is unset)."""
    return (os.environ.get(route.api_key_env) if route.api_key_env else None) or "shadowzoo-no-key"


def _passed_headers(upstream: aiohttp.ClientResponse, capture: PendingCapture) -> dict[str, str]:
    headers = {k: v for k, v in upstream.headers.items()
               if k.lower() in PASSED_HEADERS or k.lower().startswith(PASSED_PREFIX)}
    headers["x-shadowzoo-request-id"] = capture.request_id
    headers["x-shadowzoo-version"] = capture.champion_version or ""
    return headers


async def _relay_body(upstream: aiohttp.ClientResponse, capture: PendingCapture) -> web.Response:
    body = await upstream.read()
    capture.status, capture.body = upstream.status, body
    if upstream.status >= 400:
        capture.error = f"upstream returned {upstream.status}"
    return web.Response(status=upstream.status, body=body, headers=_passed_headers(upstream, capture),
                        content_type=upstream.content_type or "application/json")


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse, capture: PendingCapture,
                        wants_usage: bool) -> web.StreamResponse:
    """Write SSE events to the client one by one; on a client disconnect, keep what was sent.

    The exchange is complete once the final usage chunk or `data: [DONE]` was relayed: the
    stream ends there, whether or not the upstream (or a proxy before it) holds its body
    open, and a client that leaves after it has its whole answer.
    """
    response = web.StreamResponse(status=200, headers=_passed_headers(upstream, capture))
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    capture.status = 200
    await response.prepare(request)
    event = bytearray()
    complete = False
    try:
        async for line in upstream.content:
            event += line
            if line not in (b"\n", b"\r\n"):
                continue
            chunk, event = bytes(event), bytearray()
            capture.events.append(chunk)
            usage_only = _is_usage_only(chunk)
            if wants_usage or not usage_only:
                await response.write(chunk)
            complete = complete or usage_only or _is_done(chunk)
            if _is_done(chunk):
                break
        if event:
            capture.events.append(bytes(event))
            await response.write(bytes(event))
        await response.write_eof()
    except ConnectionResetError as exc:
        client_gone = request.transport is None or request.transport.is_closing()
        _broken(capture, complete, "client disconnected before the stream ended" if client_gone
                else f"upstream stream broke: {exc}")
    except asyncio.CancelledError:
        _broken(capture, complete, "client disconnected before the stream ended")
        raise
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        _broken(capture, complete, f"upstream stream broke: {type(exc).__name__}")
    return response


def _broken(capture: PendingCapture, complete: bool, error: str) -> None:
    """Record a stream that ended abnormally, unless the answer was already complete."""
    if not complete:
        capture.partial, capture.error = True, error


def _is_done(event: bytes) -> bool:
    """The `data: [DONE]` event that ends an OpenAI stream."""
    return any(line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in event.splitlines())


def _is_usage_only(event: bytes) -> bool:
    """The extra final chunk that carries usage and no choices."""
    if b'"choices":[]' not in event and b'"choices": []' not in event:
        return False
    try:
        payload = json.loads(event.split(b"data:", 1)[1])
    except (IndexError, ValueError):
        return False
    return payload.get("choices") == [] and payload.get("usage") is not None
