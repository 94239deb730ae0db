"""What an operator can do to a workspace, in one place, whoever holds the database.

`Operations` lists every operator operation with its typed arguments and result. The CLI
and the web console call them and never ask which side does the work: without a daemon,
`LocalOperations` does them on the database here (long work inline, with progress); while
the daemon runs, `ops.client.RemoteOperations` sends the same calls to its admin API
(long work as a job it follows), where they run here, in the process that owns the
database. `ops.optable` derives the admin routes, the OpenAPI document and the client from
this protocol, so a command's output is the same either way.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from registry import ConfigError, Move, NewVariant, NotFound, Registration, Registry, ShadowzooError, Variant, Workspace
from scorer.board import EvidencePoint, Leaderboard
from scorer.browse import RequestFilter, RequestPage, browse_requests
from scorer.export import ExportOptions, ExportProgress, ExportSummary, export_answers
from scorer.policy import promotion_evidence
from scorer.report import render_html, render_markdown
from scorer.service import Scorer
from scorer.trace import RequestTrace, trace_request
from shadow import pauses
from shadow.ingest import IngestReport, ingest_spool
from shadow.pauses import Pause
from shadow.runner import RunFilters, RunReport, ShadowRunner
from shadow.spool import spool_dir
from zoo import SpecFile, load_zoo
from zoo.train.outcome import Register
from zoo.train.run import train_spec

ReportFormat = Literal["html", "md"]


class TrainResult(BaseModel):
    """How each chosen spec's training ended: one line per spec."""

    trained: list[str]
    failed: list[str]


class Report(BaseModel):
    """A slot's report, rendered: the caller writes it where it wants."""

    slot: str
    format: ReportFormat
    text: str


class IngestProgress(BaseModel):
    """Spool bytes ingested so far, of all."""

    done: int
    total: int


class JobStatus(BaseModel):
    """Where a daemon job (an operation's long work) stands."""

    id: str
    operation: str
    arguments: dict[str, Any]
    state: Literal["queued", "running", "done", "failed"] = "queued"
    progress: Any = None
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    started_at: datetime
    finished_at: datetime | None = None


class Operations(Protocol):
    """Every operator operation. `ops.optable` says which are long work (jobs) and their HTTP routes."""

    def status(self) -> dict[str, Any]:
        """Daemon health, spool lag, queue, budgets, pauses, last jobs, routes drift."""

    def variants(self, slot: str | None = None, status: str | None = None) -> list[Variant]: ...
    def variant(self, version_id: str) -> Variant: ...
    def champion(self, slot: str) -> Variant | None: ...
    def latest_with_label(self, slot: str, label: str) -> Variant | None: ...
    def variant_with_fingerprint(self, slot: str, fingerprint: str) -> Variant | None: ...
    def skill_text(self, sha: str) -> str: ...
    def history(self, slot: str) -> list[Move]: ...
    def pauses(self) -> list[Pause]: ...
    def leaderboard(self, slot: str) -> Leaderboard:
        """The slot's leaderboard as last scored and stored; writes nothing."""

    def evidence_history(self, slot: str) -> list[EvidencePoint]: ...
    def trace(self, request_id: str, slot: str | None = None) -> RequestTrace: ...
    def requests(self, request: RequestFilter) -> RequestPage: ...
    def jobs(self) -> list[JobStatus]: ...
    def job(self, job_id: str) -> JobStatus: ...

    def register(self, new: NewVariant) -> Registration: ...
    def promote(self, slot: str, version_id: str, actor: str, reason: str | None = None, force: bool = False) -> Move: ...
    def rollback(self, slot: str, actor: str, reason: str | None = None) -> Move: ...
    def retire(self, version_id: str, actor: str, reason: str | None = None) -> Move: ...
    def pause(self, version_id: str | None = None, actor: str = "unknown", reason: str | None = None) -> Pause: ...
    def resume(self, version_id: str | None = None) -> Pause | None: ...
    def score(self, slot: str, since: datetime | None = None, where: dict[str, str] | None = None) -> Leaderboard:
        """Bring the slot's evidence up to date (judge calls included) and return its leaderboard;
        stores a snapshot unless `where` makes it a slice view."""

    def ingest(self, progress: Callable[[IngestProgress], None] | None = None) -> IngestReport: ...
    def replay(self, slot: str, since: datetime | None = None, version: str | None = None, include_old: bool = False,
               retry_errors: bool = False, progress: Callable[[RunReport], None] | None = None) -> RunReport: ...
    def train(self, spec: str | None = None, all_active: bool = False, limit: int | None = None,
              progress: Callable[[str], None] | None = None) -> TrainResult: ...
    def report(self, slot: str, format: ReportFormat = "html", since: datetime | None = None,
               where: dict[str, str] | None = None, progress: Callable[[str], None] | None = None) -> Report: ...
    def export(self, options: ExportOptions, out: str,
               progress: Callable[[ExportProgress], None] | None = None) -> ExportSummary: ...


