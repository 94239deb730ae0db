"""What the gateway benchmarks serve: one slot, its champion, the client's request, and the workspace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

LOOPBACK = "127.0.0.1"
CHAT_PATH = "/v1/chat/completions"
GATEWAY_KEY = "bench-client-key"
GATEWAY_KEYS_ENV = "SHADOWZOO_BENCH_CLIENT_KEYS"

SLOT = "bench-slot"
UPSTREAM_MODEL = "bench-model"
SKILL = "Route the support ticket to exactly one of: billing, technical, account, shipping, other."
PARAMS: dict[str, Any] = {"temperature": 0}
CLIENT_REQUEST: dict[str, Any] = {
    "model": SLOT,
    "messages": [{"role": "user", "content": "I was charged twice for my March invoice, please refund one."}],
    "max_tokens": 16,
}
FIXED_COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": UPSTREAM_MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "billing"}, "finish_reason": "stop",
                 "logprobs": None}],
    "usage": {"prompt_tokens": 42, "completion_tokens": 1, "total_tokens": 43},
}).encode()
SIMULATOR_YAML = f"""
seed: 1
models:
  {UPSTREAM_MODEL}: {{output_tokens: 8}}
"""


def make_workspace(root: Path, upstream_base_url: str, extra_providers: dict[str, str] | None = None,
                   settings: dict[str, Any] | None = None) -> Path:
    """A workspace whose slot `SLOT` is served by a champion on `upstream_base_url`.

    Built as the tests build theirs: `init_workspace`, the provider pointed at the
    upstream, one chat variant registered and promoted (which writes routes.json).
    `extra_providers` adds more providers by name (challenger upstreams); `settings`, top-level
    keys of shadowzoo.yaml (a `backend` and its section), set before anything is registered.
    """
    from ops.workspace_init import init_workspace
    from registry import NewVariant, Registry, load_workspace

    workspace = init_workspace(root / "ws")
    path = workspace / "shadowzoo.yaml"
    config = yaml.safe_load(path.read_text())
    config["providers"]["sim"]["base_url"] = upstream_base_url
    for name, base_url in (extra_providers or {}).items():
        config["providers"][name] = {"base_url": base_url, "timeout_s": 30}
    config["slots"][SLOT] = {"defaults": {"provider": "sim", "model": UPSTREAM_MODEL}}
    config["gateway"] = {"client_keys_env": GATEWAY_KEYS_ENV}
    config.update(settings or {})
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with Registry.open(load_workspace(workspace)) as registry:
        variant = registry.register(NewVariant(
            slot=SLOT, label="champ", kind="chat", skill_text=SKILL,
            config={"kind": "chat", "provider": "sim", "model": UPSTREAM_MODEL, "params": PARAMS},
        )).variant
        if registry.champion(SLOT) is None:  # a second host on the same control plane finds it promoted
            registry.promote(SLOT, variant.version_id, "bench", None, None)
    return workspace


def upstream_request() -> dict[str, Any]:
    """What the gateway sends upstream for `CLIENT_REQUEST`: the champion applied by the shared function."""
    from shadow.apply import apply_variant

    return apply_variant(UPSTREAM_MODEL, PARAMS, SKILL, CLIENT_REQUEST)
