"""What an operator can do to a workspace, in one place, whoever holds the database.

The CLI calls these operations. When no daemon runs, `LocalOperations` does them on the
database directly; while the daemon runs, the CLI gets `ops.client.RemoteOperations`
instead, which sends the same calls to the daemon's admin API, where they run here, in
the process that owns the database. So a command's output is the same either way.

The scorer and the request browser are imported by the operations that use them: listing
variants must not load the statistics (`shadowzoo variants list` answers at once).
"""

from __future__ import annotations

from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

from registry import ConfigError, Move, NewVariant, Registration, Registry, Variant
from shadow import pauses
from shadow.pauses import Pause

if TYPE_CHECKING:
    from scorer.board import EvidencePoint, Leaderboard
    from scorer.browse import RequestFilter, RequestPage
    from scorer.service import Scorer
    from scorer.trace import RequestTrace


class LocalOperations:
    """The operations, done on a registry this process has open."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    @cached_property
    def scorer(self) -> Scorer:
        from scorer.service import Scorer

        return Scorer(self.registry.workspace, self.registry)

    # reads the zoo's resolver needs (the same names as `Registry`)
    def champion(self, slot: str) -> Variant | None:
        return self.registry.champion(slot)

    def latest_with_label(self, slot: str, label: str) -> Variant | None:
        return self.registry.latest_with_label(slot, label)

    def variant_with_fingerprint(self, slot: str, fingerprint: str) -> Variant | None:
        return self.registry.variant_with_fingerprint(slot, fingerprint)

    def skill_text(self, sha: str) -> str:
        return self.registry.skill_text(sha)

    def variant(self, version_id: str) -> Variant:
        return self.registry.variant(version_id)

    def variants(self, slot: str | None = None, status: str | None = None) -> list[Variant]:
        return self.registry.variants(slot=slot, status=status)

    def history(self, slot: str) -> list[Move]:
        return self.registry.history(slot)

    # changes
    def register(self, new: NewVariant) -> Registration:
        return self.registry.register(new)

    def promote(self, slot: str, version_id: str, actor: str, reason: str | None, force: bool) -> Move:
        """Promote on the evidence of a fresh leaderboard (see `scorer.policy`)."""
        from scorer.policy import promotion_evidence

        self.registry.workspace.slot(slot)
        evidence = promotion_evidence(self.scorer.refresh(slot), version_id, force)
        return self.registry.promote(slot, version_id, actor, reason, evidence)

    def rollback(self, slot: str, actor: str, reason: str) -> Move:
        return self.registry.rollback(slot, actor, _required(reason, "a rollback"))

    def retire(self, version_id: str, actor: str, reason: str) -> Move:
        return self.registry.retire(version_id, actor, _required(reason, "a retirement"))

    def reactivate(self, version_id: str, actor: str, reason: str) -> Move:
        return self.registry.reactivate(version_id, actor, _required(reason, "a reactivation"))

    def pause(self, version_id: str | None, actor: str, reason: str | None) -> Pause:
        return pauses.pause(self.registry, version_id, actor, reason)

    def resume(self, version_id: str | None) -> Pause | None:
        return pauses.resume(self.registry, version_id)

    def pauses(self) -> list[Pause]:
        return pauses.list_pauses(self.registry)

    # evidence
    def leaderboard(self, slot: str, since: datetime | None = None, where: dict[str, str] | None = None) -> Leaderboard:
        return self.scorer.refresh(slot, since=since, where=where)

    def evidence_history(self, slot: str) -> list[EvidencePoint]:
        return self.scorer.history(slot)

    # single requests
    def trace(self, key: str, slot: str | None = None) -> RequestTrace:
        """One request by its id or client request id: every answer, its scores and its pair."""
        from scorer.trace import trace_request

        if slot is not None:
            self.registry.workspace.slot(slot)
        return trace_request(self.registry, key, slot)

    def requests(self, request: RequestFilter) -> RequestPage:
        """One page of a slot's requests that match the filter."""
        from scorer.browse import browse_requests

        metrics = self.registry.workspace.slot(request.slot).metrics
        first_line = bool(metrics) and all(metric.first_line for metric in metrics)
        with self.registry.database.reading() as db:
            return browse_requests(db, request, first_line)


def _required(reason: str | None, move: str) -> str:
    """The reason for a move the audit log must explain; none (or only spaces) is an error."""
    if reason is None or not reason.strip():
        raise ConfigError(f"reason: {move} needs a reason, so the audit log says why")
    return reason
