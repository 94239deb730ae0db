"""The 'learning rate' of skill training: how many edits a step may keep.

The budget decays from `edit_budget` to `min_edit_budget` over all steps: constant, linear,
or cosine `min + 0.5 (max − min)(1 + cos(π t / T))`, rounded, never below `min`.
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["constant", "linear", "cosine"]


def edit_budget(schedule: Schedule, step: int, total_steps: int, high: int, low: int) -> int:
    """Edits kept at `step` (0-based) of `total_steps`."""
    if schedule == "constant" or total_steps <= 1:
        return high
    progress = step / (total_steps - 1)
    if schedule == "linear":
        value = high - (high - low) * progress
    else:
        value = low + 0.5 * (high - low) * (1 + math.cos(math.pi * progress))
    return max(low, round(value))
