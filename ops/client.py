"""The CLI's side of the admin API: the operator's operations, sent to the running daemon.

`RemoteOperations` implements `ops.operations.Operations` from the operation table alone:
each method binds its arguments to the row's model and sends them (a GET's as query
parameters, a POST's as the JSON body). Long work starts a daemon job and follows it,
handing each progress report to the caller's callback, and returns the job's result as the
local operation would. Errors, the daemon's answers and failed jobs alike, come back as the
same exception kinds with the same messages, so the CLI prints what it would have printed
locally.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter

from ops.protocol import JobStatus
from ops.optable import OPERATIONS, Operation, error_of, query_pairs
from registry import DatabaseError, ShadowzooError

TIMEOUT_S = 300.0
JOB_POLL_S = 0.5


class RemoteOperations:
    """Operator operations done by the daemon at `base_url` (methods: one per row of `OPERATIONS`)."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def call(self, operation: Operation, arguments: BaseModel) -> Any:
        """Send one operation; its answer, validated as the row's result (a job's status, for long work)."""
        path = operation.path.format(**{name: urllib.parse.quote(str(getattr(arguments, name)), safe="")
                                        for name in operation.path_fields})
        data, params = None, ""
        if operation.method == "GET":
            params = urllib.parse.urlencode(query_pairs(operation, arguments))
        else:
            data = arguments.model_dump_json(by_alias=True).encode()
        answer = JobStatus if operation.job else operation.result
        return TypeAdapter(answer).validate_json(self._send(operation.method, path + (f"?{params}" if params else ""), data))

    def follow(self, job: JobStatus, operation: Operation, progress: Callable[[Any], None] | None) -> Any:
        """Poll a job to its end, reporting progress; its result, or its error raised as locally."""
        while True:
            if progress is not None and job.progress is not None:
                progress(TypeAdapter(operation.progress).validate_python(job.progress))
            if job.state not in ("queued", "running"):
                break
            time.sleep(JOB_POLL_S)
            job = self.job(job.id)  # type: ignore[attr-defined]  (a method made from the table)
        if job.state == "failed":
            raise error_of(job.error_type, job.error or "the job failed")
        return TypeAdapter(operation.result).validate_python(job.result)

    def _send(self, method: str, path: str, data: bytes | None) -> bytes:
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {self.token or ''}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except urllib.error.URLError as exc:
            raise DatabaseError(f"the daemon at {self.base_url} did not answer ({exc.reason}); is it running?") from None


def _method(operation: Operation) -> Callable[..., Any]:
    def method(self: RemoteOperations, *args: Any, progress: Callable[[Any], None] | None = None, **kwargs: Any) -> Any:
        answer = self.call(operation, operation.bind(args, kwargs))
        return self.follow(answer, operation, progress) if operation.job else answer

    method.__name__ = operation.name
    method.__doc__ = operation.summary
    return method


for _operation in OPERATIONS:
    setattr(RemoteOperations, _operation.name, _method(_operation))


def _error(exc: urllib.error.HTTPError) -> ShadowzooError:
    try:
        error = json.loads(exc.read())["error"]
        kind, message = error["type"], error["message"]
    except (ValueError, KeyError, TypeError):
        kind, message = exc.code, f"the daemon answered {exc.code} {exc.reason}"
    if exc.code == 401:
        return ShadowzooError(f"the daemon refused the admin token: {message} (the CLI reads it from the daemon's "
                              "admin-token file in state_dir, or from SHADOWZOO_ADMIN_TOKEN)")
    return error_of(kind, message)
