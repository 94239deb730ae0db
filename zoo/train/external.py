"""The external trainer hook: training done by the operator's own code, registered like ours.

`train: {entrypoint: "pkg.mod:fn", args: {...}}` calls `fn(base_config, **args)` with the
spec's resolved configuration in overlay form (provider, model, sampling keys, skill as
text). It returns the keys to change; only the keys a chat spec may override are allowed.
The result is registered as a challenger with `source="train"`, never as the champion.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from registry import ChatParams, ConfigError, NewVariant, ShadowzooError, Workspace, sha256_text
from registry.workspace_config import CHAT_PARAM_KEYS
from registry.entrypoints import load_entrypoint
from registry.errors import first_problem
from zoo.resolve import resolve_spec
from zoo.spec import SpecFile, Zoo
from zoo.train.train_config import ExternalTrainConfig
from zoo.train.outcome import Progress, Register, RunResult, trained_label

ALLOWED_KEYS = tuple(ChatParams.model_fields)


def run_external(spec_file: SpecFile, zoo: Zoo, workspace: Workspace, registry: Register,
                 config: ExternalTrainConfig, progress: Progress) -> RunResult:
    """Call the entrypoint, check its overrides, register the result."""
    spec = spec_file.spec
    where = f"{spec_file.path}: train.entrypoint {config.entrypoint}"
    resolved = resolve_spec(spec_file, zoo, workspace, registry.store)
    base = _overlay_form(resolved.config, resolved.skill_text)
    progress(f"{spec.name}: calling {config.entrypoint}")
    overrides = _call(config, base, where, workspace)
    merged = {**base, **_checked(overrides, where)}
    if merged["provider"] not in workspace.config.providers:
        raise ConfigError(f"{where}: returned provider {merged['provider']!r}, which is not configured")
    parent = registry.store.variant_with_fingerprint(spec.slot, resolved.fingerprint)
    new = NewVariant(
        slot=spec.slot, label=trained_label(spec.name), kind="chat",
        config={"kind": "chat", "provider": merged["provider"], "model": merged["model"],
                "params": {k: merged[k] for k in CHAT_PARAM_KEYS if k in merged}},
        skill_text=merged.get("skill"), parent=parent.version_id if parent else None, source="train",
        spec_path=str(spec_file.path),
        meta={"optimizer": "external", "entrypoint": config.entrypoint, "args": config.args,
              "changed": sorted(overrides), "skill_sha": sha256_text(merged["skill"]) if merged.get("skill") else None},
    )
    registration = registry.register(new)
    vid = registration.variant.version_id
    progress(f"{spec.name}: finished; registered {vid}")
    return RunResult(spec.name, "finished", "", None, vid, new.meta or {})


def _overlay_form(config: dict[str, Any], skill: str | None) -> dict[str, Any]:
    flat = {"provider": config["provider"], "model": config["model"], **config.get("params", {})}
    if skill is not None:
        flat["skill"] = skill
    return flat


def _call(config: ExternalTrainConfig, base: dict[str, Any], where: str, workspace: Workspace) -> dict[str, Any]:
    try:
        function = load_entrypoint(config.entrypoint, workspace.python_roots)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        result = function(dict(base), **config.args)
    except ShadowzooError:
        raise
    except Exception as exc:
        raise ShadowzooError(f"{where} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(result, dict):
        raise ConfigError(f"{where}: returned {type(result).__name__}; expected a dict of overrides")
    return result


def _checked(overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """Only allowlisted keys, valid values, and the skill as text."""
    unknown = sorted(set(overrides) - set(ALLOWED_KEYS))
    if unknown:
        raise ConfigError(f"{where}: returned keys that may not be overridden: {', '.join(unknown)} "
                          f"(allowed: {', '.join(ALLOWED_KEYS)})")
    if "skill" in overrides and not isinstance(overrides["skill"], str):
        raise ConfigError(f"{where}: returned skill must be the document's text")
    try:
        ChatParams.model_validate(overrides)
    except ValidationError as exc:
        raise ConfigError(f"{where}: returned invalid overrides: {first_problem(exc).text()}") from None
    return overrides
