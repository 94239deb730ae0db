"""The bodies the gateway's own endpoints take, checked by the handlers and described in `/openapi.json`."""

from __future__ import annotations

from shadow.exchange import Exchange, Id

CLIENT_ID_HEADER = "x-shadowzoo-request-id"
"""The request header that carries the client's own id of a chat request."""


class CaptureBody(Exchange):
    """Observer mode: an application that calls its model itself reports one exchange."""

    slot: Id
