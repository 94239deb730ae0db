"""What an operator can do to a workspace, in one place, whoever holds the database.

The CLI calls these operations. When no daemon runs, `LocalOperations` does them on the
database directly; while the daemon runs, the CLI gets `ops.client.RemoteOperations`
instead, which sends the same calls to the daemon's admin API, where they run here, in
the process that owns the database. So a command's output is the same either way.
"""

from __future__ import annotations

from datetime import datetime

from registry import Move, NewVariant, Registration, Registry, Variant
from scorer.leaderboard_model import EvidencePoint, Leaderboard
from scorer.browse import RequestFilter, RequestPage, browse_requests
from scorer.policy import promotion_evidence
from scorer.service import Scorer
from scorer.trace import RequestTrace, trace_request
from shadow import pauses
from shadow.pauses import Pause


class LocalOperations:
    """The operations, done on a registry this process has open."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.scorer = Scorer(registry.workspace, registry)

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
        self.registry.workspace.slot(slot)
        evidence = promotion_evidence(self.scorer.refresh(slot), version_id, force)
        return self.registry.promote(slot, version_id, actor, reason, evidence)

    def rollback(self, slot: str, actor: str, reason: str | None) -> Move:
        return self.registry.rollback(slot, actor, reason)

    def retire(self, version_id: str, actor: str, reason: str | None) -> Move:
        return self.registry.retire(version_id, actor, reason)

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
        if slot is not None:
            self.registry.workspace.slot(slot)
        return trace_request(self.registry, key, slot)

    def requests(self, request: RequestFilter) -> RequestPage:
        """One page of a slot's requests that match the filter."""
        metrics = self.registry.workspace.slot(request.slot).metrics
        first_line = bool(metrics) and all(metric.first_line for metric in metrics)
        with self.registry.database.reading() as db:
            return browse_requests(db, request, first_line)
