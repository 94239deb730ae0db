"""What hostile traffic may cost a gateway's log: one line per event, a few per minute per kind.

A flood of malformed or aborted requests must not flood the log (a header flood once grew it
by 138k lines in 30 s). `LineLimit` filters a worker's log handler: every record is kept on
one line (aiohttp's and asyncio's tracebacks, which describe a client's bytes or a dropped
socket rather than our code, become `ErrorType: message`), and each kind of line (logger,
message template, exception type) is kept at most `lines` times per `interval_s`. The rest
are counted, and reported as one "suppressed" line when that kind is next logged, or on `flush`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

LINES_PER_KIND = 10
INTERVAL_S = 60.0
MAX_KINDS = 512
THIRD_PARTY = ("aiohttp", "asyncio")


@contextmanager
def process_log() -> Iterator[None]:
    """Log this gateway-side process to stderr through a `LineLimit`; say what it suppressed at exit."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    lines = LineLimit(handler)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    try:
        yield
    finally:
        lines.flush()


@dataclass
class _Window:
    """One kind's current interval: when it opened, lines let through, lines suppressed."""

    opened: float
    passed: int = 0
    suppressed: int = 0


class LineLimit(logging.Filter):
    """A filter for `handler` that keeps each record on one line and rate-limits each kind."""

    def __init__(self, handler: logging.Handler, lines: int = LINES_PER_KIND, interval_s: float = INTERVAL_S) -> None:
        super().__init__()
        self.handler = handler
        self.lines = lines
        self.interval_s = interval_s
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._lock = threading.Lock()
        handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "suppressed_summary", False):
            return True
        now = time.monotonic()
        with self._lock:
            kind = self._kind(record)
            window = self._windows.get(kind)
            ended = window if window is not None and now - window.opened >= self.interval_s else None
            if window is None or ended is not None:
                window = self._windows[kind] = _Window(opened=now)
            window.passed += 1
            passed = window.passed <= self.lines
            window.suppressed += not passed
        if ended is not None and ended.suppressed:
            self._summarise(kind, ended)
        if passed:
            _one_line(record)
        return passed

    def flush(self) -> None:
        """Report what is suppressed so far (at shutdown)."""
        with self._lock:
            pending = [(kind, window) for kind, window in self._windows.items() if window.suppressed]
            self._windows.clear()
        for kind, window in pending:
            self._summarise(kind, window)

    def _kind(self, record: logging.LogRecord) -> tuple[str, str, str]:
        """(logger, message template, exception type); past MAX_KINDS, kinds of one logger share a window."""
        error = record.exc_info[1] if record.exc_info else None
        kind = (record.name, str(record.msg), type(error).__name__ if error is not None else "")
        if kind not in self._windows and len(self._windows) >= MAX_KINDS:
            return record.name, "(other)", ""
        return kind

    def _summarise(self, kind: tuple[str, str, str], window: _Window) -> None:
        name, template, error_type = kind
        summary = logging.makeLogRecord({
            "name": name, "levelno": logging.WARNING, "levelname": "WARNING", "suppressed_summary": True,
            "msg": "suppressed %d similar line(s) within %.0f s: %s%s",
            "args": (window.suppressed, min(time.monotonic() - window.opened, self.interval_s),
                     " ".join(template.split())[:200],
                     f" ({error_type})" if error_type else ""),
        })
        self.handler.handle(summary)


def _one_line(record: logging.LogRecord) -> None:
    """Fold the record's message onto one line; a third-party traceback becomes `Type: first line`."""
    message = record.getMessage()
    error = record.exc_info[1] if record.exc_info else None
    if error is not None and record.name.startswith(THIRD_PARTY):
        first = (str(error).strip().splitlines() or [""])[0]
        message = f"{message}: {type(error).__name__}: {first}"
        record.exc_info, record.exc_text = None, None
    elif "\n" not in message:
        return
    record.msg, record.args = " ".join(message.split()), None
