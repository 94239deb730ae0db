"""Prices, and what a call cost from its usage.

Prices use LiteLLM's per-token field names, so its public `model_prices_and_context_window
.json` loads unchanged from `prices_file`; entries under `prices:` in the config win. They
are looked up by upstream model name (or LiteLLM's `openai/<model>` spelling). A model
with no price has an unknown cost: `None`, never 0, so that the scorer and the budget can
tell "free" from "not known". Cached prompt tokens and reasoning tokens are part of
`prompt_tokens` / `completion_tokens` in OpenAI's usage; when the price table has a
separate price for them, that part is billed at it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry import ConfigError, Workspace
from registry.workspace_config import Price

PRICE_FIELDS = tuple(Price.model_fields)


def effective_prices(workspace: Workspace) -> dict[str, tuple[Price, str]]:
    """Every known price with where it came from: the price file, then the config on top."""
    prices: dict[str, tuple[Price, str]] = {}
    if workspace.config.prices_file:
        path = workspace.root / workspace.config.prices_file
        prices.update({model: (price, "prices_file") for model, price in load_price_map(path).items()})
    prices.update({model: (price, "config") for model, price in workspace.config.prices.items()})
    return prices


def workspace_prices(workspace: Workspace) -> dict[str, Price]:
    """The prices in force, by model."""
    return {model: price for model, (price, _) in effective_prices(workspace).items()}


def load_price_map(path: Path) -> dict[str, Price]:
    """Models with both per-token prices in a LiteLLM-style JSON file (re-read only when it changes)."""
    try:
        stamp = path.stat().st_mtime_ns
    except FileNotFoundError:
        raise ConfigError(f"prices_file {path} does not exist") from None
    return dict(_parse_price_map(path, stamp))


@functools.lru_cache(maxsize=4)
def _parse_price_map(path: Path, stamp: int) -> tuple[tuple[str, Price], ...]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"prices_file {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"prices_file {path}: expected an object of models")
    return tuple((model, price) for model, entry in raw.items() if (price := _price(entry)) is not None)


def _price(entry: Any) -> Price | None:
    if not isinstance(entry, dict):
        return None
    fields = {key: entry[key] for key in PRICE_FIELDS if isinstance(entry.get(key), (int, float))}
    if "input_cost_per_token" not in fields or "output_cost_per_token" not in fields:
        return None
    return Price(**fields)


def price_of(prices: Mapping[str, Price], model: str | None) -> Price | None:
    """The price of an upstream model: an exact entry, else LiteLLM's `openai/<model>` spelling."""
    if model is None:
        return None
    return prices.get(model) or prices.get(f"openai/{model}")


def cost_usd(price: Price | None, usage: Mapping[str, Any] | None) -> float | None:
    """USD for one call's usage; None when the model is unpriced.

    A priced call that reported no usage (an upstream error) billed no tokens: 0.
    """
    if price is None:
        return None
    if not usage:
        return 0.0
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached, reasoning = detail_tokens(usage)
    cached, reasoning = min(prompt, cached), min(completion, reasoning)
    cached_price = price.cache_read_input_token_cost
    reasoning_price = price.output_cost_per_reasoning_token
    total = prompt * price.input_cost_per_token + completion * price.output_cost_per_token
    if cached_price is not None:
        total += cached * (cached_price - price.input_cost_per_token)
    if reasoning_price is not None:
        total += reasoning * (reasoning_price - price.output_cost_per_token)
    return total


def estimate_usd(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    """An upper-bound style estimate for a call not made yet (no cache or reasoning discounts)."""
    if price is None:
        return None
    return prompt_tokens * price.input_cost_per_token + completion_tokens * price.output_cost_per_token


def detail_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """The cached prompt tokens and the reasoning completion tokens an OpenAI usage reports (0 when absent)."""
    if not usage:
        return 0, 0
    return (_detail(usage, "prompt_tokens_details", "cached_tokens"),
            _detail(usage, "completion_tokens_details", "reasoning_tokens"))


def _detail(usage: Mapping[str, Any], group: str, key: str) -> int:
    details = usage.get(group)
    return int(details.get(key) or 0) if isinstance(details, Mapping) else 0
