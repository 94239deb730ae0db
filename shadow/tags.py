"""Request tags: `key=value` pairs a client attaches to a request, to slice the evidence by.

A client gives them in the `x-shadowzoo-tags: k=v,k2=v2` header of a chat request, or as
`tags` of an exchange posted to `/v1/capture` or loaded with `ingest traffic`. They are
bounded (at most `MAX_TAGS`, keys of `[A-Za-z0-9_.-]` up to `MAX_KEY_CHARS`, values up to
`MAX_VALUE_CHARS` without a comma) and redacted like every other string of a capture.

The request's own OpenAI fields are tags too, without being sent twice: ingest derives
`user=<user>` and `metadata.<key>=<value>` from the stored (redacted) request. Those keys
are therefore reserved: an explicit tag may not use them.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, WithJsonSchema

TAGS_HEADER = "x-shadowzoo-tags"
MAX_TAGS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 256
_KEY = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_KEY_CHARS}}}")
_VALUE = re.compile(rf"[^,\x00-\x1f\x7f-\x9f]{{1,{MAX_VALUE_CHARS}}}")
"""A value: no comma (the header's separator) and no control character."""
RESERVED_KEY = "user"
RESERVED_PREFIX = "metadata."


def check_tags(tags: dict[str, str]) -> dict[str, str]:
    """`tags` when every key and value is within bounds and no key is reserved; else a `ValueError` saying why."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags are allowed, got {len(tags)}")
    for key, value in tags.items():
        if not _KEY.fullmatch(key):
            raise ValueError(f"tag key {key[:80]!r} must be 1 to {MAX_KEY_CHARS} characters of A-Z a-z 0-9 _ . -")
        if key == RESERVED_KEY or key.startswith(RESERVED_PREFIX):
            raise ValueError(f"tag key {key!r} is reserved: 'user' and 'metadata.*' tags come from the request's own "
                             "'user' and 'metadata' fields")
        if not _VALUE.fullmatch(value):
            raise ValueError(f"tag {key!r}: its value must be 1 to {MAX_VALUE_CHARS} characters, without a comma "
                             "or a control character")
    return tags


_TAGS_SCHEMA = {
    "type": "object", "maxProperties": MAX_TAGS,
    "propertyNames": {"pattern": f"^{_KEY.pattern}$", "not": {"pattern": f"^({RESERVED_KEY}$|{re.escape(RESERVED_PREFIX)})"}},
    "additionalProperties": {"type": "string", "pattern": f"^{_VALUE.pattern}$"},
}
Tags = Annotated[dict[str, str], AfterValidator(check_tags), WithJsonSchema(_TAGS_SCHEMA)]
"""A field of explicit tags, checked as the header is."""


def parse_tags_header(text: str) -> dict[str, str]:
    """The tags of an `x-shadowzoo-tags` header (`k=v,k2=v2`); a `ValueError` saying what is wrong."""
    pairs = [item.strip() for item in text.split(",") if item.strip()]
    tags: dict[str, str] = {}
    for item in pairs:
        key, value = _pair(item)
        if key in tags:
            raise ValueError(f"tag key {key!r} is given twice")
        tags[key] = value
    return check_tags(tags)


def parse_where(items: list[str], option: str = "--where") -> dict[str, str]:
    """Slice conditions `k=v` (any stored tag key: explicit, `user` or `metadata.<key>`); a `ValueError` naming
    the one that is not `key=value`. A key given twice must have one value (a request has one value per key);
    `option` names the conditions' option in that error."""
    where: dict[str, str] = {}
    for item in items:
        key, value = _pair(item.strip())
        if where.get(key, value) != value:
            raise ValueError(f"{option} {key}: given twice with different values; a request has one value per key")
        where[key] = value
    return where


def where_text(where: dict[str, str]) -> str:
    """A slice's canonical text, e.g. `team=billing,user=u1` (keys sorted): how it is named and stored."""
    return ",".join(f"{key}={where[key]}" for key in sorted(where))


def _pair(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"{item[:80]!r} is not key=value")
    return key.strip(), value.strip()
