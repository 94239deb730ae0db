"""Long work an operator starts while the daemon runs: replays, reports, exports, training; followed by id.

The CLI posts a `JobRequest`, gets a `JobStatus` back, and polls it for progress until it
is done. Replays are queued for the daemon's one shadow runner (two runners on the same
traffic would pay twice for the same answers); reports, exports and training run one at a
time in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from registry import NotFound
from scorer.export import ExportOptions
from scorer.report.files import FORMATS as REPORT_FORMATS


class JobRequest(BaseModel):
    """What to run."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["replay", "report", "train", "export"]
    slot: str | None = Field(None, description="Replay, report and export: the slot.")
    since: datetime | None = Field(None, description="Replay: only traffic received since then (UTC).")
    version: str | None = Field(None, description="Replay: only this challenger.")
    include_old: bool = Field(False, description="Replay: also requests that cannot count in the current period.")
    retry_errors: bool = Field(False, description="Replay: run errored (and config not-run) pairs again, replacing them.")
    out: str | None = Field(
        None, description="Report (.html, .htm or .md) and export: the file to write, relative to the workspace and inside it.")
    spec: str | None = Field(None, description="Train: the spec, by name.")
    all_active: bool = Field(False, description="Train: every active spec with a train: block.")
    limit: int | None = Field(None, ge=1, description="Train with all_active: at most this many specs.")
    export: ExportOptions | None = Field(None, description="Export: what to export (its slot is the job's).")

    @field_validator("out")
    @classmethod
    def _inside_workspace(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A job writes only inside the workspace, and a report only as .html, .htm or .md."""
        if value is None:
            return value
        path = PurePosixPath(value.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"{value!r} must be a path relative to the workspace, inside it")
        if info.data.get("kind") == "report" and path.suffix.lower() not in REPORT_FORMATS:
            raise ValueError(f"{value!r} must end in {' or '.join(REPORT_FORMATS)}")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "JobRequest":
        if self.kind in ("replay", "report", "export") and not self.slot:
            raise ValueError(f"a {self.kind} job needs a slot")
        if self.kind == "export" and (self.export is None or self.out is None or self.export.slot != self.slot):
            raise ValueError("an export job needs out and export, whose slot is the job's")
        if self.kind == "train" and (self.spec is None) == (not self.all_active):
            raise ValueError("a train job needs a spec or all_active (one of them)")
        return self


class JobStatus(BaseModel):
    """Where a job stands."""

    id: str
    request: JobRequest
    state: Literal["queued", "running", "done", "failed"] = "queued"
    progress: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None


class JobBoard:
    """The jobs of this daemon's life, and the queue of replays waiting for the runner."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobStatus] = {}
        self._ids = itertools.count(1)
        self.replays: asyncio.Queue[JobStatus] = asyncio.Queue()
        self.others: asyncio.Queue[JobStatus] = asyncio.Queue()

    def start(self, request: JobRequest) -> JobStatus:
        job = JobStatus(id=f"job-{next(self._ids)}", request=request)
        self._jobs[job.id] = job
        (self.replays if request.kind == "replay" else self.others).put_nowait(job)
        return job

    def status(self, job_id: str) -> JobStatus:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"no job {job_id!r} in this daemon's life") from None

    def all(self) -> list[JobStatus]:
        """Every job of this daemon's life, newest first."""
        return sorted(self._jobs.values(), key=lambda job: job.started_at, reverse=True)

    @staticmethod
    def finish(job: JobStatus, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        job.state = "failed" if error else "done"
        job.result, job.error = result, error
        job.finished_at = datetime.now(UTC)
