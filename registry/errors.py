"""Errors a user can act on.

Every failure that bad input, a missing file or a refused operation can cause is raised as
a `ShadowzooError`: its message names the file, key or object and says what was expected,
so the CLI and the APIs can show it as is, without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError
    from pydantic_core import ErrorDetails

Model = TypeVar("Model", bound="BaseModel")


class ShadowzooError(Exception):
    """A failure caused by input or state the user can fix; the message says how."""


class ConfigError(ShadowzooError):
    """A configuration or spec file is missing, malformed or invalid."""


class NotFound(ShadowzooError):
    """A slot, variant or other named object does not exist."""


class Refused(ShadowzooError):
    """An operation is understood but not allowed in the current state."""


class DatabaseError(ShadowzooError):
    """The database cannot be opened or used (locked, too new, corrupt)."""


class FieldProblem(NamedTuple):
    """One problem pydantic found: the field's dotted path (empty for the input as a whole) and what was expected."""

    path: str
    expected: str

    def text(self, whole: str = "(top level)") -> str:
        """`path: expected`, with `whole` standing for the path of the input as a whole."""
        return f"{self.path or whole}: {self.expected}"


def field_path(loc: Iterable[str | int]) -> str:
    """A pydantic error location as a dotted key path, e.g. `models.sim-a.errors.http_500`."""
    return ".".join(str(part) for part in loc)


def expected(error: ErrorDetails, given: bool = False) -> str:
    """What the field should have been, in pydantic's words without its `Value error, ` prefix;
    with `given`, for a value of the wrong type or range, the value given as well."""
    message = error["msg"].removeprefix("Value error, ")
    if given and "input" in error and error["type"] not in ("value_error", "assertion_error"):
        message += f" (got {error['input']!r})"
    return message


def field_problems(exc: ValidationError) -> list[FieldProblem]:
    """Every problem of a failed validation, in the order pydantic found them."""
    return [FieldProblem(field_path(error["loc"]), expected(error)) for error in exc.errors(include_url=False)]


def first_problem(exc: ValidationError) -> FieldProblem:
    """The first problem of a failed validation: the one an error message names."""
    return field_problems(exc)[0]


def validated(model: type[Model], data: bytes | dict[str, object], what: str) -> Model:
    """`data` (a JSON body, or query or form fields) as `model`; else a `ConfigError` naming the first bad field
    (`what` when the whole of it is wrong)."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(first_problem(exc).text(what)) from None
