"""The spool: append-only segment files between the gateway workers and the daemon.

Writers (gateway workers, `shadowzoo ingest FILE`, observer capture) write a whole segment
to a hidden temp file and rename it into place, so a reader only ever sees complete
segments. Names sort by creation time. The daemon's ingest reads ready segments, records
each by name in the database, and then deletes it; a segment it cannot parse is moved to
`quarantine/` with a note of why, and never blocks the others.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Iterable

from pydantic import TypeAdapter, ValidationError

from registry.atomic import write_atomic
from shadow.records import SpoolRecord

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


class CorruptSegment(ValueError):
    """A segment that cannot be parsed; the message says which line and why."""


def read_segment(path: Path) -> list[SpoolRecord]:
    """Parse every line of a segment, or raise `CorruptSegment` naming the first bad line."""
    records = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(_record_adapter.validate_python(json.loads(line)))
            except (ValueError, ValidationError) as exc:
                raise CorruptSegment(f"{path.name}: line {number}: {_first_line(exc)}") from None
    return records


def quarantine(path: Path, reason: str) -> Path:
    """Move a bad segment aside, with a `.reason` note beside it."""
    target_dir = path.parent / QUARANTINE
    target_dir.mkdir(exist_ok=True)
    target = target_dir / path.name
    os.replace(path, target)
    (target_dir / f"{path.name}.reason").write_text(reason + "\n")
    return target


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
