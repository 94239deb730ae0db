"""One outcome as an application reports it: the body of the gateway's `/v1/feedback` and a
line of an outcomes file (`shadowzoo ingest --outcomes`), checked by one model.

An outcome is a label (ground truth about the request) or a reaction (to the champion's
answer), keyed by shadowzoo's request id or the client's own id. Both edges accept the same
keys with the same rules, so an outcome that one takes the other takes too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shadow.exchange import Id, one_of_given
from shadow.spool_records import OutcomeRecord


class Outcome(BaseModel):
    """A label, or a reaction, for one request."""

    model_config = ConfigDict(json_schema_extra={"allOf": [one_of_given("request_id", "client_request_id"),
                                                           one_of_given("label", "value")]})

    request_id: Id | None = Field(None, description="shadowzoo's request id, or the client's own id.")
    client_request_id: Id | None = Field(None, description="The client's own id (used when request_id is not given).")
    kind: Literal["label", "reaction"] = Field("label", description="`label` (ground truth) or `reaction`.")
    value: Any = Field(None, description="The outcome, any JSON but null (with `kind`).")
    label: Any = Field(None, description="Short for `kind: label` with this value.")

    @model_validator(mode="after")
    def _one_key_one_value(self) -> "Outcome":
        if self.request_id is None and self.client_request_id is None:
            raise ValueError("give 'request_id' or 'client_request_id'")
        if (self.label is None) == (self.value is None):
            raise ValueError("give either 'label', or 'kind' and 'value' (not null)")
        if self.label is not None and self.kind != "label":
            raise ValueError("'label' is a label: give 'value' for a reaction")
        return self

    @property
    def key(self) -> str:
        """The id the outcome is joined on: `request_id` wins over `client_request_id`."""
        return self.request_id or self.client_request_id or ""

    def record(self, received_at: datetime) -> OutcomeRecord:
        """The spool record of this outcome, received at `received_at`."""
        value = self.label if self.label is not None else self.value
        return OutcomeRecord(request_key=self.key, kind=self.kind, value=value, received_at=received_at)


class LoggedOutcome(Outcome):
    """A line of an outcomes file: an outcome that may say when it was received (a log is history)."""

    received_at: datetime | None = None
