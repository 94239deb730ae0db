"""The bundled OpenAI-compatible simulator: a stand-in for a real LLM, and not one.

A real HTTP server on loopback that answers chat completions deterministically from
hashes, with configurable latency, injected errors, rate limits, prices and accuracy
on the demo task, so that tests, the demo and load tests exercise the real ``openai``
client without reaching any model.
"""

from shadow.simulator.simulator_config import SimulatorConfig, SimulatorConfigError, load_simulator_config
from shadow.simulator.server import SimulatorHandle, build_app, serve, start_in_thread

__all__ = [
    "SimulatorConfig",
    "SimulatorConfigError",
    "SimulatorHandle",
    "build_app",
    "load_simulator_config",
    "serve",
    "start_in_thread",
]
