"""The one function that applies a variant to a request, shared by the gateway and the runner.

The variant's skill becomes the first system message (the client's own system messages
follow it); the variant's parameters win on the keys it sets; every other field of the
client's request passes through untouched. The captured request stays as the client sent
it, so any variant can be replayed on it later.
"""

from __future__ import annotations

from typing import Any


def apply_variant(model: str | None, params: dict[str, Any], skill: str | None, request: dict[str, Any]) -> dict[str, Any]:
    """The body to send upstream when this variant answers `request` (which is not modified)."""
    body = dict(request)
    body.update(params)
    if model is not None:
        body["model"] = model
    if skill:
        body["messages"] = [{"role": "system", "content": skill}, *request.get("messages", [])]
    return body
