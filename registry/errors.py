"""Errors a user can act on.

Every failure that bad input, a missing file or a refused operation can cause is raised as
a `ShadowzooError`: its message names the file, key or object and says what was expected,
so the CLI and the APIs can show it as is, without a traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pydantic import BaseModel

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


def validated(model: type[Model], data: bytes | dict[str, object], what: str) -> Model:
    """`data` (a JSON body, or query or form fields) as `model`; else a `ConfigError` naming the first bad field
    (`what` when the whole of it is wrong)."""
    from pydantic import ValidationError

    try:
        return model.model_validate_json(data) if isinstance(data, bytes) else model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{'.'.join(str(p) for p in first['loc']) or what}: {message}") from None
