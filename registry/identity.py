"""How a variant is named: content fingerprints and version ids.

A variant's identity is its resolved configuration. The fingerprint is the sha256 of that
configuration in canonical JSON (sorted keys, no whitespace); the skill enters it through
`skill_sha`, the sha256 of the skill text, so a one-character change to a skill is a new
variant. `status`, the label and any `train:` block are not part of the configuration and
so never change the fingerprint. The fingerprint is unique within a slot; a version id
also hashes the slot, so it is unique across slots.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: one text per value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of UTF-8 text; skills are stored under this key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(config: dict[str, Any]) -> str:
    """Hex sha256 of the canonical resolved configuration."""
    return sha256_text(canonical_json(config))


def version_id(slot: str, label: str, first_registered: datetime, config_fingerprint: str) -> str:
    """`{label}-{YYYYMMDD}-{fp8}`: readable, dated by first registration, unique by slot and content.

    `fp8` is the start of the sha256 over the slot and the config's fingerprint, so one label
    and config registered in two slots on one day still get two ids.
    """
    return f"{label}-{first_registered:%Y%m%d}-{sha256_text(f'{slot}:{config_fingerprint}')[:8]}"
