"""Edits to a skill document, and its protected slow-update region.

An edit is `{"op", "target", "content"}` with op `append`, `insert_after`, `replace` or
`delete`. Applying one yields a status (`applied_replace`, `skipped_replace_target_not_found`,
…) that the step's artifacts keep. The slow update writes its guidance between two marker
comments; ordinary edits see only the text outside that region, so they can neither change
it nor move the markers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Op = Literal["append", "insert_after", "replace", "delete"]
OPS: tuple[str, ...] = ("append", "insert_after", "replace", "delete")
PROTECTED_START = "<!-- slow-update:start (written by training; edits may not touch) -->"
PROTECTED_END = "<!-- slow-update:end -->"
MARKER_STEM = "<!-- slow-update:"


@dataclass(frozen=True)
class Edit:
    """One proposed change to the skill."""

    op: Op
    content: str = ""
    target: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_edit(raw: Any) -> Edit | None:
    """An edit from optimizer JSON, or None when it is not one (unknown op, missing text)."""
    if not isinstance(raw, dict) or raw.get("op") not in OPS:
        return None
    content, target = raw.get("content") or "", raw.get("target") or ""
    if not isinstance(content, str) or not isinstance(target, str):
        return None
    op = raw["op"]
    if op in ("append", "insert_after", "replace") and not content.strip():
        return None
    if op in ("replace", "delete") and not target.strip():
        return None
    return Edit(op=op, content=content.strip(), target=target.strip())


def split_protected(skill: str) -> tuple[str, str]:
    """The editable body and the protected region (markers included; '' when there is none)."""
    start = skill.find(PROTECTED_START)
    end = skill.find(PROTECTED_END, start)
    if start < 0 or end < 0:
        return skill, ""
    return skill[:start].rstrip("\n"), skill[start:end + len(PROTECTED_END)]


def join_protected(body: str, region: str) -> str:
    """The skill from its body and protected region, the region last."""
    body = body.rstrip("\n")
    return f"{body}\n\n{region}\n" if region else f"{body}\n"


def set_guidance(skill: str, guidance: str) -> str:
    """The skill with its protected region holding `guidance` (created at the end if absent)."""
    body, _ = split_protected(skill)
    return join_protected(body, f"{PROTECTED_START}\n{guidance.strip()}\n{PROTECTED_END}")


def apply_edits(skill: str, edits: list[Edit]) -> tuple[str, list[str]]:
    """Apply the edits in order to the body; return the new skill and one status per edit."""
    body, region = split_protected(skill)
    statuses = []
    for edit in edits:
        body, status = _apply(body, region, edit)
        statuses.append(status)
    return join_protected(body, region), statuses


def _apply(body: str, region: str, edit: Edit) -> tuple[str, str]:
    if MARKER_STEM in edit.content or MARKER_STEM in edit.target:
        return body, f"skipped_{edit.op}_protected_region"
    if edit.op == "append":
        return f"{body.rstrip()}\n{edit.content}", "applied_append"
    if edit.target and edit.target not in body and edit.target in region:
        return body, f"skipped_{edit.op}_protected_region"
    if edit.op == "insert_after":
        return _insert_after(body, edit)
    if edit.target not in body:
        return body, f"skipped_{edit.op}_target_not_found"
    if edit.op == "replace":
        return body.replace(edit.target, edit.content, 1), "applied_replace"
    return body.replace(edit.target, "", 1), "applied_delete"


def _insert_after(body: str, edit: Edit) -> tuple[str, str]:
    """After the line holding the target; with the target absent, at the end (as SKILLOPT.md says)."""
    lines = body.split("\n")
    for index, line in enumerate(lines):
        if edit.target and edit.target in line:
            lines.insert(index + 1, edit.content)
            return "\n".join(lines), "applied_insert_after"
    return f"{body.rstrip()}\n{edit.content}", "applied_insert_after_appended"
