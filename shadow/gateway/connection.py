"""Client connections: slow ones are timed out, malformed requests are answered in JSON.

aiohttp reads a request's headers before any handler runs and has no timeout for it, so a
client that sends half its headers and falls silent (slowloris) holds a connection for as
long as it likes. `GatewayProtocol` is aiohttp's connection with a deadline: a request's
headers must be complete `header_timeout_s` after the connection opened or, on a kept-alive
connection, after the request's first bytes; otherwise the client gets 408 and the
connection is closed. The body is read by the handler, through `read_body`, which gives up
(408, connection closed) once the body stops arriving for `body_timeout_s`. Requests aiohttp
cannot parse get a 4xx in the OpenAI error shape and one log line, not a text page and a
traceback.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web

from shadow.gateway.error_responses import error_body, error_response

log = logging.getLogger("shadowzoo.gateway")


class GatewayProtocol(web.RequestHandler):
    """One client connection: aiohttp's, plus the header deadline and JSON errors."""

    def __init__(self, manager: "GatewayServer", *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._in_request and self._header_timer is None:
            self._start_header_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def request_started(self) -> None:
        """The headers are in and a handler runs: the header clock stops."""
        self._in_request = True
        self._stop_header_clock()

    def request_finished(self) -> None:
        """The handler returned: bytes from now on begin the next request."""
        self._in_request = False

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        """Send the response; after a 408 close at once (aiohttp would wait for the rest of the body)."""
        answer = await super().finish_response(request, resp, start_time)
        if resp.status == HTTPStatus.REQUEST_TIMEOUT:
            self.force_close()
        return answer

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request aiohttp could not parse (or a failure outside the app): one line, a JSON error."""
        if status >= 500:
            log.error("%s %s failed outside the app", request.method, request.path, exc_info=exc)
            text = "internal error in the gateway (logged)"
        else:
            text = " ".join((message or str(exc or HTTPStatus(status).phrase)).split())[:300]
            log.warning("malformed request from %s answered %d: %s", request.remote, status, text)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started; the connection is dropped instead")
        response = error_response(status, text, code=HTTPStatus(status).phrase.lower().replace(" ", "_"))
        response.force_close()
        return response

    def _start_header_clock(self) -> None:
        self._header_timer = asyncio.get_running_loop().call_later(self.header_timeout_s, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        """The headers did not arrive in time: answer 408 and close."""
        self._header_timer = None
        if self._in_request or self.transport is None or self.transport.is_closing():
            return
        peer = self.transport.get_extra_info("peername")
        log.warning("connection from %s closed: request headers not complete within %gs",
                    peer[0] if peer else "?", self.header_timeout_s)
        body = error_body(408, f"request headers not complete within {self.header_timeout_s:g}s",
                          code="header_timeout")
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        self.force_close()


class GatewayServer(web.Server):
    """aiohttp's server whose connections are `GatewayProtocol`s that know when a handler runs."""

    def __init__(self, handler: Any, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._app_handler = handler
        self.request_handler = self._handle

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        protocol.request_started()
        try:
            return await self._app_handler(request)
        finally:
            protocol.request_finished()

    def __call__(self) -> GatewayProtocol:
        return GatewayProtocol(self, loop=asyncio.get_running_loop(), access_log=None,
                               header_timeout_s=self.header_timeout_s)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` serving its app through a `GatewayServer`."""

    def __init__(self, app: web.Application, *, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return GatewayServer(server.request_handler, request_factory=server.request_factory,
                             header_timeout_s=self.header_timeout_s)


async def read_body(request: web.Request, max_bytes: int, idle_s: float) -> bytes | web.Response:
    """The request body, or the error to answer instead: 413 past `max_bytes`, 408 (closing the
    connection) when no byte arrived for `idle_s`, 400 when the client left before sending it all."""
    if request.content_length is not None and request.content_length > max_bytes:
        return _too_large(max_bytes)
    body = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await request.content.readany()
        except TimeoutError:
            log.warning("request from %s answered 408: its body stopped arriving for %gs", request.remote, idle_s)
            return error_response(408, f"the request body stopped arriving for {idle_s:g}s", code="body_timeout")
        except ConnectionError:
            log.warning("request from %s abandoned: the client left before sending its whole body", request.remote)
            return error_response(400, "the connection closed before the whole body arrived", code="incomplete_body")
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            return _too_large(max_bytes)


def _too_large(max_bytes: int) -> web.Response:
    return error_response(413, f"request body is larger than {max_bytes} bytes", code="body_too_large")
