"""The OpenAI-compatible gateway: the champion path."""

from shadow.gateway.app import GatewayState, build_app
from shadow.gateway.serve import bind_host, client_keys, gateway_state, serve_worker, worker_main

__all__ = ["GatewayState", "bind_host", "build_app", "client_keys", "gateway_state", "serve_worker", "worker_main"]
