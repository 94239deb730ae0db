"""The roles a `serve` process takes on (`serve --role`): which of shadowzoo's parts run here.

  gateway  the gateway workers (and, on `backend: distributed`, the host's route follower and
           spool shipper)
  ingest   spool segments into the database (distributed: segments shared by leases)
  runner   the shadow runner
  scorer   scoring, the post-promotion watch, retention, rotation (distributed: each led by
           one process per slot, elected in PostgreSQL)
  admin    the admin API, console and /metrics; no jobs

Every role but `gateway` runs in the daemon. On the embedded backend one DuckDB file has
one owner, so only the splits `shadowzoo gateway` and `shadowzoo daemon` already make are
allowed: everything, the gateway alone, or the daemon's roles together.
"""

from __future__ import annotations

from collections.abc import Iterable

import typer

GATEWAY, INGEST, RUNNER, SCORER, ADMIN = "gateway", "ingest", "runner", "scorer", "admin"
ROLES = (GATEWAY, INGEST, RUNNER, SCORER, ADMIN)
DAEMON_ROLES = frozenset({INGEST, RUNNER, SCORER, ADMIN})
ALL_ROLES = frozenset(ROLES)
EMBEDDED_SPLITS = (ALL_ROLES, frozenset({GATEWAY}), DAEMON_ROLES)


def parse_roles(values: Iterable[str] | None) -> frozenset[str]:
    """The roles named by `--role` (repeated, comma-separated, or both); all of them when none is given."""
    named = [part.strip() for value in values or () for part in value.split(",") if part.strip()]
    unknown = sorted({name for name in named if name not in ROLES})
    if unknown:
        raise typer.BadParameter(f"unknown role {', '.join(map(repr, unknown))}: choose from {', '.join(ROLES)}",
                                 param_hint="--role")
    return frozenset(named) or ALL_ROLES


def check_backend(roles: frozenset[str], backend: str) -> None:
    """Refuse, on the embedded backend, a split that would give the one DuckDB file two owners."""
    if backend == "embedded" and roles not in EMBEDDED_SPLITS:
        raise typer.BadParameter(
            f"{describe(roles)} alone needs backend: distributed; on the embedded backend one process owns the "
            f"database, so run every role, the gateway alone, or {describe(DAEMON_ROLES)} together",
            param_hint="--role")


def describe(roles: Iterable[str]) -> str:
    """The roles in their canonical order, comma-separated (as `status` shows them)."""
    return ",".join(role for role in ROLES if role in set(roles))
