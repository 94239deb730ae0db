"""The registry: shadowzoo's DuckDB store of slots, variants, skills, champions and audit log.

It also holds what every other package shares: the workspace config models, the errors a
user can act on, and the `routes.json` format the gateway serves from.
"""

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
from registry.db import Database, utc_day_start, utcnow
from registry.errors import ConfigError, DatabaseError, NotFound, Refused, ShadowzooError
from registry.identity import canonical_json, fingerprint, sha256_text, version_id
from registry.records import Move, NewVariant, Registration, Variant
from registry.routes import Route, RouteTable, read_routes
from registry.protocols import VariantStore
from registry.store import Registry
from registry.workspace import Workspace, load_workspace

__all__ = [
    "CONFIG_FILE",
    "ChatParams",
    "ConfigError",
    "Database",
    "DatabaseError",
    "Move",
    "NewVariant",
    "NotFound",
    "ProviderConfig",
    "RedactionRule",
    "Refused",
    "Registration",
    "Registry",
    "Route",
    "RouteTable",
    "ShadowzooError",
    "SkillSource",
    "SlotConfig",
    "Variant",
    "VariantStore",
    "Workspace",
    "WorkspaceConfig",
    "canonical_json",
    "check_name",
    "utc_day_start",
    "utcnow",
    "fingerprint",
    "load_workspace",
    "read_routes",
    "sha256_text",
    "version_id",
]
