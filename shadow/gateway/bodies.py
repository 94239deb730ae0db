"""The bodies the gateway's own endpoints take, checked by the handlers and described in `/openapi.json`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shadow.exchange import Exchange, Id, one_of_given

CLIENT_ID_HEADER = "x-shadowzoo-request-id"
"""The request header that carries the client's own id of a chat request."""


class CaptureBody(Exchange):
    """Observer mode: an application that calls its model itself reports one exchange."""

    slot: Id


class FeedbackBody(BaseModel):
    """An outcome for a request, by shadowzoo's request id or the client's own id (the handler
    needs its `value`, or `label`)."""

    model_config = ConfigDict(json_schema_extra=one_of_given("value", "label"))

    request_id: Id
    kind: str = Field("label", pattern="^(label|reaction)$")
    value: Any = None
    label: Any = None
