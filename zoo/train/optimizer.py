"""The optimizer model's side of training: our prompts, and lenient reading of its replies.

Each call asks for one JSON object: reflect → `{"edits": [...]}`, merge → `{"edits": [...]}`,
rank → `{"order": [indices]}`, slow update → `{"guidance": "..."}`, meta skill →
`{"memory": "..."}`. A reply is parsed as a whole, else from its first fenced block, else
from the first `{` to the last `}`. A call that fails or does not parse is counted and
logged, and the stage falls back; it never crashes the run. Sections are tagged
(`<task>`, `<skill>`, `<trajectories>`, …) so the prompt's parts are unambiguous.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from zoo.train.edits import Edit, parse_edit

log = logging.getLogger(__name__)

FENCE_RE = re.compile(r"```(?:json)?\s*\n?(.*?)```", re.DOTALL)
EDIT_SCHEMA = '{"edits": [{"op": "append|insert_after|replace|delete", "target": "...", "content": "..."}]}'
ROLE = (
    "You improve a skill: a Markdown document given to a frozen model as its system prompt. "
    "Propose small, general edits that fix systematic errors; never edit text between the "
    "slow-update marker comments. Reply with one JSON object and nothing else."
)

Ask = Callable[[str, list[dict[str, str]]], Awaitable[str | None]]


@dataclass(frozen=True)
class Trajectory:
    """One rolled-out item: what was asked, what was right, what the target answered, its score."""

    input: str
    expected: Any
    answer: str | None
    score: float

    def render(self) -> str:
        expected = self.expected if isinstance(self.expected, str) else json.dumps(self.expected)
        answer = "(no answer: the call failed)" if self.answer is None else self.answer
        return f"<item>\ninput: {self.input}\nexpected: {expected}\nanswer: {answer}\nscore: {self.score:g}\n</item>"


def extract_json(text: str | None) -> dict[str, Any] | None:
    """The JSON object in a reply: the whole text, a fenced block, or first `{` to last `}`."""
    if not text:
        return None
    candidates = [text]
    fenced = FENCE_RE.search(text)
    if fenced:
        candidates.append(fenced.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


@dataclass
class CallStats:
    """How the optimizer's calls went, by outcome."""

    calls: int = 0
    failed: int = 0
    unparseable: int = 0
    by_task: dict[str, int] = field(default_factory=dict)

    @property
    def usable(self) -> int:
        return self.calls - self.failed - self.unparseable


