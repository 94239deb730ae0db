"""The registry's records as typed values: what the store returns and the APIs serialise."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema



def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _with_offset(moment: datetime) -> str:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


UtcDatetime = Annotated[
    datetime, AfterValidator(_naive_utc), PlainSerializer(_with_offset, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A UTC moment: naive in Python, as the database stores it; RFC 3339 with its offset in JSON."""

VariantKind = Literal["chat", "python"]
VariantStatus = Literal["active", "retired"]
MoveAction = Literal["promote", "rollback", "retire", "reactivate"]


class NewVariant(BaseModel):
    """A resolved variant about to be registered: everything but its identity."""

    model_config = ConfigDict(extra="forbid")

    slot: str
    label: str
    kind: VariantKind
    config: dict[str, Any] = Field(description="Resolved configuration; `skill_sha` stands for the skill text.")
    skill_text: str | None = None
    parent: str | None = None
    source: str = Field("spec", description="Where it came from: spec, api, train.")
    spec_path: str | None = None
    meta: dict[str, Any] | None = Field(None, description="Free-form provenance, e.g. a training summary.")


class Variant(BaseModel):
    """A registered, immutable variant (only its status can change)."""

    version_id: str
    slot: str
    label: str
    kind: VariantKind
    config: dict[str, Any]
    skill_sha: str | None
    fingerprint: str
    parent: str | None
    status: VariantStatus
    source: str
    spec_path: str | None
    meta: dict[str, Any] | None
    created_at: UtcDatetime


class Move(BaseModel):
    """One row of a slot's audit log: an alias move (promote, rollback), a retirement or a reactivation."""

    id: int
    slot: str
    from_version: str | None
    to_version: str | None
    action: MoveAction
    actor: str
    reason: str | None
    evidence: dict[str, Any] | None
    at: UtcDatetime


class Registration(BaseModel):
    """The answer to a registration: the variant, and whether this call created it."""

    variant: Variant
    created: bool
