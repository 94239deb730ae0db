"""What the live path captures, as it travels through the spool into DuckDB.

A spool segment is JSON Lines; each line is one record with a `type`: `traffic` (a request
exactly as the client sent it, with the champion's answer) or `outcome` (something learned
about a request later: a label, or a reaction to the answer the user saw).
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from registry import canonical_json, sha256_text
from shadow.toolcalls import ToolCall

STATUS_MIN, STATUS_MAX = 100, 999
"""An HTTP status has three digits; a stored status always fits the database's INTEGER."""


def new_request_id() -> str:
    """shadowzoo's own request id: time-ordered (ms) and random, e.g. `szr_0195f3c2a1b04e5f9d2c7a1b`."""
    return f"szr_{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


class TrafficRecord(BaseModel):
    """One captured request and the champion's answer to it."""

    type: Literal["traffic"] = "traffic"
    request_id: str
    client_request_id: str | None = None
    slot: str
    received_at: datetime
    request: dict[str, Any] = Field(description="The chat request as the client sent it (after redaction).")
    champion_version: str | None = None
    status: int | None = Field(None, ge=STATUS_MIN, le=STATUS_MAX, description="HTTP status the client received.")
    output: str | None = Field(None, description="The assistant message content (assembled when streamed).")
    tool_calls: list[ToolCall] | None = Field(
        None, description="The answer's tool calls, in order (assembled when streamed); None when it made none."
    )
    usage: dict[str, Any] | None = None
    latency_ms: float | None = None
    stream: bool = False
    partial: bool = Field(False, description="The client went away before the answer was complete.")
    error: str | None = None
    source: Literal["gateway", "capture", "file"] = "gateway"
    tags: dict[str, str] | None = Field(
        None, description="The client's explicit tags (see `shadow.tags`); `user` and `metadata.*` tags are derived "
                          "from the request at ingest, not repeated here."
    )


class OutcomeRecord(BaseModel):
    """A label (ground truth about the request) or a reaction (to the champion's answer)."""

    type: Literal["outcome"] = "outcome"
    request_key: str = Field(description="shadowzoo's request id or the client's own id.")
    kind: Literal["label", "reaction"] = "label"
    value: Any
    received_at: datetime

    @property
    def outcome_id(self) -> str:
        """Same request, kind and value: the same outcome, however often it is sent."""
        return sha256_text(canonical_json([self.request_key, self.kind, self.value]))


SpoolRecord = TrafficRecord | OutcomeRecord