TRAINING = threading.Lock()
"""One training run at a time in a process, whoever starts it (a command, a job, the rotation)."""
INGESTING = threading.Lock()
"""One ingest of the spool at a time: the daemon's schedule and an operator's `ingest` share it."""


class LocalOperations:
    """The operations, done on a registry this process has open (long work inline)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.workspace: Workspace = registry.workspace
        self.scorer = Scorer(registry.workspace, registry)

    def status(self) -> dict[str, Any]:
        raise ShadowzooError(f"no daemon is running for {self.workspace.root} (start one with `shadowzoo serve`)")

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
        self.workspace.slot(slot)
        evidence = promotion_evidence(self.scorer.refresh(slot), version_id, force)
        return self.registry.promote(slot, version_id, actor, reason, evidence)

    def rollback(self, slot: str, actor: str, reason: str | None = None) -> Move:
        return self.registry.rollback(slot, actor, reason)

    def retire(self, version_id: str, actor: str, reason: str | None = None) -> Move:
        return self.registry.retire(version_id, actor, reason)

    def pause(self, version_id: str | None = None, actor: str = "unknown", reason: str | None = None) -> Pause:
        return pauses.pause(self.registry, version_id, actor, reason)

    def resume(self, version_id: str | None = None) -> Pause | None:
        return pauses.resume(self.registry, version_id)

    def pauses(self) -> list[Pause]:
        return pauses.list_pauses(self.registry)

    # evidence
    def leaderboard(self, slot: str) -> Leaderboard:
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
        if slot is not None:
            self.workspace.slot(slot)
        return trace_request(self.registry, request_id, slot)

    def requests(self, request: RequestFilter) -> RequestPage:
        """One page of a slot's requests that match the filter."""
        metrics = self.workspace.slot(request.slot).metrics
        first_line = bool(metrics) and all(metric.first_line for metric in metrics)
        with self.registry.database.reading() as db:
            return browse_requests(db, request, first_line)

    # long work
    def ingest(self, progress: Callable[[IngestProgress], None] | None = None) -> IngestReport:
        """Ingest the whole spool now (captures, and files `shadowzoo ingest` spooled)."""
        report = (lambda done, total: progress(IngestProgress(done=done, total=total))) if progress else None
        with INGESTING:
            return ingest_spool(self.registry.database, spool_dir(self.workspace.state_dir), progress=report)

    def replay(self, slot: str, since: datetime | None = None, version: str | None = None, include_old: bool = False,
               retry_errors: bool = False, progress: Callable[[RunReport], None] | None = None) -> RunReport:
        """Replay the slot's captured traffic against its challengers now (see `shadow.runner`)."""
        self.workspace.slot(slot)
        filters = RunFilters(slot=slot, since=since, version=version, include_old=include_old, retry_errors=retry_errors)
        return asyncio.run(self._replay(filters, progress))

    async def _replay(self, filters: RunFilters, progress: Callable[[RunReport], None] | None) -> RunReport:
        async with ShadowRunner(self.registry) as runner:
            return await runner.run_once(filters, progress=progress)

    def train(self, spec: str | None = None, all_active: bool = False, limit: int | None = None,
              progress: Callable[[str], None] | None = None) -> TrainResult:
        """Train one spec by name, or (all_active) the `limit` stalest active specs with a train: block."""
        if (spec is None) == (not all_active):
            raise ConfigError("train: name a spec, or all_active (one of them)")
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
        say = progress or (lambda line: None)
        say(f"scoring {slot}")
        board = self.score(slot, since=since, where=where)
        say("rendering the report")
        text = render_markdown(board) if format == "md" else render_html(board, self.evidence_history(slot))
        return Report(slot=slot, format=format, text=text)

    def export(self, options: ExportOptions, out: str,
               progress: Callable[[ExportProgress], None] | None = None) -> ExportSummary:
        """Export the slot's answers to the file `out` (see `scorer.export`)."""
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
