"""Report files: which format a file name asks for, and writing one for others to read."""

from __future__ import annotations

from pathlib import Path

from registry.atomic import write_atomic
from registry.errors import ConfigError

FORMATS = {".html": "html", ".htm": "html", ".md": "md"}
"""The format of a report file, by its extension."""
MODE = 0o644
"""Reports are for sharing: readable by the group and others (the umask still applies)."""


def report_format(path: Path) -> str:
    """`html` or `md`, as `path`'s extension says; any other extension is an error, never silently HTML."""
    chosen = FORMATS.get(path.suffix.lower())
    if chosen is None:
        raise ConfigError(f"{path}: a report file ends in {', '.join(FORMATS)} (HTML page or Markdown), "
                          f"not {path.suffix or 'no extension'!r}")
    return chosen


def write_report(path: Path, text: str) -> None:
    """Write a rendered report atomically, readable by others."""
    write_atomic(path, text.encode("utf-8"), mode=MODE)
