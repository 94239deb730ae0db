"""The CLI's side of the admin API: the operator's operations, sent to the running daemon.

`RemoteOperations` has the methods of `LocalOperations`, so every command works the same
whether it runs here or in the daemon. Errors come back as the same exception kinds with
the same messages, so the CLI prints what it would have printed locally.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any, Callable

from pydantic import BaseModel, TypeAdapter

from ops.jobs import JobRequest, JobStatus
from registry import ConfigError, DatabaseError, Move, NewVariant, NotFound, Refused, Registration, ShadowzooError, Variant
from scorer.leaderboard_model import EvidencePoint, Leaderboard
from scorer.browse import RequestFilter, RequestPage
from scorer.trace import RequestTrace
from shadow.pauses import Pause

ERRORS = {404: NotFound, 409: Refused, 400: ConfigError}
TIMEOUT_S = 300.0
JOB_POLL_S = 0.5


class RemoteOperations:
    """Operator operations done by the daemon at `base_url`."""

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token

    def _call(self, method: str, path: str, answer: Any, body: BaseModel | dict | None = None,
              **query: str | list[str] | None) -> Any:
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None}, doseq=True)
        url = f"{self.base_url}{path}{'?' + params if params else ''}"
        data = None
        if body is not None:
            data = body.model_dump_json().encode() if isinstance(body, BaseModel) else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token or ''}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return TypeAdapter(answer).validate_json(response.read())
        except urllib.error.HTTPError as exc:
            raise _error(exc) from None
        except urllib.error.URLError as exc:
            raise DatabaseError(f"the daemon at {self.base_url} did not answer ({exc.reason}); is it running?") from None

    def champion(self, slot: str) -> Variant | None:
        return self._call("GET", "/admin/champion", Variant | None, slot=slot)

    def latest_with_label(self, slot: str, label: str) -> Variant | None:
        return self._call("GET", "/admin/variants-by-label", Variant | None, slot=slot, label=label)

    def variant_with_fingerprint(self, slot: str, fingerprint: str) -> Variant | None:
        return self._call("GET", "/admin/variants-by-fingerprint", Variant | None, slot=slot, fingerprint=fingerprint)

    def skill_text(self, sha: str) -> str:
        return self._call("GET", f"/admin/skills/{sha}", str)

    def variant(self, version_id: str) -> Variant:
        return self._call("GET", f"/admin/variants/{urllib.parse.quote(version_id)}", Variant)

    def variants(self, slot: str | None = None, status: str | None = None) -> list[Variant]:
        return self._call("GET", "/admin/variants", list[Variant], slot=slot, status=status)

    def history(self, slot: str) -> list[Move]:
        return self._call("GET", "/admin/history", list[Move], slot=slot)

    def register(self, new: NewVariant) -> Registration:
        return self._call("POST", "/admin/variants", Registration, new)

    def promote(self, slot: str, version_id: str, actor: str, reason: str | None, force: bool) -> Move:
        return self._call("POST", "/admin/promote", Move, {"slot": slot, "version_id": version_id, "actor": actor,
                                                           "reason": reason, "force": force})

    def rollback(self, slot: str, actor: str, reason: str | None) -> Move:
        return self._call("POST", "/admin/rollback", Move, {"slot": slot, "actor": actor, "reason": reason})

    def retire(self, version_id: str, actor: str, reason: str | None) -> Move:
        return self._call("POST", "/admin/retire", Move, {"version_id": version_id, "actor": actor, "reason": reason})

    def pause(self, version_id: str | None, actor: str, reason: str | None) -> Pause:
        return self._call("POST", "/admin/pause", Pause, {"version_id": version_id, "actor": actor, "reason": reason})

    def resume(self, version_id: str | None) -> Pause | None:
        return self._call("POST", "/admin/resume", Pause | None, {"version_id": version_id})

    def pauses(self) -> list[Pause]:
        return self._call("GET", "/admin/pauses", list[Pause])

    def leaderboard(self, slot: str, since: datetime | None = None, where: dict[str, str] | None = None) -> Leaderboard:
        return self._call("GET", "/admin/leaderboard", Leaderboard, slot=slot, since=since.isoformat() if since else None,
                          where=[f"{key}={value}" for key, value in (where or {}).items()])

    def evidence_history(self, slot: str) -> list[EvidencePoint]:
        return self._call("GET", "/admin/evidence", list[EvidencePoint], slot=slot)

    def trace(self, key: str, slot: str | None = None) -> RequestTrace:
        return self._call("GET", f"/admin/requests/{urllib.parse.quote(key, safe='')}", RequestTrace, slot=slot)

    def requests(self, request: RequestFilter) -> RequestPage:
        query = {name: str(value).lower() if isinstance(value, bool) else str(value)
                 for name, value in request.model_dump(mode="json", exclude_none=True, exclude_defaults=True,
                                                       exclude={"tags"}).items()}
        return self._call("GET", "/admin/requests", RequestPage, **query,
                          tag=[f"{key}={value}" for key, value in request.tags.items()])

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/admin/status", dict)

    def run_job(self, request: JobRequest, progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """Start a daemon job and follow it to its end."""
        job = self._call("POST", "/admin/jobs", JobStatus, request)
        while job.state in ("queued", "running"):
            if progress is not None:
                progress(job)
            time.sleep(JOB_POLL_S)
            job = self._call("GET", f"/admin/jobs/{job.id}", JobStatus)
        if progress is not None:
            progress(job)
        return job


def _error(exc: urllib.error.HTTPError) -> ShadowzooError:
    try:
        message = json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"the daemon answered {exc.code} {exc.reason}"
    if exc.code == 401:
        return ShadowzooError(f"the daemon refused the admin token: {message} (set SHADOWZOO_ADMIN_TOKEN)")
    return ERRORS.get(exc.code, ShadowzooError)(message)
