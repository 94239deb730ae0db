"""Training items and their deterministic train / selection / test split.

Items come from a JSONL file of `{input, expected}` (an `id` is optional), or from captured
traffic whose outcomes hold a label: the input is the request's last user message, the
expected answer is the label. The split is a seeded shuffle, so the same items and seed
always give the same three splits; too few items are refused with the counts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from registry import ConfigError, Workspace
from zoo.train.train_config import FileDataset, SkillOptConfig, TrafficDataset

LAST_USER_SQL = """
SELECT t.request_id, t.request_json, o.value_json
FROM traffic t JOIN outcomes o ON o.request_id = t.request_id AND o.kind = 'label'
WHERE t.slot = ? AND t.received_at >= ?
QUALIFY row_number() OVER (PARTITION BY t.request_id ORDER BY o.received_at DESC) = 1
ORDER BY t.request_id
"""


@dataclass(frozen=True)
class Item:
    """One training example: what the user sent and what the right answer is."""

    id: str
    input: str
    expected: Any

    def request(self) -> dict[str, Any]:
        """The chat request a client would have sent for this item."""
        return {"messages": [{"role": "user", "content": self.input}]}


@dataclass(frozen=True)
class Splits:
    """The three disjoint splits: train (rollouts), selection (gate), test (reported only)."""

    train: list[Item]
    selection: list[Item]
    test: list[Item]

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "selection": len(self.selection), "test": len(self.test)}


def load_items(config: SkillOptConfig, workspace: Workspace, slot: str, db: duckdb.DuckDBPyConnection | None) -> list[Item]:
    """The items the config's dataset names; `db` is needed only for traffic."""
    dataset = config.dataset
    if isinstance(dataset, FileDataset):
        return load_file(workspace.root / dataset.path)
    if db is None:
        raise ConfigError("train.dataset: from traffic needs the database; stop the daemon, then train")
    return load_traffic(db, dataset, slot)


def load_file(path: Path) -> list[Item]:
    """Items of a JSONL file; a bad line is an error naming the file and the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"train.dataset.path: cannot read {path}: {exc.strerror or exc}") from None
    items = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            items.append(_file_item(path, number, line))
    return items


def _file_item(path: Path, number: int, line: str) -> Item:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("input"), str) or "expected" not in data:
        raise ConfigError(f"{path}:{number}: expected an object with a string 'input' and an 'expected'")
    return Item(id=str(data.get("id", f"line-{number}")), input=data["input"], expected=data["expected"])


def load_traffic(db: duckdb.DuckDBPyConnection, dataset: TrafficDataset, slot: str) -> list[Item]:
    """Captured requests of the slot with a label; requests with no user message are left out."""
    rows = db.execute(LAST_USER_SQL, [dataset.slot or slot, _naive_utc(dataset.since)]).fetchall()
    items = []
    for request_id, request_json, value_json in rows:
        text = _last_user_text(json.loads(request_json))
        if text is not None:
            items.append(Item(id=request_id, input=text, expected=json.loads(value_json)))
    return items


def _naive_utc(moment: datetime | None) -> datetime:
    """The stored timestamps are naive UTC; compare like with like (no bound = the beginning)."""
    if moment is None:
        return datetime.min
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _last_user_text(request: dict[str, Any]) -> str | None:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            return content if isinstance(content, str) and content else None
    return None


def split_items(items: list[Item], ratio: tuple[int, int, int], seed: int, min_items: int) -> Splits:
    """Shuffle with the seed, cut by the ratio; refuse when a split would hold fewer than `min_items`."""
    if not items:
        raise ConfigError("train.dataset: no items (0 found); nothing to train on")
    order = list(items)
    random.Random(seed).shuffle(order)
    total = sum(ratio)
    n_train = len(order) * ratio[0] // total
    n_selection = len(order) * ratio[1] // total
    splits = Splits(order[:n_train], order[n_train:n_train + n_selection], order[n_train + n_selection:])
    small = {name: count for name, count in splits.counts().items() if count < min_items}
    if small:
        counts = ", ".join(f"{name} {count}" for name, count in splits.counts().items())
        raise ConfigError(
            f"train.dataset: too few items: {len(items)} split {':'.join(map(str, ratio))} gives {counts}; "
            f"each split needs at least {min_items} (train.min_items)"
        )
    return splits
