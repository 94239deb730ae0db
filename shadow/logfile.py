"""JSONL files an application logged itself (observer mode), read into spool records.

A traffic file holds one OpenAI request/response log per line::

    {"slot": "support-triage", "request": {...chat request...}, "response": {...chat.completion...},
     "latency_ms": 412, "request_id": "...", "client_request_id": "...", "received_at": "2025-03-01T12:00:00Z"}

The answer is the response's first choice: its `message.content` and its
`message.tool_calls` (each call's `function.name` and `function.arguments`, the JSON string
parsed when valid). `slot` may come from `--slot` instead; `request_id`,
`client_request_id`, `received_at`, `status`, `usage` and `champion_version` are optional
(an exchange is the answer of the slot's champion when it was received, unless it names
the registered version that gave it); a line with an `error` (a message, or an OpenAI
error object) needs no `response`. Lines are checked by `shadow.exchange.Exchange`, the
model the gateway's `/v1/capture` uses too. An outcomes file holds `{"request_id": ..., "label": <any JSON>}` or
`{"request_id": ..., "kind": "label" | "reaction", "value": <any JSON>}` per line, keyed by
`request_id` or `client_request_id`.

A file is all or nothing: its records are written as segments into a hidden directory of
the spool and published only once every line has been read, so the first bad line is an
error naming the file, the line and the field, and nothing of the file reaches the spool.
A line without a `request_id` gets one derived from its content, so loading the same
file twice never stores a request twice.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from registry import ShadowzooError, canonical_json, sha256_text
from registry.errors import first_problem
from shadow.exchange import Exchange, parse_json
from shadow.spool_records import OutcomeRecord, SpoolRecord, TrafficRecord
from shadow.outcome import LoggedOutcome
from shadow.spool import write_segment

SEGMENT_LINES = 10_000
_Line = TypeVar("_Line", bound=BaseModel)
LineProgress = Callable[[int], None]
"""Called with the size in bytes of each line read, for a progress bar."""


class LogFileError(ShadowzooError):
    """A line of a log file that cannot be loaded; the message names the file, the line and the field."""


def read_traffic_log(
    path: Path,
    slot: str | None = None,
    slots: Collection[str] | None = None,
    now: datetime | None = None,
    progress: LineProgress | None = None,
) -> Iterator[TrafficRecord]:
    """Traffic records of a request/response log; `slot` is for lines without one.

    With `slots`, a line naming any other slot is an error. Lines without `received_at`
    are stamped `now` (by default, when reading starts).
    """
    stamp = now or datetime.now(UTC)
    for number, raw in _json_lines(path, progress):
        line = _validated(path, number, raw, Exchange)
        line_slot = line.slot or slot
        if line_slot is None:
            raise LogFileError(f"{path}: line {number}: field 'slot': missing (give it in the line or with --slot)")
        if slots is not None and line_slot not in slots:
            known = ", ".join(sorted(slots)) or "none"
            raise LogFileError(f"{path}: line {number}: field 'slot': {line_slot!r} is not configured (slots: {known})")
        yield line.record(line_slot, line.request_id or _derived_request_id(line_slot, raw), stamp, "file")


def read_outcome_log(
    path: Path, now: datetime | None = None, progress: LineProgress | None = None
) -> Iterator[OutcomeRecord]:
    """Outcome records (labels and reactions) of an outcomes file; `request_id` wins over `client_request_id`."""
    stamp = now or datetime.now(UTC)
    for number, raw in _json_lines(path, progress):
        line = _validated(path, number, raw, LoggedOutcome)
        yield line.record(line.received_at or stamp)


@dataclass
class Spooled:
    """What `spool_records` wrote: the segments, now ready in the spool, and how many records they hold."""

    segments: list[Path]
    records: int


def spool_records(records: Iterable[SpoolRecord], spool_dir: Path, per_segment: int = SEGMENT_LINES) -> Spooled:
    """Write records into the spool as segments, all or none: none is visible until all were read.

    Segments are written into a hidden directory of the spool (never listed as ready) and
    renamed into place at the end; if reading fails, the directory is removed.
    """
    spool_dir.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=spool_dir))
    try:
        lines = (record.model_dump_json().encode() for record in records)
        written, count = [], 0
        while chunk := list(islice(lines, per_segment)):
            written.append(write_segment(incoming, chunk))
            count += len(chunk)
        for path in written:
            os.replace(path, spool_dir / path.name)
        return Spooled([spool_dir / path.name for path in written], count)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _json_lines(path: Path, progress: LineProgress | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LogFileError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if progress is not None:
                progress(len(line))
            if not line.strip():
                continue
            try:
                value = parse_json(line)
            except ValueError as exc:
                raise LogFileError(f"{path}: line {number}: not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise LogFileError(f"{path}: line {number}: expected a JSON object, got {type(value).__name__}")
            yield number, value


def _validated(path: Path, number: int, raw: dict[str, Any], model: type[_Line]) -> _Line:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        where, what = first_problem(exc)
        field = f"field '{where}': " if where else ""
        raise LogFileError(f"{path}: line {number}: {field}{what}") from None


def _derived_request_id(slot: str, raw: dict[str, Any]) -> str:
    """A request id that is the same whenever the same line is loaded for the same slot."""
    return f"szf_{sha256_text(canonical_json([slot, raw]))[:24]}"
