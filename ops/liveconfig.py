"""Live configuration: a running daemon follows edits of `shadowzoo.yaml` without a restart.

The daemon looks at the file every `POLL_S` (its mtime and size, then the sha256 of its
bytes) and on SIGHUP. A new valid file is applied: routes, providers and slots take effect
at once (the daemon rewrites `routes.json`, which the gateways follow; the shadow runner's
next calls use the new provider settings; changed scoring settings start a new evaluation
period at the next score, as after a restart). Some settings are held by processes or
sockets opened at start (ports, state directory, the gateways' own settings, ...): those
keep their running values, and `status` lists them as needing a restart, with the running
and the edited value. A file that does not load is refused as a whole: the running config
stays, and the error (file, line, key, what was expected) is logged once per distinct
content and shown in `status` until the file is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from registry import ShadowzooError, Workspace, load_workspace
from registry.workspace_config import WorkspaceConfig

log = logging.getLogger("shadowzoo.daemon")
POLL_S = 1.0
RESTART_ONLY = (
    "state_dir", "backend", "distributed", "python_path", "gateway.*", "zoo.schedule",
    "daemon.admin_host", "daemon.admin_port", "daemon.admin_token_env", "daemon.duckdb_threads",
    "daemon.duckdb_memory_limit", "daemon.ingest_interval_s", "daemon.score_interval_s", "daemon.watch_interval_s",
)
"""Settings read once by a process at its start (`*`: every key there). Gateways read all of `gateway` at
their start (redaction rules reach them in `routes.json`); the daemon binds its port and schedules its jobs
once."""


@dataclass(frozen=True)
class Pending:
    """An edited setting that takes effect only after a restart."""

    key: str
    running: str
    edited: str


@dataclass
class Reload:
    """A new config to apply: the file's, with restart-only settings kept at their running values."""

    config: WorkspaceConfig
    changed: list[str]
    """Top-level sections whose effective value changed."""


@dataclass
class LiveConfig:
    """The daemon's view of `shadowzoo.yaml`: what runs, what was refused, what waits for a restart."""

    workspace: Workspace
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    error: str | None = None
    pending: list[Pending] = field(default_factory=list)
    _stat: tuple[int, int] | None = None
    _digest: str | None = None

    def __post_init__(self) -> None:
        self._stat, self._digest = self._stat_now(), self._digest_now()

    def check(self, force: bool = False) -> Reload | None:
        """The config to apply when the file changed (or `force`: SIGHUP) and loads; None otherwise."""
        stat = self._stat_now()
        if not force and stat == self._stat:
            return None
        digest = self._digest_now()
        if not force and digest == self._digest:  # touched, not changed
            self._stat = stat
            return None
        self._stat, self._digest = stat, digest
        try:
            edited = load_workspace(self.workspace.root).config
        except ShadowzooError as exc:
            if self.error != str(exc):
                log.error("shadowzoo.yaml refused, the running config stays: %s", exc)
            self.error = str(exc)
            return None
        self.error = None
        running = self.workspace.config
        merged, self.pending = _keep_restart_only(running, edited)
        changed = [k for k in WorkspaceConfig.model_fields if getattr(merged, k) != getattr(running, k)]
        self.loaded_at = datetime.now(UTC).isoformat()
        log.info(json.dumps({"config": "reloaded", "changed": changed,
                             "needs_restart": [p.key for p in self.pending]}))
        return Reload(merged, changed)

    def status(self) -> dict[str, Any]:
        """What `status` shows about the config."""
        return {"path": str(self.workspace.config_path), "loaded_at": self.loaded_at, "error": self.error,
                "needs_restart": [vars(p) for p in self.pending]}

    def _stat_now(self) -> tuple[int, int] | None:
        try:
            stat = self.workspace.config_path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _digest_now(self) -> str | None:
        try:
            return hashlib.sha256(self.workspace.config_path.read_bytes()).hexdigest()
        except OSError:
            return None


def _keep_restart_only(running: WorkspaceConfig, edited: WorkspaceConfig) -> tuple[WorkspaceConfig, list[Pending]]:
    """`edited` with every restart-only setting at its running value, and the list of those that differ."""
    old = running.model_dump(mode="json", by_alias=True)
    new = edited.model_dump(mode="json", by_alias=True)
    pending = []
    for path in _expand(RESTART_ONLY, new):
        was, now = _get(old, path), _get(new, path)
        if was != now:
            pending.append(Pending(".".join(path), _shown(was), _shown(now)))
            _set(new, path, was)
    return WorkspaceConfig.model_validate(new), pending


def _expand(patterns: tuple[str, ...], tree: dict[str, Any]) -> list[tuple[str, ...]]:
    """Dotted patterns as key paths; a `*` stands for every key found there in `tree` (the edited
    config: a removed slot needs nothing)."""
    found: list[tuple[str, ...]] = []
    for pattern in patterns:
        paths: list[tuple[str, ...]] = [()]
        for part in pattern.split("."):
            paths = [(*path, key) for path in paths for key in (sorted(_get(tree, path) or {}) if part == "*" else [part])]
        found += paths
    return found


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set (None: remove, back to its default) the value at a path of `tree`."""
    for key in path[:-1]:
        tree = tree[key]
    if value is None:
        tree.pop(path[-1], None)
    else:
        tree[path[-1]] = value


def _shown(value: Any) -> str:
    return "(unset)" if value is None else value if isinstance(value, str) else json.dumps(value)
