"""The spool: append-only segment files between the gateway workers and the daemon.

Writers (gateway workers, `shadowzoo ingest FILE`, observer capture) write a whole segment
to a hidden temp file and rename it into place, so a reader only ever sees complete
segments. Names sort by creation time. The daemon's ingest reads ready segments, records
each by name in the database, and then deletes it. Whatever it cannot store goes to
`quarantine/` with a note of why, and never blocks the rest: a bad line is copied there
while the good lines of its segment are stored; an entry that cannot be read at all (or
whose every line is bad) is moved there whole.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from pydantic import TypeAdapter, ValidationError

from registry.atomic import write_atomic
from registry.errors import field_problems
from shadow.exchange import parse_json
from shadow.spool_records import SpoolRecord

SEGMENT_SUFFIX = ".jsonl"
QUARANTINE = "quarantine"
_record_adapter: TypeAdapter[SpoolRecord] = TypeAdapter(SpoolRecord)
_sequence = itertools.count()


def spool_dir(state_dir: Path) -> Path:
    return state_dir / "spool"


def write_segment(directory: Path, lines: Iterable[bytes]) -> Path:
    """Write one complete segment of JSON lines; returns its final path."""
    name = f"{int(time.time() * 1000):013d}-{os.getpid()}-{next(_sequence):08d}{SEGMENT_SUFFIX}"
    path = directory / name
    write_atomic(path, b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
    return path


def ready_segments(directory: Path) -> list[Path]:
    """Complete segments, oldest first (temp files are hidden and never listed)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == SEGMENT_SUFFIX and not p.name.startswith("."))


def segment_age_s(path: Path) -> float:
    """Seconds since a segment was written (0 when it is gone meanwhile)."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except FileNotFoundError:
        return 0.0


class CorruptSegment(ValueError):
    """A segment that cannot be parsed; the message says which line and why."""


@dataclass
class RejectedLine:
    """A line of a segment that holds no storable record."""

    number: int
    raw: bytes
    reason: str


@dataclass
class SegmentLines:
    """A segment read line by line: the records of its good lines, and its bad lines with why each is bad."""

    records: list[tuple[int, bytes, SpoolRecord]] = field(default_factory=list)
    """(line number, raw line, record) of each good line."""
    rejected: list[RejectedLine] = field(default_factory=list)


def read_lines(path: Path) -> SegmentLines:
    """Parse each line of a segment on its own; `CorruptSegment` only when it cannot be read at all."""
    read = SegmentLines()
    try:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    value = parse_json(line)
                    read.records.append((number, line, _record_adapter.validate_python(value)))
                except ValidationError as exc:
                    read.rejected.append(RejectedLine(number, line, _invalid(exc, value)))
                except ValueError as exc:
                    read.rejected.append(RejectedLine(number, line, f"not valid JSON: {first_line(exc)}"))
    except OSError as exc:
        raise CorruptSegment(f"{path.name}: cannot be read: {exc.strerror or exc}") from None
    return read


def read_segment(path: Path) -> list[SpoolRecord]:
    """Parse every line of a segment, or raise `CorruptSegment` naming the first bad line."""
    read = read_lines(path)
    if read.rejected:
        first = read.rejected[0]
        raise CorruptSegment(f"{path.name}: line {first.number}: {first.reason}")
    return [record for _, _, record in read.records]


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad segment (or whatever else sits in the spool under a segment's name) aside, with a note of why."""
    target = _quarantine_path(path.parent, path.name)
    os.replace(path, target)
    (target.parent / f"{target.name}.reason").write_text(reason + "\n")
    return target


def quarantine_lines(path: Path, rejected: list[RejectedLine]) -> Path:
    """Copy a segment's bad lines aside, one reason per line in the note; the segment itself stays.

    The copy has a name of its own, so once fixed it can be put back into the spool as a new segment.
    """
    target = _quarantine_path(path.parent, rejected_name(path.name))
    write_atomic(target, rejected_lines(rejected))
    write_atomic(target.parent / f"{target.name}.reason", rejected_notes(path.name, rejected))
    return target


def rejected_name(segment: str) -> str:
    """The name of the quarantined copy of a segment's bad lines."""
    return f"{segment.removesuffix(SEGMENT_SUFFIX)}-rejected{SEGMENT_SUFFIX}"


def rejected_lines(rejected: list[RejectedLine]) -> bytes:
    """A segment's bad lines, as a segment of their own."""
    return b"".join(line.raw if line.raw.endswith(b"\n") else line.raw + b"\n" for line in rejected)


def rejected_notes(segment: str, rejected: list[RejectedLine]) -> bytes:
    """The note beside quarantined lines: one line per record, saying where it was and why it is bad."""
    return "".join(f"{segment}: line {line.number}: {line.reason}\n" for line in rejected).encode()


def quarantined_records(directory: Path) -> int:
    """How many records the spool's quarantine holds: each note has one line per record
    (a note whose entry was moved back into the spool no longer counts)."""
    target_dir = directory / QUARANTINE
    if not target_dir.is_dir():
        return 0
    count = 0
    for note in target_dir.glob("*.reason"):
        if (target_dir / note.name.removesuffix(".reason")).exists():
            with note.open("rb") as handle:
                count += sum(1 for _ in handle)
    return count


def _invalid(exc: ValidationError, value: object) -> str:
    """The first problem with a line, as the record type it claims to be sees it (traffic by default)."""
    claimed = "OutcomeRecord" if isinstance(value, dict) and value.get("type") == "outcome" else "TrafficRecord"
    problems = field_problems(exc)
    mine = [p._replace(path=p.path.removeprefix(claimed).removeprefix(".")) for p in problems
            if p.path == claimed or p.path.startswith(claimed + ".")]
    where, what = (mine or problems)[0]
    return f"field '{where}': {what}" if where else what


def _quarantine_path(directory: Path, name: str) -> Path:
    target_dir = directory / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    return target_dir / name


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (its type when it has none)."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
