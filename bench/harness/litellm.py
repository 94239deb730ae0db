"""LiteLLM's proxy as the comparison server: found in the bench venv, started like our gateway."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from bench.harness.scenario import LOOPBACK, SLOT, UPSTREAM_MODEL
from bench.harness.servers import SCRATCH, Server, free_port

LITELLM_BIN = SCRATCH / "litellm-venv" / "bin" / "litellm"

LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no price-map download at start
    "LITELLM_TELEMETRY": "False",
    "NO_PROXY": "127.0.0.1,localhost",
    # A safety net: any call that is not to loopback goes to a closed local port and fails.
    "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
}


def find_litellm(explicit: str | None) -> tuple[Path | None, str | None]:
    """The `litellm` executable to use (the flag's, else the bench venv's), or None and why not."""
    candidate = Path(explicit) if explicit else LITELLM_BIN
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate, None
    how = "the --litellm path" if explicit else f"no {LITELLM_BIN}"
    return None, (f"LiteLLM not installed ({how}); install it with: python3 -m venv {LITELLM_BIN.parent.parent} "
                  f"&& {LITELLM_BIN.parent / 'pip'} install 'litellm[proxy]'")


def litellm_version(executable: Path) -> str | None:
    """The installed litellm version, read from the metadata of the venv the executable belongs to."""
    for metadata in executable.parent.parent.glob("lib/python*/site-packages/litellm-*.dist-info/METADATA"):
        for line in metadata.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def litellm_proxy(executable: Path, upstream_base_url: str, log_dir: Path, cores: str | None,
                  master_key: str) -> Server:
    """LiteLLM's proxy, one uvicorn worker, mapping `SLOT` to `openai/UPSTREAM_MODEL` on the upstream.

    It refuses to start without a master key, so it gets one, as the gateway gets a client key.
    """
    config = log_dir / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": SLOT, "litellm_params": {
            "model": f"openai/{UPSTREAM_MODEL}", "api_base": upstream_base_url, "api_key": "bench-dummy-key"}}],
        "litellm_settings": {"telemetry": False},
    }))
    port = free_port()
    argv = [str(executable), "--config", str(config), "--host", LOOPBACK, "--port", str(port), "--num_workers", "1"]
    return Server("litellm", argv, port, log_dir / "litellm.log", cores, cwd=log_dir,
                  env={**LITELLM_ENV, "LITELLM_MASTER_KEY": master_key}, health_path="/health/liveliness")
