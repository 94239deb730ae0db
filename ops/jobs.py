"""Long work an operator starts while the daemon runs: replays, reports, training; followed by id.

The CLI posts a `JobRequest`, gets a `JobStatus` back, and polls it for progress until it
is done. Replays are queued for the daemon's one shadow runner (two runners on the same
traffic would pay twice for the same answers); reports and training run one at a time in
a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from registry import NotFound


class JobRequest(BaseModel):
    """What to run."""

    kind: Literal["replay", "report", "train"]
    slot: str | None = Field(None, description="Replay and report: the slot.")
    since: datetime | None = Field(None, description="Replay: only traffic received since then (UTC).")
    version: str | None = Field(None, description="Replay: only this challenger.")
    include_old: bool = Field(False, description="Replay: also requests that cannot count in the current period.")
    retry_errors: bool = Field(False, description="Replay: run errored (and config not-run) pairs again, replacing them.")
    out: str | None = Field(None, description="Report: the file to write, relative to the workspace.")
    spec: str | None = Field(None, description="Train: the spec, by name.")
    all_active: bool = Field(False, description="Train: every active spec with a train: block.")
    limit: int | None = Field(None, ge=1, description="Train with all_active: at most this many specs.")

    @model_validator(mode="after")
    def _complete(self) -> "JobRequest":
        if self.kind in ("replay", "report") and not self.slot:
            raise ValueError(f"a {self.kind} job needs a slot")
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

    @staticmethod
    def finish(job: JobStatus, result: dict[str, Any] | None = None, error: str | None = None) -> None:
        job.state = "failed" if error else "done"
        job.result, job.error = result, error
        job.finished_at = datetime.now(UTC)