class Optimizer:
    """The stages' questions to the optimizer model; `ask(task, messages)` makes one call."""

    def __init__(self, ask: Ask, stats: CallStats | None = None) -> None:
        self._ask = ask
        self.stats = stats or CallStats()

    async def reflect(self, skill: str, batch: list[Trajectory], failed: bool, memory: str, rejected: list[dict]) -> list[Edit]:
        """A patch from one minibatch of failed (or successful) trajectories."""
        kind = "failed" if failed else "succeeded"
        goal = ("These answers were wrong: find the rule the skill lacks or states badly." if failed
                else "These answers were right: make the rules behind them explicit, if the skill lacks them.")
        prompt = "\n".join([
            "<task>reflect</task>", goal, _skill_block(skill), _memory_block(memory), _rejected_block(rejected),
            f'<trajectories kind="{kind}">', *(t.render() for t in batch), "</trajectories>",
            f"Reply with {EDIT_SCHEMA}; an empty list when nothing should change.",
        ])
        return _edits(await self._json("reflect", prompt))

    async def merge(self, patches: list[list[Edit]], memory: str, final: bool) -> list[Edit] | None:
        """One patch from several: duplicates merged, conflicting edits on the same text resolved."""
        goal = ("Final merge: remove duplicates and edits that conflict on the same text." if final
                else "Merge these patches into one, keeping every distinct useful edit.")
        payload = json.dumps([[e.as_dict() for e in patch] for patch in patches], ensure_ascii=False)
        prompt = "\n".join(["<task>merge</task>", goal, _memory_block(memory),
                            f"<patches>\n{payload}\n</patches>", f"Reply with {EDIT_SCHEMA}."])
        reply = await self._json("merge", prompt)
        return None if reply is None else _edits(reply)

    async def rank(self, skill: str, edits: list[Edit], budget: int, memory: str) -> list[int] | None:
        """Indices of the edits, best first, by how systematic, general and complementary they are."""
        payload = json.dumps([e.as_dict() for e in edits], ensure_ascii=False)
        prompt = "\n".join([
            "<task>rank</task>",
            f"Rank these edits, best first: the {budget} kept should be systematic, general and complementary.",
            _skill_block(skill), _memory_block(memory), f"<edits>\n{payload}\n</edits>",
            'Reply with {"order": [indices of the edits above, best first]}.',
        ])
        reply = await self._json("rank", prompt)
        order = reply.get("order") if reply else None
        if not isinstance(order, list):
            return None
        return [i for i in dict.fromkeys(order) if isinstance(i, int) and 0 <= i < len(edits)]

    async def slow_update(self, skill: str, groups: dict[str, list[Trajectory]], memory: str) -> str | None:
        """Guidance for the protected region, from how items moved between the last two epochs' skills."""
        sections = [f'<trajectories kind="{name}">\n' + "\n".join(t.render() for t in items) + "\n</trajectories>"
                    for name, items in groups.items()]
        prompt = "\n".join([
            "<task>slow_update</task>",
            "The previous epoch's skill and the current one answered the same items. Items are grouped as "
            "improved, regressed, persistent_failure and stable_success. Write short, durable guidance that "
            "keeps the gains and addresses the persistent failures.",
            _skill_block(skill), _memory_block(memory), *sections,
            'Reply with {"guidance": "..."}.',
        ])
        reply = await self._json("slow_update", prompt)
        guidance = reply.get("guidance") if reply else None
        return guidance.strip() if isinstance(guidance, str) and guidance.strip() else None

    async def meta_memory(self, history: list[dict[str, Any]], memory: str) -> str | None:
        """A short memory of what worked across epochs, for the optimizer's later calls only."""
        prompt = "\n".join([
            "<task>meta</task>",
            "Summarise, in a few sentences, which kinds of edits were accepted and which were rejected, so "
            "that later proposals build on what worked.",
            _memory_block(memory), f"<history>\n{json.dumps(history, ensure_ascii=False)}\n</history>",
            'Reply with {"memory": "..."}.',
        ])
        reply = await self._json("meta", prompt)
        text = reply.get("memory") if reply else None
        return text.strip() if isinstance(text, str) and text.strip() else None

    async def _json(self, task: str, prompt: str) -> dict[str, Any] | None:
        """One call; its JSON object, or None after counting and logging the failure."""
        self.stats.calls += 1
        self.stats.by_task[task] = self.stats.by_task.get(task, 0) + 1
        text = await self._ask(task, [{"role": "system", "content": ROLE}, {"role": "user", "content": prompt}])
        if text is None:
            self.stats.failed += 1
            return None
        data = extract_json(text)
        if data is None:
            self.stats.unparseable += 1
            log.warning("optimizer %s reply is not JSON (%d chars): %.120r", task, len(text), text)
        return data


def _edits(reply: dict[str, Any] | None) -> list[Edit]:
    raw = reply.get("edits") if reply else None
    if not isinstance(raw, list):
        return []
    return [edit for item in raw if (edit := parse_edit(item)) is not None]


def _skill_block(skill: str) -> str:
    return f"<skill>\n{skill}\n</skill>"


def _memory_block(memory: str) -> str:
    return f"<memory>\n{memory}\n</memory>" if memory else ""


def _rejected_block(rejected: list[dict]) -> str:
    if not rejected:
        return ""
    return ("Edits already tried and rejected by the gate (do not propose them again):\n"
            f"<rejected>\n{json.dumps(rejected, ensure_ascii=False)}\n</rejected>")
