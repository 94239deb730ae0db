"""The gateway's Prometheus series, shared by its worker processes.

Workers run in prometheus_client's multiprocess mode: each writes its samples to files in
`PROMETHEUS_MULTIPROC_DIR`, and any worker's `/metrics` adds them all up. Series are
labelled by slot only (an unknown slot counts as `unknown`, so a typo cannot grow the
label set); version-labelled series come from the daemon. On `backend: distributed` the
host's spool shipper (`shadow.shipper`) writes its series here too.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


def multiprocess_env(state_dir: Path) -> dict[str, str]:
    """The environment gateway workers start with: a fresh directory for this run's samples
    (old workers' files would be counted). Only the gateways get it; the daemon has its own."""
    directory = state_dir / "gateway-metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return {MULTIPROC_ENV: str(directory)}


class GatewayMetrics:
    """Requests by slot and status code, the gateway's own overhead, and dropped captures."""

    def __init__(self) -> None:
        registry = None if os.environ.get(MULTIPROC_ENV) else REGISTRY
        self.requests = Counter("shadowzoo_gateway_requests_total", "Requests served, by slot and HTTP status.",
                                ["slot", "code"], registry=registry)
        self.overhead = Histogram("shadowzoo_gateway_overhead_seconds",
                                  "Time spent in the gateway, excluding the upstream call.", ["slot"],
                                  buckets=OVERHEAD_BUCKETS, registry=registry)
        self.dropped = Counter("shadowzoo_shadow_dropped_total", "Captures not kept, by reason.", ["slot", "reason"],
                               registry=registry)


class ShippingMetrics:
    """The shipper's series, which the gateway's /metrics shows beside its workers' (multiprocess mode)."""

    def __init__(self) -> None:
        registry = None if os.environ.get(MULTIPROC_ENV) else REGISTRY
        self.lag = Gauge("shadowzoo_spool_shipping_lag_seconds",
                         "Age of this host's oldest complete spool segment not yet in the object store.",
                         multiprocess_mode="mostrecent", registry=registry)
        self.shipped = Counter("shadowzoo_spool_shipped_segments_total",
                               "Spool segments shipped to the object store.", registry=registry)


@functools.cache
def gateway_metrics() -> GatewayMetrics:
    """The process's one set of gateway series."""
    return GatewayMetrics()


def exposition() -> bytes:
    """The text of /metrics: in multiprocess mode, every worker's samples added up."""
    if not os.environ.get(MULTIPROC_ENV):
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
