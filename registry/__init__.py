"""The registry: shadowzoo's DuckDB store of slots, variants, skills, champions and audit log.

It also holds what every other package shares: the workspace config models, the errors a
user can act on, and the `routes.json` format the gateway serves from.

Names are imported on first use (PEP 562), so a command that needs only the errors or the
config does not load DuckDB; `shadowzoo --help` stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "registry.workspace_config": (
        "CONFIG_FILE", "ChatParams", "ProviderConfig", "RedactionRule", "SkillSource", "SlotConfig",
        "WorkspaceConfig", "check_name",
    ),
    "registry.workspace": ("Workspace", "load_workspace"),
    "registry.db": ("Database", "utc_day_start", "utcnow"),
    "registry.errors": ("ConfigError", "DatabaseError", "NotFound", "Refused", "ShadowzooError"),
    "registry.identity": ("canonical_json", "fingerprint", "sha256_text", "version_id"),
    "registry.records": ("Move", "NewVariant", "Registration", "Variant"),
    "registry.routes": ("Route", "RouteTable", "read_routes"),
    "registry.protocols": ("VariantStore",),
    "registry.store": ("Registry",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` the first time it is asked for."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from registry.db import Database, utc_day_start, utcnow
    from registry.errors import ConfigError, DatabaseError, NotFound, Refused, ShadowzooError
    from registry.identity import canonical_json, fingerprint, sha256_text, version_id
    from registry.protocols import VariantStore
    from registry.records import Move, NewVariant, Registration, Variant
    from registry.routes import Route, RouteTable, read_routes
    from registry.store import Registry
    from registry.workspace import Workspace, load_workspace
    from registry.workspace_config import (
        CONFIG_FILE,
        ChatParams,
        ProviderConfig,
        RedactionRule,
        SkillSource,
        SlotConfig,
        WorkspaceConfig,
        check_name,
    )
