"""Long work an operator starts while the daemon runs (replay, report, training, export, ingest), followed by id.

An operation the table marks as a job answers its POST with a `JobStatus` at once; the
client polls it for progress until it is done. Replays are queued for the daemon's one
shadow runner (two runners on the same traffic would pay twice for the same answers); the
others run one at a time in a worker thread.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ops.protocol import JobStatus
from ops.operations import check_train_selection
from ops.optable import Operation, error_status
from registry import ConfigError, NotFound, ShadowzooError, Workspace


class Job:
    """A started job: its public status, and the operation and arguments it runs."""

    def __init__(self, status: JobStatus, operation: Operation, arguments: BaseModel) -> None:
        self.status = status
        self.operation = operation
        self.arguments = arguments

    def report(self, progress: Any) -> None:
        """Progress callback: what the client shows next."""
        self.status.progress = progress.model_dump(mode="json") if isinstance(progress, BaseModel) else progress

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        status = self.status
        status.state = "failed" if error else "done"
        status.result = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
        if isinstance(error, ShadowzooError):
            status.error, status.error_type = str(error), error_status(error)[1]
        elif error is not None:
            status.error, status.error_type = f"{type(error).__name__}: {error}", "internal"
        status.finished_at = datetime.now(UTC)


class JobBoard:
    """The jobs of this daemon's life, and the queues of those waiting to run."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self.replays: asyncio.Queue[Job] = asyncio.Queue()
        self.others: asyncio.Queue[Job] = asyncio.Queue()

    def start(self, operation: Operation, arguments: BaseModel) -> JobStatus:
        status = JobStatus(id=f"job-{next(self._ids)}", operation=operation.name,
                           arguments=arguments.model_dump(mode="json"), started_at=datetime.now(UTC))
        job = Job(status, operation, arguments)
        self._jobs[status.id] = job
        (self.replays if operation.name == "replay" else self.others).put_nowait(job)
        return status

    def status(self, job_id: str) -> JobStatus:
        try:
            return self._jobs[job_id].status
        except KeyError:
            raise NotFound(f"no job {job_id!r} in this daemon's life") from None

    def all(self) -> list[JobStatus]:
        """Every job of this daemon's life, newest first."""
        return sorted((job.status for job in self._jobs.values()), key=lambda status: status.started_at, reverse=True)


def check_job(workspace: Workspace, arguments: BaseModel) -> None:
    """Refuse at once, naming the field, a job for a slot not configured, writing outside the
    workspace, or training neither or both of a named spec and all active ones."""
    if "all_active" in type(arguments).model_fields:
        check_train_selection(arguments.spec, arguments.all_active)
    slot = getattr(arguments, "slot", None)
    if slot is not None and slot not in workspace.config.slots:
        raise ConfigError(f"slot: {slot!r} is not configured in shadowzoo.yaml")
    out = getattr(arguments, "out", None)
    if out is not None:
        workspace_file(workspace, out)


def workspace_file(workspace: Workspace, out: str) -> Path:
    """Where a job writes `out` (relative to the workspace, or absolute): inside the workspace, or nowhere."""
    root = workspace.root.resolve()
    try:
        path = (root / out).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a loop of links
        raise ConfigError(f"out: {out!r} is not a usable path ({exc})") from None
    if not path.is_relative_to(root):
        raise ConfigError(f"out: {out!r} is outside the workspace {root}; the daemon writes only inside it")
    return path
