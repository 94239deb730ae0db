"""What an operator can do to a workspace, done on the database this process has open.

`ops.protocol.Operations` lists every operator operation with its typed arguments and
result. The CLI and the web console call them and never ask which side does the work:
without a daemon, `LocalOperations` does them here (long work inline, with progress);
while the daemon runs, `ops.client.RemoteOperations` sends the same calls to its admin API
(long work as a job it follows), where they run here, in the process that owns the
database. `ops.optable` derives the admin routes, the OpenAPI document and the client from
the protocol, so a command's output is the same either way.

The scorer, the runner and the trainer are imported by the operations that use them:
listing variants must not load the statistics (`shadowzoo variants list` answers at once).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from registry import ConfigError, Move, NewVariant, NotFound, Registration, Registry, Variant, Workspace
from shadow import pauses
from shadow.pauses import Pause

if TYPE_CHECKING:
    from ops.protocol import IngestProgress, JobStatus, Report, ReportFormat, TrainResult
    from scorer.leaderboard_model import EvidencePoint, Leaderboard
    from scorer.browse import RequestFilter, RequestPage
    from scorer.export import ExportOptions, ExportProgress, ExportSummary
    from scorer.service import Scorer
    from scorer.trace import RequestTrace
    from shadow.gateway_hosts import ForgottenHost
    from shadow.ingest import IngestReport
    from shadow.runner import RunFilters, RunReport
    from zoo import SpecFile

TRAINING = threading.Lock()
"""One training run at a time in a process, whoever starts it (a command, a job, the rotation)."""
INGESTING = threading.Lock()
"""One ingest of the spool at a time: the daemon's schedule and an operator's `ingest` share it."""


def check_train_selection(spec: str | None, all_active: bool) -> None:
    """A training run names one spec or asks for all active ones, never both or neither."""
    if (spec is None) == (not all_active):
        raise ConfigError("spec: name a spec, or set all_active (one of them)")


class LocalOperations:
    """The operations, done on a registry this process has open (long work inline)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.workspace: Workspace = registry.workspace

    @cached_property
    def scorer(self) -> Scorer:
        from scorer.service import Scorer

        return Scorer(self.workspace, self.registry)

    def status(self) -> dict[str, Any]:
        """What the database and the state directory say while no daemon runs (no pid, no queue)."""
        from ops import tasks
        from ops.prometheus_metrics import DaemonMetrics

        context = tasks.TaskContext(self.workspace, self, DaemonMetrics())
        return {"database": self.workspace.database, **tasks.status(context), "queue_depth": None}

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

    def jobs(self) -> list[JobStatus]:
        return []

    def job(self, job_id: str) -> JobStatus:
        raise NotFound(f"no job {job_id!r}: jobs run in the daemon, and none runs for {self.workspace.root}")

    # changes
    def register(self, new: NewVariant) -> Registration:
        return self.registry.register(new)

    def promote(self, slot: str, version_id: str, actor: str, reason: str | None = None, force: bool = False) -> Move:
        """Promote on the evidence of a fresh leaderboard (see `scorer.policy`)."""
        from scorer.policy import promotion_evidence

        self.workspace.slot(slot)
        evidence = promotion_evidence(self.scorer.refresh(slot), version_id, force)
        return self.registry.promote(slot, version_id, actor, reason, evidence)

    def rollback(self, slot: str, actor: str, reason: str) -> Move:
        return self.registry.rollback(slot, actor, _required(reason, "a rollback"))

    def retire(self, version_id: str, actor: str, reason: str) -> Move:
        return self.registry.retire(version_id, actor, _required(reason, "a retirement"))

    def reactivate(self, version_id: str, actor: str, reason: str) -> Move:
        return self.registry.reactivate(version_id, actor, _required(reason, "a reactivation"))

    def pause(self, version_id: str | None = None, actor: str = "unknown", reason: str | None = None) -> Pause:
        return pauses.pause(self.registry, version_id, actor, reason)

    def resume(self, version_id: str | None = None) -> Pause | None:
        return pauses.resume(self.registry, version_id)

    def pauses(self) -> list[Pause]:
        return pauses.list_pauses(self.registry)

    def forget_host(self, host: str) -> ForgottenHost:
        from shadow.gateway_hosts import forget_gateway_host

        if self.workspace.config.backend != "distributed":
            raise ConfigError("host: gateway hosts report to a control plane only on backend: distributed")
        return forget_gateway_host(self.workspace.config.distributed, host)

    # evidence
    def leaderboard(self, slot: str) -> Leaderboard:
        from scorer.leaderboard_model import Leaderboard

        self.workspace.slot(slot)
        with self.registry.database.reading() as db:
            row = db.execute("SELECT board_json FROM leaderboard_snapshots WHERE slot = ? "
                             "ORDER BY snapshot_id DESC LIMIT 1", [slot]).fetchone()
        if row is None:
            raise NotFound(f"slot {slot!r} has no stored leaderboard yet: the daemon scores every "
                           f"{self.workspace.config.daemon.score_interval_s:g}s, and `shadowzoo leaderboard` scores now")
        return Leaderboard.model_validate_json(row[0])

    def score(self, slot: str, since: datetime | None = None, where: dict[str, str] | None = None) -> Leaderboard:
        return self.scorer.refresh(slot, since=since, where=where)

    def evidence_history(self, slot: str) -> list[EvidencePoint]:
        return self.scorer.history(slot)

    # single requests
    def trace(self, request_id: str, slot: str | None = None) -> RequestTrace:
        """One request by its id or client request id: every answer, its scores and its pair."""
        from scorer.trace import trace_request

        if slot is not None:
            self.workspace.slot(slot)
        return trace_request(self.registry, request_id, slot)

    def requests(self, request: RequestFilter) -> RequestPage:
        """One page of a slot's requests that match the filter."""
        from scorer.browse import browse_requests

        metrics = self.workspace.slot(request.slot).metrics
        first_line = bool(metrics) and all(metric.first_line for metric in metrics)
        with self.registry.database.reading() as db:
            return browse_requests(db, request, first_line)

    # long work
    def ingest(self, progress: Callable[[IngestProgress], None] | None = None) -> IngestReport:
        """Ingest the whole spool now (captures, and files `shadowzoo ingest` spooled; on the distributed
        backend, what the gateway hosts shipped to the object store)."""
        from ops.protocol import IngestProgress
        from shadow.ingest import ingest_from
        from shadow.spool_source import segment_source

        report = (lambda done, total: progress(IngestProgress(done=done, total=total))) if progress else None
        with INGESTING:
            source = segment_source(self.workspace)
            try:
                return ingest_from(self.registry.database, source, progress=report)
            finally:
                source.close()

    def replay(self, slot: str, since: datetime | None = None, version: str | None = None, include_old: bool = False,
               retry_errors: bool = False, progress: Callable[[RunReport], None] | None = None) -> RunReport:
        """Replay the slot's captured traffic against its challengers now (see `shadow.runner`)."""
        import asyncio

        from shadow.runner import RunFilters

        self.workspace.slot(slot)
        filters = RunFilters(slot=slot, since=since, version=version, include_old=include_old, retry_errors=retry_errors)
        return asyncio.run(self._replay(filters, progress))

    async def _replay(self, filters: RunFilters, progress: Callable[[RunReport], None] | None) -> RunReport:
        from shadow.runner import ShadowRunner

        async with ShadowRunner(self.registry) as runner:
            return await runner.run_once(filters, progress=progress)

    def train(self, spec: str | None = None, all_active: bool = False, limit: int | None = None,
              progress: Callable[[str], None] | None = None) -> TrainResult:
        """Train one spec by name, or (all_active) the `limit` stalest active specs with a train: block."""
        from ops.protocol import TrainResult
        from zoo import load_zoo
        from zoo.train.outcome import Register
        from zoo.train.run import train_spec

        check_train_selection(spec, all_active)
        if limit is not None and limit < 1:
            raise ConfigError(f"limit: {limit} is not a number of specs (at least 1)")
        zoo = load_zoo(self.workspace.specs_dir)
        chosen = stalest(self.workspace, zoo.specs)[:limit] if all_active else _named(zoo.named(spec or ""), spec, zoo.specs)
        register = Register(self, self.register)
        with TRAINING:
            results = [train_spec(s, zoo, self.workspace, register, self.registry.database, progress or (lambda line: None))
                       for s in chosen]
        return TrainResult(trained=[f"{r.spec}: {r.status}" + (f", registered {r.version_id}" if r.version_id else "")
                                    for r in results if r.ok],
                           failed=[f"{r.spec}: {r.reason}" for r in results if not r.ok])

    def report(self, slot: str, format: ReportFormat = "html", since: datetime | None = None,
               where: dict[str, str] | None = None, progress: Callable[[str], None] | None = None) -> Report:
        """Score the slot now and render its report (HTML with charts, or Markdown)."""
        from ops.protocol import Report
        from scorer.report import render_html, render_markdown

        say = progress or (lambda line: None)
        say(f"scoring {slot}")
        board = self.score(slot, since=since, where=where)
        say("rendering the report")
        text = render_markdown(board) if format == "md" else render_html(board, self.evidence_history(slot))
        return Report(slot=slot, format=format, text=text)

    def export(self, options: ExportOptions, out: str,
               progress: Callable[[ExportProgress], None] | None = None) -> ExportSummary:
        """Export the slot's answers to the file `out` (see `scorer.export`)."""
        from pathlib import Path

        from scorer.export import export_answers

        return export_answers(self.registry, options, Path(out), progress or (lambda p: None))


def stalest(workspace: Workspace, specs: list[SpecFile]) -> list[SpecFile]:
    """The active specs with a train: block, least recently trained first (never trained first, in zoo order)."""
    trainable = [s for s in specs if s.spec.status == "active" and s.spec.train is not None]
    return sorted(trainable, key=lambda s: _last_trained(workspace, s.spec.name))


def _last_trained(workspace: Workspace, spec: str) -> float:
    """When the spec's newest training run last wrote its state (0 when never trained)."""
    states = list((workspace.state_dir / "train" / spec).glob("*/state.json"))
    return max((p.stat().st_mtime for p in states), default=0.0)


def _named(matches: list[SpecFile], name: str | None, specs: list[SpecFile]) -> list[SpecFile]:
    if not matches:
        known = ", ".join(sorted(s.spec.name for s in specs)) or "none"
        raise NotFound(f"no spec named {name!r} in the zoo (specs: {known})")
    return matches


def _required(reason: str | None, move: str) -> str:
    """The reason for a move the audit log must explain; none (or only spaces) is an error."""
    if reason is None or not reason.strip():
        raise ConfigError(f"reason: {move} needs a reason, so the audit log says why")
    return reason
