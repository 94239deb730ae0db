"""The simulator playing the optimizer of skill training (``optimizer: true``); not a real LLM.

It reads the tagged prompts of ``zoo.train.optimizer`` and answers with JSON, so that an
offline training run really improves a demo skill:

* ``<task>reflect</task>``: for the expected labels of the *failed* trajectories, most
  frequent first, it proposes ``append`` edits with the ``rule`` sentence of the task
  directive for that label, unless the skill already matches the directive's pattern or
  the rule is among the rejected edits; successes get ``{"edits": []}``;
* ``merge``: the union of the patches, duplicates removed, in order;
* ``rank``: the edits in the order given;
* ``slow_update``: guidance that matches the general (label-less) directive with a rule;
* ``meta``: a fixed memory sentence.

Anything else gets ``{"error": ...}``, which a caller must treat as a useless reply.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from shadow.simulator.simulator_config import Directive

TASK_RE = re.compile(r"<task>([\w-]+)</task>")
FAILED_RE = re.compile(r'<trajectories kind="failed">(.*?)</trajectories>', re.DOTALL)
EXPECTED_RE = re.compile(r"^expected: (.+)$", re.MULTILINE)
MEMORY = "Rules that name a category's typical keywords together with the category were accepted."
DEFAULT_GUIDANCE = "Answer with the category alone on the first line."


class SimulatedOptimizer:
    """Answers optimizer prompts from the task's directives."""

    def __init__(self, directives: Sequence[Directive]) -> None:
        self._rules = [(re.compile(d.pattern, re.IGNORECASE), d.rule, d.label) for d in directives if d.rule]

    def reply(self, prompt: str) -> str:
        """The JSON reply to one optimizer prompt."""
        task = TASK_RE.search(prompt)
        name = task.group(1) if task else ""
        if name == "reflect":
            return json.dumps({"edits": self._reflect(prompt)})
        if name == "merge":
            return json.dumps({"edits": _merge(_section(prompt, "patches"))})
        if name == "rank":
            edits = _json_or(_section(prompt, "edits"), [])
            return json.dumps({"order": list(range(len(edits)))})
        if name == "slow_update":
            return json.dumps({"guidance": self._guidance()})
        if name == "meta":
            return json.dumps({"memory": MEMORY})
        return json.dumps({"error": f"unknown optimizer task {name!r}"})

    def _reflect(self, prompt: str) -> list[dict[str, str]]:
        failed = FAILED_RE.search(prompt)
        if failed is None:
            return []
        skill = _section(prompt, "skill")
        rejected = _section(prompt, "rejected")
        counts = Counter(label.strip() for label in EXPECTED_RE.findall(failed.group(1)))
        edits = []
        for label, _ in counts.most_common():
            for pattern, rule, rule_label in self._rules:
                if rule_label == label and not pattern.search(skill) and json.dumps(rule) not in rejected:
                    edits.append({"op": "append", "target": "", "content": rule})
        return edits

    def _guidance(self) -> str:
        general = [rule for _, rule, label in self._rules if label is None]
        return general[0] if general else DEFAULT_GUIDANCE


def _section(prompt: str, tag: str) -> str:
    """The text between ``<tag>`` and ``</tag>`` (the last closing one), or ''."""
    start, end = prompt.find(f"<{tag}>"), prompt.rfind(f"</{tag}>")
    return prompt[start + len(tag) + 2 : end] if 0 <= start < end else ""


def _json_or(text: str, default: list) -> list:
    try:
        value = json.loads(text)
    except ValueError:
        return default
    return value if isinstance(value, list) else default


def _merge(patches_text: str) -> list[dict]:
    """The edits of every patch, first occurrence kept."""
    seen: dict[str, dict] = {}
    for patch in _json_or(patches_text, []):
        for edit in patch if isinstance(patch, list) else []:
            seen.setdefault(json.dumps(edit, sort_keys=True), edit)
    return list(seen.values())
