"""The registry as the zoo sees it: any object with these methods will do.

`Registry` has them, and so does the CLI's client of the daemon's admin API, so specs
resolve and register the same way whether the database is local or behind the daemon.
"""

from __future__ import annotations

from typing import Protocol

from registry.records import NewVariant, Registration, Variant


class VariantStore(Protocol):
    def champion(self, slot: str) -> Variant | None: ...

    def latest_with_label(self, slot: str, label: str) -> Variant | None: ...

    def variant_with_fingerprint(self, slot: str, fingerprint: str) -> Variant | None: ...

    def skill_text(self, sha: str) -> str: ...

    def register(self, new: NewVariant) -> Registration: ...
