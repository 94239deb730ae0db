"""The registry's records as typed values: what the store returns and the APIs serialise."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VariantKind = Literal["chat", "python"]
VariantStatus = Literal["active", "retired"]
MoveAction = Literal["promote", "rollback", "retire"]


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
    created_at: datetime


class Move(BaseModel):
    """One row of a slot's audit log: an alias move (promote, rollback) or a retirement."""

    id: int
    slot: str
    from_version: str | None
    to_version: str | None
    action: MoveAction
    actor: str
    reason: str | None
    evidence: dict[str, Any] | None
    at: datetime


class Registration(BaseModel):
    """The answer to a registration: the variant, and whether this call created it."""

    variant: Variant
    created: bool
