"""Registering specs: one at a time, so that one spec's failure never stops the rest."""

from __future__ import annotations

from dataclasses import dataclass

from registry import Registration, ShadowzooError, VariantStore, Workspace
from zoo.resolve import resolve_spec
from zoo.spec import SpecFile, Zoo


@dataclass(frozen=True)
class RegisterOutcome:
    """What happened to one spec: its registration, or the error that stopped it."""

    spec_file: SpecFile
    registration: Registration | None = None
    error: str | None = None


def register_specs(spec_files: list[SpecFile], zoo: Zoo, workspace: Workspace, registry: VariantStore) -> list[RegisterOutcome]:
    """Register each spec, bases before the specs built on them; collect every outcome."""
    outcomes = []
    for spec_file in sorted(spec_files, key=lambda s: _base_depth(s, zoo)):
        try:
            resolved = resolve_spec(spec_file, zoo, workspace, registry)
            outcomes.append(RegisterOutcome(spec_file, registration=registry.register(resolved.new_variant())))
        except ShadowzooError as exc:
            outcomes.append(RegisterOutcome(spec_file, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - even an unforeseen failure must not stop the other specs
            outcomes.append(RegisterOutcome(spec_file, error=f"{spec_file.path}: {type(exc).__name__}: {exc}"))
    return outcomes


def _base_depth(spec_file: SpecFile, zoo: Zoo) -> int:
    """How many zoo specs lie below this one through `base:` (cycles are cut, and reported later)."""
    depth, seen, current = 0, {spec_file.spec.name}, spec_file
    while (base := zoo.find(current.spec.slot, current.spec.base)) is not None and base.spec.name not in seen:
        seen.add(base.spec.name)
        depth, current = depth + 1, base
    return depth
