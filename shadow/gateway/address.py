"""Where a gateway listens and who may call it: its client keys, and loopback only without them.

A module of its own, light to import: `serve` and `gateway` check the address before they
start their worker processes, without importing the server (aiohttp, the app).
"""

from __future__ import annotations

import ipaddress
import os
import sys

from registry import Workspace


def client_keys(workspace: Workspace) -> tuple[str, ...]:
    """The accepted client keys, from the environment variable the config names."""
    name = workspace.config.gateway.client_keys_env
    raw = os.environ.get(name, "") if name else ""
    return tuple(key.strip() for key in raw.split(",") if key.strip())


def bind_host(requested: str, keys: tuple[str, ...]) -> str:
    """The address to bind: loopback only while no client keys are configured."""
    if keys or _is_loopback(requested):
        return requested
    print(f"shadowzoo gateway: no client keys configured, so binding 127.0.0.1 instead of {requested} "
          "(set gateway.client_keys_env to serve other hosts)", file=sys.stderr, flush=True)
    return "127.0.0.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
