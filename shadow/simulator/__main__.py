"""``python -m shadow.simulator``: run the shadowzoo simulator (not a real LLM) from the shell."""

from __future__ import annotations

import argparse
import sys

from shadow.simulator.simulator_config import SimulatorConfig, SimulatorConfigError, load_simulator_config
from shadow.simulator.server import serve


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load the config and serve until SIGINT/SIGTERM; 2 on a bad config."""
    parser = argparse.ArgumentParser(
        prog="python -m shadow.simulator", description="OpenAI-compatible LLM simulator (not a real LLM)."
    )
    parser.add_argument("--config", help="simulator YAML file (default: one generic model, no demo task)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8700, help="port, 0 = ephemeral (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="no latency, no injected errors (benchmarks)")
    args = parser.parse_args(argv)
    try:
        config = load_simulator_config(args.config) if args.config else SimulatorConfig()
        serve(config, host=args.host, port=args.port, fast=args.fast)
    except SimulatorConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
