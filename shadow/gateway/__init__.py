"""The OpenAI-compatible gateway: the champion path."""

from shadow.gateway.app import GatewayState, build_app
from shadow.gateway.serve import gateway_state, run_gateway, serve_worker

__all__ = ["GatewayState", "build_app", "gateway_state", "run_gateway", "serve_worker"]
