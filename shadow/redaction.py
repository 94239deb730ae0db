"""Per-slot redaction: regular expressions replaced in captured text before anything is stored.

Applied by the gateway's capture flusher and by `shadowzoo ingest traffic`, to every message
content (plain or in parts) of the request, to the output, and to every string in the
arguments of the answer's tool calls.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from registry import RedactionRule, Workspace
from shadow.records import SpoolRecord, TrafficRecord


class Redactor:
    """Per-slot regex replacements over message contents and outputs, before anything is stored."""

    def __init__(self, rules: dict[str, list[RedactionRule]]) -> None:
        self._rules = {slot: [(re.compile(r.pattern), r.replacement) for r in rs] for slot, rs in rules.items() if rs}

    @classmethod
    def for_workspace(cls, workspace: Workspace) -> "Redactor":
        return cls({slot: config.redact for slot, config in workspace.config.slots.items()})

    def apply_all(self, records: Iterable[SpoolRecord]) -> Iterator[SpoolRecord]:
        """Redact the traffic records of a stream; outcomes pass as they are."""
        for record in records:
            yield self.apply(record) if isinstance(record, TrafficRecord) else record

    def apply(self, record: TrafficRecord) -> TrafficRecord:
        rules = self._rules.get(record.slot)
        if not rules:
            return record
        scrub = lambda text: _scrub(text, rules)  # noqa: E731 - a local closure reads best here
        messages = [_scrub_message(m, scrub) for m in record.request.get("messages", [])]
        return record.model_copy(update={
            "request": {**record.request, "messages": messages},
            "output": scrub(record.output) if record.output else record.output,
            "tool_calls": [call.model_copy(update={"arguments": _scrub_value(call.arguments, scrub)})
                           for call in record.tool_calls] if record.tool_calls else record.tool_calls,
        })


def _scrub(text: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any, scrub: Any) -> Any:
    """A JSON value with every string in it (keys aside) scrubbed."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrub_value(item, scrub) for item in value]
    if isinstance(value, dict):
        return {key: _scrub_value(item, scrub) for key, item in value.items()}
    return value


def _scrub_message(message: Any, scrub: Any) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": scrub(content)}
    if isinstance(content, list):
        parts = [{**p, "text": scrub(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                 for p in content]
        return {**message, "content": parts}
    return message
