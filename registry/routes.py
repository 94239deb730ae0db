"""`routes.json`: the champion table the gateway serves from.

Gateway workers never open the database; this file is everything they need to answer a
slot: the champion's version, its resolved configuration with the skill text, and where
its upstream is. The registry rewrites it atomically on every alias change, and the
daemon rewrites it at start. On `backend: distributed` the registry also publishes it to the
control plane, and each gateway host follows it there (`registry.published_routes`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from registry.atomic import write_atomic
from registry.workspace import Workspace
from registry.workspace_config import RedactionRule
from registry.records import Variant

ROUTES_FORMAT = 1


class Route(BaseModel):
    """How to answer one slot: its champion and that champion's upstream."""

    version_id: str
    model: str | None = Field(description="Upstream model name.")
    params: dict[str, Any] = Field(default_factory=dict, description="Sampling parameters the variant sets.")
    skill: str | None = Field(None, description="System prompt placed before the client's messages.")
    provider: str | None = None
    base_url: str | None = Field(None, description="Provider base URL; None when the provider is not configured.")
    api_key_env: str | None = None
    timeout_s: float = 60.0
    error: str | None = Field(None, description="Why this slot cannot be served, when it cannot.")


class RouteTable(BaseModel):
    """The whole file."""

    format: int = ROUTES_FORMAT
    generated_at: datetime
    version: int | None = Field(
        None, description="Its version in the control plane (backend: distributed), which gateway hosts follow; "
                          "None when the registry wrote it for this host only (backend: embedded).")
    slots: dict[str, Route]
    redact: dict[str, list[RedactionRule]] | None = Field(
        None, description="Every configured slot's redaction rules: the gateways apply them to captures, so an edit "
                          "reaches them without a restart (absent from files of older versions: the gateways then "
                          "keep the rules they read at start).")


def build_routes(workspace: Workspace, champions: list[Variant], skills: dict[str, str]) -> RouteTable:
    """The table for these champions, with provider details from the workspace config.

    A slot removed from the config is left out, champion or not: the gateway answers it
    404 (chat and observer captures alike) instead of collecting traffic nobody scores.
    """
    return RouteTable(
        generated_at=datetime.now(UTC),
        slots={variant.slot: _route(workspace, variant, skills) for variant in champions
               if variant.slot in workspace.config.slots},
        redact={slot: config.redact for slot, config in workspace.config.slots.items()},
    )


def _route(workspace: Workspace, variant: Variant, skills: dict[str, str]) -> Route:
    config = variant.config
    provider_name = config.get("provider")
    provider = workspace.config.providers.get(provider_name) if provider_name else None
    slot = workspace.config.slots.get(variant.slot)
    route = Route(
        version_id=variant.version_id,
        model=config.get("model"),
        params=config.get("params", {}),
        skill=skills.get(variant.skill_sha) if variant.skill_sha else None,
        provider=provider_name,
    )
    if provider is None:
        route.error = f"provider {provider_name!r} of {variant.version_id} is not configured in {workspace.config_path}"
        return route
    route.base_url = provider.base_url
    route.api_key_env = provider.api_key_env
    route.timeout_s = (slot.timeout_s if slot and slot.timeout_s else None) or provider.timeout_s
    return route


def write_routes(path: Path, table: RouteTable) -> None:
    """Replace the file atomically, so a reader never sees half a table."""
    write_atomic(path, table.model_dump_json(indent=2).encode("utf-8"))


def read_routes(path: Path) -> RouteTable:
    """Parse the file; raises ValueError or OSError when it is missing or corrupt."""
    return RouteTable.model_validate(json.loads(path.read_bytes()))
