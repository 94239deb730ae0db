"""Every operator operation as one typed protocol, with the results of its long work.

`Operations` is the one place an operation's arguments, result and progress are written:
`ops.optable` reads them from these signatures to build the admin routes, the OpenAPI
document and the remote client. `ops.operations.LocalOperations` implements it on the
database; `ops.client.RemoteOperations` through the daemon. Only the admin API and the
client import this module, so its imports (the scorer, the runner) cost a CLI command
nothing until it talks to a daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, Field

from registry import Move, NewVariant, Registration, Variant
from scorer.leaderboard_model import EvidencePoint, Leaderboard
from scorer.browse import RequestFilter, RequestPage
from scorer.export import ExportOptions, ExportProgress, ExportSummary
from scorer.trace import RequestTrace
from shadow.gateway_hosts import ForgottenHost
from shadow.ingest import IngestReport
from shadow.pauses import Pause
from shadow.runner import RunReport

SpecCount = Annotated[int, Field(ge=1, description="At most this many specs.")]
"""A number of specs to train: a daemon refuses any other at once, before a job starts."""
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
    def rollback(self, slot: str, actor: str, reason: str) -> Move: ...
    def retire(self, version_id: str, actor: str, reason: str) -> Move: ...
    def reactivate(self, version_id: str, actor: str, reason: str) -> Move:
        """Make a retired variant a challenger again."""

    def pause(self, version_id: str | None = None, actor: str = "unknown", reason: str | None = None) -> Pause: ...
    def resume(self, version_id: str | None = None) -> Pause | None: ...
    def forget_host(self, host: str) -> ForgottenHost:
        """Forget a gateway host taken out of service (`backend: distributed`), silent for a while."""

    def score(self, slot: str, since: datetime | None = None, where: dict[str, str] | None = None) -> Leaderboard:
        """Bring the slot's evidence up to date (judge calls included) and return its leaderboard;
        stores a snapshot unless `where` or `since` makes it a view."""

    def ingest(self, progress: Callable[[IngestProgress], None] | None = None) -> IngestReport: ...
    def replay(self, slot: str, since: datetime | None = None, version: str | None = None, include_old: bool = False,
               retry_errors: bool = False, progress: Callable[[RunReport], None] | None = None) -> RunReport: ...
    def train(self, spec: str | None = None, all_active: bool = False, limit: SpecCount | None = None,
              progress: Callable[[str], None] | None = None) -> TrainResult: ...
    def report(self, slot: str, format: ReportFormat = "html", since: datetime | None = None,
               where: dict[str, str] | None = None, progress: Callable[[str], None] | None = None) -> Report: ...
    def export(self, options: ExportOptions, out: str,
               progress: Callable[[ExportProgress], None] | None = None) -> ExportSummary: ...
