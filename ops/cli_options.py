"""Options and arguments several `shadowzoo` commands share, so each reads and fails alike.

`--since` takes the same forms wherever it appears; `--json` says the same thing; a version
argument takes a version id or a unique label; `--reason` is required where the audit log
must say why.
"""

from __future__ import annotations

import difflib
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

from registry.errors import NotFound, ShadowzooError

if TYPE_CHECKING:
    from registry import Variant

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, for the audit log (required).")]

SINCE_FORMS = "a span back from now (14d, 6h, 30m) or an ISO date or time, UTC unless it names a zone (2026-01-31, 2026-01-31T12:00)"
_SPAN = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_since(value: str) -> datetime:
    """A naive UTC moment from a span back from now (`14d`) or ISO text; a usage error naming the forms otherwise."""
    text = value.strip()
    span = _SPAN.match(text)
    if span:
        amount, unit = span.groups()
        return datetime.now(UTC).replace(tzinfo=None) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a time: expected {SINCE_FORMS}") from None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def since_option(what: str) -> Any:
    """The `--since` option type: `what` it limits, parsed by `parse_since`."""
    return Annotated[
        datetime | None, typer.Option("--since", parser=parse_since, metavar="WHEN", help=f"{what}: 14d, 6h, 30m or an ISO time (UTC unless zoned).")
    ]


def version_id(operations: Any, text: str, slot: str | None = None, option: str | None = None) -> str:
    """The version id `text` names: an id, or a label only one variant (of `slot`, if given) has.

    `operations` is local or the daemon's client: anything with `variants(slot=...)`. An
    ambiguous label lists its variants; an unknown name says where it was looked for. The
    message starts with the `option` that gave `text`, when there is one.
    """
    prefix = f"{option}: " if option else ""
    known: list[Variant] = operations.variants(slot=slot)
    if any(v.version_id == text for v in known):
        return text
    matches = [v for v in known if v.label == text]
    if len(matches) == 1:
        return matches[0].version_id
    if matches:
        listed = ", ".join(f"{v.version_id} ({v.slot}, {v.status})" for v in matches)
        raise ShadowzooError(f"{prefix}label {text!r} names {len(matches)} variants: {listed}; give the version id")
    raise NotFound(prefix + _unknown(text, slot, known))


def _unknown(text: str, slot: str | None, known: list[Variant]) -> str:
    where = f"slot {slot!r}" if slot else "any slot"
    message = f"no variant of {where} has the version id or label {text!r}"
    close = difflib.get_close_matches(text, sorted({v.version_id for v in known} | {v.label for v in known}), n=3)
    if close:
        message += f" (did you mean {', '.join(close)}?)"
    return message + " (see `shadowzoo variants list" + (f" --slot {slot}`)" if slot else "`)")
