"""The operation table: every `Operations` method as an admin API route, and the errors both sides share.

Each row names an operation, its HTTP method and path, and whether it is long work (a
job). Its arguments model, result type and progress type are read from the method's
signature in `ops.operations.Operations`, so the protocol is the one place they are
written. From the rows, `ops.admin` builds the routes and the OpenAPI document and
`ops.client` builds the remote methods. `GET` routes take their arguments from the query
and path and never write; `POST` routes take a JSON body. A method whose one argument is a
model (a registration, a request filter) takes that model whole as its body or query.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

from ops.protocol import Operations
from registry import ConfigError, NotFound, Refused, ShadowzooError
from registry.errors import validated
from shadow.tags import parse_where

ERRORS: tuple[tuple[type[ShadowzooError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (Refused, 409, "refused"),
    (ConfigError, 400, "invalid"),
)
"""An error kind, its HTTP status and its type name: the daemon answers with them, the client raises them back."""


def error_status(exc: ShadowzooError) -> tuple[int, str]:
    """The status and type name an error is answered with (any other `ShadowzooError` is invalid input)."""
    return next(((status, name) for kind, status, name in ERRORS if isinstance(exc, kind)), (400, "invalid"))


def error_of(name_or_status: str | int | None, message: str) -> ShadowzooError:
    """The exception an answer's error type (or status) stands for, with the daemon's own message."""
    kind = next((kind for kind, status, name in ERRORS if name_or_status in (status, name)), ShadowzooError)
    return kind(message)


@dataclass(frozen=True)
class Operation:
    """One row of the table: an `Operations` method and how it travels over HTTP."""

    name: str
    method: str
    path: str
    summary: str
    job: bool = False

    @cached_property
    def _hints(self) -> dict[str, Any]:
        return typing.get_type_hints(getattr(Operations, self.name), include_extras=True)  # constraints too

    @cached_property
    def parameters(self) -> list[str]:
        """The method's parameters, in order, without `self` and `progress`."""
        signature = inspect.signature(getattr(Operations, self.name))
        return [name for name in signature.parameters if name not in ("self", "progress")]

    @cached_property
    def whole(self) -> bool:
        """The one argument is a model, sent as the body (or query) itself."""
        hint = self._hints[self.parameters[0]] if len(self.parameters) == 1 else None
        return isinstance(hint, type) and issubclass(hint, BaseModel)

    @cached_property
    def arguments(self) -> type[BaseModel]:
        """The arguments as one model; an unknown or misspelt key is an error naming it."""
        if self.whole:
            return self._hints[self.parameters[0]]
        defaults = inspect.signature(getattr(Operations, self.name)).parameters
        fields = {name: (self._hints[name], ... if defaults[name].default is inspect.Parameter.empty
                         else defaults[name].default) for name in self.parameters}
        title = "".join(part.capitalize() for part in self.name.split("_")) + "Arguments"
        return create_model(title, __config__=ConfigDict(extra="forbid"), **fields)

    @property
    def result(self) -> Any:
        return self._hints["return"]

    @cached_property
    def progress(self) -> Any:
        """What the operation's progress callback receives (None: it reports none)."""
        hint = self._hints.get("progress")
        if hint is None:
            return None
        callback = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        return typing.get_args(callback)[0][0]

    @cached_property
    def path_fields(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    def bind(self, args: tuple, kwargs: dict[str, Any]) -> BaseModel:
        """A call's arguments as the arguments model (checked as the daemon checks them)."""
        if self.whole:
            return args[0] if args else kwargs[self.parameters[0]]
        return validated(self.arguments, {**dict(zip(self.parameters, args)), **kwargs}, "arguments")

    def invoke(self, operations: Operations, arguments: BaseModel,
               progress: Callable[[Any], None] | None = None) -> Any:
        """Call the operation on `operations` with the arguments model (and progress, for long work)."""
        function = getattr(operations, self.name)
        extra = {"progress": progress} if progress is not None else {}
        if self.whole:
            return function(arguments, **extra)
        return function(**{name: getattr(arguments, name) for name in self.parameters}, **extra)

    def query_names(self) -> dict[str, str]:
        """Each argument's query parameter name (a field's alias where it has one)."""
        return {name: field.alias or name for name, field in self.arguments.model_fields.items()}


OPERATIONS: tuple[Operation, ...] = (
    Operation("status", "GET", "/admin/status", "Daemon health, spool lag, queue, budgets, pauses, last jobs, routes drift."),
    Operation("variants", "GET", "/admin/variants", "Registered variants, oldest first."),
    Operation("variant", "GET", "/admin/variants/{version_id}", "One variant."),
    Operation("champion", "GET", "/admin/champion", "A slot's champion (null when it has none)."),
    Operation("latest_with_label", "GET", "/admin/variants-by-label", "The newest active variant with a label."),
    Operation("variant_with_fingerprint", "GET", "/admin/variants-by-fingerprint", "The variant with a config fingerprint."),
    Operation("skill_text", "GET", "/admin/skills/{sha}", "A skill document by sha256."),
    Operation("history", "GET", "/admin/history", "A slot's audit log."),
    Operation("pauses", "GET", "/admin/pauses", "Current pauses."),
    Operation("leaderboard", "GET", "/admin/leaderboard", "A slot's leaderboard as last scored and stored (writes nothing)."),
    Operation("evidence_history", "GET", "/admin/evidence", "How each challenger's evidence grew."),
    Operation("trace", "GET", "/admin/requests/{request_id}",
              "One request traced: every answer, its metrics, net value and pair (by request id or client request id)."),
    Operation("requests", "GET", "/admin/requests",
              "A page of a slot's requests: disagreements, errors, or the worst paired net differences."),
    Operation("jobs", "GET", "/admin/jobs", "The jobs of this daemon's life, newest first."),
    Operation("job", "GET", "/admin/jobs/{job_id}", "A job's progress and result."),
    Operation("register", "POST", "/admin/variants", "Register a resolved variant (idempotent)."),
    Operation("promote", "POST", "/admin/promote", "Promote on evidence (or by force, with a reason)."),
    Operation("rollback", "POST", "/admin/rollback", "Move the champion back one promotion."),
    Operation("retire", "POST", "/admin/retire", "Retire a challenger."),
    Operation("reactivate", "POST", "/admin/reactivate", "Make a retired variant a challenger again."),
    Operation("pause", "POST", "/admin/pause", "Pause one challenger's shadow calls, or all."),
    Operation("resume", "POST", "/admin/resume", "Resume one challenger, or all."),
    Operation("forget_host", "POST", "/admin/gateway-hosts/forget",
              "Forget a gateway host taken out of service (backend: distributed), silent for a while."),
    Operation("score", "POST", "/admin/leaderboard",
              "Score a slot now (judge calls included) and store its leaderboard; a `where` slice is never stored."),
    Operation("ingest", "POST", "/admin/jobs/ingest", "Ingest the spool now, as a job.", job=True),
    Operation("replay", "POST", "/admin/jobs/replay", "Replay captured traffic against the slot's challengers, as a job.",
              job=True),
    Operation("train", "POST", "/admin/jobs/train", "Train a spec's skill (or the stalest active specs), as a job.",
              job=True),
    Operation("report", "POST", "/admin/jobs/report", "Score a slot and render its report (HTML or Markdown), as a job.",
              job=True),
    Operation("export", "POST", "/admin/jobs/export",
              "Export a slot's answers to a file inside the workspace, as a job.", job=True),
)
BY_NAME = {operation.name: operation for operation in OPERATIONS}


def query_pairs(operation: Operation, arguments: BaseModel) -> list[tuple[str, str]]:
    """A GET call's arguments as query parameters: a tag map as repeated `name=key=value`, a flag as true/false."""
    pairs: list[tuple[str, str]] = []
    for name, query_name in operation.query_names().items():
        value = getattr(arguments, name)
        if value is None or name in operation.path_fields:
            continue
        if isinstance(value, dict):
            pairs += [(query_name, f"{key}={item}") for key, item in value.items()]
        elif isinstance(value, list):
            pairs += [(query_name, str(item)) for item in value]
        else:
            pairs.append((query_name, _text(value)))
    return pairs


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def arguments_of_query(operation: Operation, query: Any, path: dict[str, str]) -> BaseModel:
    """A GET request's arguments from its query (a multidict) and path; else a `ConfigError` naming the parameter."""
    shapes = {query_name: _shape(operation.arguments.model_fields[name].annotation)
              for name, query_name in operation.query_names().items()}
    data: dict[str, Any] = dict(path)
    for name in set(query.keys()):
        values = query.getall(name)
        if shapes.get(name) == "map":
            try:
                data[name] = parse_where(values, option=name)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        else:
            data[name] = values if shapes.get(name) == "list" else values[-1]
    return validated(operation.arguments, data, "query parameter")


def query_shape(operation: Operation, name: str) -> str:
    """scalar, list or map: how an argument travels in a query."""
    return _shape(operation.arguments.model_fields[name].annotation)


def _shape(annotation: Any) -> str:
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = [arg for arg in typing.get_args(annotation) if arg is not type(None)] if union else [annotation]
    origin = typing.get_origin(options[0]) if options else None
    return "map" if origin is dict else "list" if origin is list else "scalar"
