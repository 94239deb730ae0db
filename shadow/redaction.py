"""Per-slot redaction: regular expressions replaced in captured text before anything is stored.

Applied by the gateway's capture flusher (chat requests, `/v1/capture` bodies, feedback) and
by `shadowzoo ingest` (traffic and outcomes files), to every string a record holds: each
value anywhere in the request (message contents and names, tool-call arguments, `user`,
`metadata`, …), its tags, the answer (text, tool calls, error), the client's request id and an
outcome's value. Only what shadowzoo itself needs to find a record is left alone: its own
request id, the slot, the version, timestamps, status and token counts.

An outcome names no slot, so outcomes, and the client request ids they are joined by, are
redacted with the rules of every slot together: a client id is rewritten the same way on
its traffic and on its feedback, and they still join.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from registry import RedactionRule, Workspace
from shadow.spool_records import OutcomeRecord, SpoolRecord

Rules = list[tuple[re.Pattern[str], str]]
_KEPT = frozenset({"type", "request_id", "slot", "received_at", "champion_version", "status", "latency_ms", "usage",
                   "stream", "partial", "source", "kind"})
"""Record fields that are never redacted: shadowzoo's own keys and measurements."""
_OWN_ID_PREFIXES = ("szr_", "szf_")


class Redactor:
    """Per-slot regex replacements over every text field of a record, before anything is stored."""

    def __init__(self, rules: dict[str, list[RedactionRule]]) -> None:
        self._rules = {slot: [(re.compile(r.pattern), r.replacement) for r in rs] for slot, rs in rules.items() if rs}
        every = {(rule.pattern, rule.replacement): rule for rs in rules.values() for rule in rs}
        self._every_slot: Rules = [(re.compile(pattern), replacement) for pattern, replacement in every]

    @classmethod
    def for_workspace(cls, workspace: Workspace) -> "Redactor":
        return cls({slot: config.redact for slot, config in workspace.config.slots.items()})

    def apply_all(self, records: Iterable[SpoolRecord]) -> Iterator[SpoolRecord]:
        """Redact every record of a stream."""
        for record in records:
            yield self.apply(record)

    def apply(self, record: SpoolRecord) -> SpoolRecord:
        """The record with every text field redacted (the record itself when no rule applies)."""
        if isinstance(record, OutcomeRecord):
            return self._outcome(record)
        rules = self._rules.get(record.slot)
        if not rules and not self._every_slot:
            return record
        changes = {name: _scrub(getattr(record, name), rules or [])
                   for name in type(record).model_fields if name not in _KEPT and name != "client_request_id"}
        changes["client_request_id"] = self._request_key(record.client_request_id)
        return record.model_copy(update=changes)

    def _outcome(self, record: OutcomeRecord) -> OutcomeRecord:
        if not self._every_slot:
            return record
        return record.model_copy(update={"request_key": self._request_key(record.request_key),
                                         "value": _scrub(record.value, self._every_slot)})

    def _request_key(self, key: str | None) -> str | None:
        """A client's request id, redacted by every slot's rules; shadowzoo's own ids are kept."""
        if key is None or key.startswith(_OWN_ID_PREFIXES):
            return key
        return _scrub(key, self._every_slot)


def _scrub(value: Any, rules: Rules) -> Any:
    """`value` with every string in it (at any depth of lists and dicts) redacted; keys are kept."""
    if isinstance(value, str):
        for pattern, replacement in rules:
            value = pattern.sub(replacement, value)
        return value
    if isinstance(value, dict):
        return {key: _scrub(item, rules) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub(item, rules) for item in value]
    if isinstance(value, BaseModel):  # a tool call
        return value.model_copy(update={name: _scrub(item, rules) for name, item in value})
    return value
