"""Resolving a spec: its base, overlaid with its overrides, into one immutable configuration.

The base is looked up once, at registration: the slot defaults, the current champion, or
another variant by label (the spec of that name in the zoo, else the newest registered
variant with that label). The result is the canonical configuration whose fingerprint
names the variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from registry import ConfigError, NewVariant, Variant, VariantStore, Workspace, fingerprint, sha256_text, version_id
from registry.workspace_config import CHAT_PARAM_KEYS
from registry.entrypoints import check_entrypoint
from zoo.skills import read_skill
from zoo.spec import SpecFile, Zoo
from zoo.train.train_config import ExternalTrainConfig


@dataclass(frozen=True)
class Resolved:
    """A spec resolved against its base: ready to register."""

    spec_file: SpecFile
    config: dict[str, Any]
    skill_text: str | None
    parent: str | None

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.config)

    def new_variant(self) -> NewVariant:
        spec = self.spec_file.spec
        return NewVariant(
            slot=spec.slot, label=spec.name, kind=spec.kind, config=self.config,
            skill_text=self.skill_text, parent=self.parent, source="spec", spec_path=str(self.spec_file.path),
        )

    def would_be_id(self, registry: VariantStore) -> str:
        """The id this spec has, or would get if registered today."""
        spec = self.spec_file.spec
        existing = registry.variant_with_fingerprint(spec.slot, self.fingerprint)
        if existing is not None:
            return existing.version_id
        return version_id(spec.slot, spec.name, datetime.now(UTC), self.fingerprint)


def resolve_spec(spec_file: SpecFile, zoo: Zoo, workspace: Workspace, registry: VariantStore) -> Resolved:
    """Resolve one spec; errors name the spec file and what did not resolve."""
    return _Resolver(zoo, workspace, registry).resolve(spec_file, ())


class _Resolver:
    def __init__(self, zoo: Zoo, workspace: Workspace, registry: VariantStore) -> None:
        self.zoo = zoo
        self.workspace = workspace
        self.registry = registry

    def resolve(self, spec_file: SpecFile, chain: tuple[str, ...]) -> Resolved:
        spec = spec_file.spec
        if spec.name in chain:
            cycle = " -> ".join(chain + (spec.name,))
            raise ConfigError(f"{spec_file.path}: base: specs form a cycle: {cycle}")
        if spec.slot not in self.workspace.config.slots:
            known = ", ".join(sorted(self.workspace.config.slots)) or "none"
            raise ConfigError(
                f"{spec_file.path}: slot: {spec.slot!r} is not configured in {self.workspace.config_path} (slots: {known})"
            )
        if not chain and isinstance(spec.train, ExternalTrainConfig):
            self._check_entrypoint(spec_file, "train.entrypoint", spec.train.entrypoint)
        base, parent = self._base(spec_file, chain + (spec.name,))
        overrides = spec.overrides.set_keys()
        if "skill" in overrides:
            overrides["skill"] = read_skill(
                spec.overrides.skill, spec_file.path.parent, self.workspace.root, f"{spec_file.path}: overrides.skill"
            )
        merged = {**base, **overrides}
        if spec.kind == "chat":
            config, skill = self._chat_config(spec_file, merged)
        else:
            config, skill = self._python_config(spec_file, merged)
        return Resolved(spec_file=spec_file, config=config, skill_text=skill, parent=parent)

    def _base(self, spec_file: SpecFile, chain: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
        """The flat base configuration and the registered version it came from, if any."""
        spec = spec_file.spec
        if spec.base == "defaults":
            return (self._slot_defaults(spec.slot) if spec.kind == "chat" else {}), None
        if spec.base == "champion":
            champion = self.registry.champion(spec.slot)
            if champion is None:
                raise ConfigError(
                    f"{spec_file.path}: base: slot {spec.slot!r} has no champion yet; use `base: defaults` "
                    "for the first variant, then `shadowzoo promote`"
                )
            return self._checked_flat(spec_file, champion), champion.version_id
        base_spec = self.zoo.find(spec.slot, spec.base)
        if base_spec is not None:
            resolved = self.resolve(base_spec, chain)
            if base_spec.spec.kind != spec.kind:
                raise ConfigError(f"{spec_file.path}: base: {spec.base!r} is a {base_spec.spec.kind} spec, not {spec.kind}")
            registered = self.registry.variant_with_fingerprint(spec.slot, resolved.fingerprint)
            return _flat(resolved.config, resolved.skill_text), registered.version_id if registered else None
        variant = self.registry.latest_with_label(spec.slot, spec.base)
        if variant is None:
            raise ConfigError(
                f"{spec_file.path}: base: {spec.base!r} does not resolve: it is not `defaults`, not `champion`, "
                f"not a spec of slot {spec.slot!r} in the zoo, and no active variant of that slot has that label"
            )
        return self._checked_flat(spec_file, variant), variant.version_id

    def _checked_flat(self, spec_file: SpecFile, variant: Variant) -> dict[str, Any]:
        if variant.kind != spec_file.spec.kind:
            raise ConfigError(f"{spec_file.path}: base: {variant.version_id} is a {variant.kind} variant, not {spec_file.spec.kind}")
        skill = self.registry.skill_text(variant.skill_sha) if variant.skill_sha else None
        return _flat(variant.config, skill)

    def _slot_defaults(self, slot: str) -> dict[str, Any]:
        defaults = self.workspace.config.slots[slot].defaults
        flat = defaults.set_keys()
        if "skill" in flat:
            flat["skill"] = read_skill(
                defaults.skill, self.workspace.root, self.workspace.root,
                f"{self.workspace.config_path}: slots.{slot}.defaults.skill",
            )
        return flat

    def _chat_config(self, spec_file: SpecFile, merged: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        where = f"{spec_file.path}: resolved config"
        provider = merged.get("provider")
        if provider is None or merged.get("model") is None:
            missing = "provider" if provider is None else "model"
            raise ConfigError(
                f"{where} has no {missing!r}: set overrides.{missing} in the spec, or "
                f"slots.{spec_file.spec.slot}.defaults.{missing} in {self.workspace.config_path}"
            )
        if provider not in self.workspace.config.providers:
            known = ", ".join(sorted(self.workspace.config.providers)) or "none"
            raise ConfigError(f"{where}: provider {provider!r} is not configured (providers: {known})")
        skill = merged.get("skill")
        config: dict[str, Any] = {
            "kind": "chat",
            "provider": provider,
            "model": merged["model"],
            "params": {key: merged[key] for key in CHAT_PARAM_KEYS if key in merged},
        }
        if skill is not None:
            config["skill_sha"] = sha256_text(skill)
        return config, skill

    def _python_config(self, spec_file: SpecFile, merged: dict[str, Any]) -> tuple[dict[str, Any], None]:
        if merged.get("entrypoint") is None:
            raise ConfigError(f"{spec_file.path}: resolved config has no 'entrypoint': set overrides.entrypoint")
        self._check_entrypoint(spec_file, "overrides.entrypoint", merged["entrypoint"])
        config = {"kind": "python", "entrypoint": merged["entrypoint"], "params": merged.get("params", {})}
        if merged.get("price_per_call_usd") is not None:
            config["price_per_call_usd"] = merged["price_per_call_usd"]
        return config, None

    def _check_entrypoint(self, spec_file: SpecFile, key: str, entrypoint: str) -> None:
        """Python entrypoints may only name the workspace's own modules."""
        try:
            check_entrypoint(entrypoint, self.workspace.python_roots)
        except ConfigError as exc:
            raise ConfigError(f"{spec_file.path}: {key}: {exc}") from None


def _flat(config: dict[str, Any], skill: str | None) -> dict[str, Any]:
    """A canonical configuration back in overlay form: top-level keys, skill as text."""
    if config["kind"] == "python":
        return {key: value for key, value in config.items() if key != "kind"}
    flat = {"provider": config["provider"], "model": config["model"], **config.get("params", {})}
    if skill is not None:
        flat["skill"] = skill
    return flat
