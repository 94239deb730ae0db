"""A shadow runner worker of `backend: distributed`: one of several, on any host, sharing the work.

It is a `ShadowRunner` with three things shared through PostgreSQL: its pairs come from
replay batches under leases (`shadow.replay_leases`), each slot's daily shadow budget is
slices of one cap (`shadow.budget_slices.SlicedCap`, scope `shadow/<slot>`, given back at
the end of every run), and each provider's rate limits are split evenly between the live
runners (`shadow.rate_shares`: a heartbeat every `HEARTBEAT_S`; when the count of live
runners changes, the providers are updated with this runner's share). Each of the three
holds a psycopg connection of its own (a slot's ledger one per slot), as a connection is
used by one thread at a time. The overshoot bounds are those of the modules named.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from registry import Registry, utcnow
from registry.control_plane import migrate_control
from registry.distributed import connect_control, host_name
from registry.leases import WorkLeases
from shadow.budget import DailyCap
from shadow.budget_slices import BudgetLedger, SlicedCap
from shadow.providers import ProviderPool
from shadow.rate_shares import HEARTBEAT_S, Heartbeats, shared_provider
from shadow.replay_leases import KIND, LeasedReplay
from shadow.runner import ShadowRunner

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

ROLE = "runner"


@asynccontextmanager
async def shadow_runner(registry: Registry) -> AsyncIterator[ShadowRunner]:
    """The daemon's shadow runner: on one host it takes every pending pair; on `backend: distributed`
    it is a `RunnerWorker` (named `<host>/<pid>`) sharing them with the runners of the other hosts."""
    config = registry.workspace.config
    if config.backend != "distributed" or config.distributed is None:
        async with ShadowRunner(registry) as runner:
            yield runner
        return
    async with RunnerWorker(registry, f"{host_name(config.distributed)}/{os.getpid()}") as worker:
        yield worker.runner


class RunnerWorker:
    """One runner worker: `async with RunnerWorker(registry, "host-a/1234") as worker: await worker.runner.run_once()`.

    `holder` names the worker (unique across hosts: host and pid); `registry` is open on a
    distributed workspace.
    """

    def __init__(self, registry: Registry, holder: str, lease_ttl_s: float | None = None,
                 heartbeat_s: float = HEARTBEAT_S, **runner_options: object) -> None:
        config = registry.workspace.config.distributed
        if config is None:
            raise ValueError("a runner worker needs backend: distributed and its distributed: section")
        self.registry = registry
        self.config = config
        self.holder = holder
        self.heartbeat_s = heartbeat_s
        self._connections: list[psycopg.Connection] = []
        with connect_control(config, autocommit=True) as connection:
            migrate_control(connection)
        self.heartbeats = Heartbeats(self._connect(), holder, ROLE)
        self.ledgers: dict[str, BudgetLedger] = {}
        self.live = 0
        leases = WorkLeases(self._connect(), KIND, holder, lease_ttl_s or config.replay_lease_ttl_s)
        self.runner = ShadowRunner(registry, ProviderPool(registry.workspace.config.providers),
                                   work=LeasedReplay(registry.database, leases), caps=self.slot_cap,
                                   **runner_options)  # type: ignore[arg-type]
        self._beating: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def _connect(self) -> "psycopg.Connection":
        connection = connect_control(self.config, autocommit=True)
        self._connections.append(connection)
        return connection

    def slot_cap(self, slot: str, limit_usd: float, spent_usd: float) -> DailyCap:
        """A slot's cap for one run: slices of the slot's shared cap for today (UTC)."""
        if slot not in self.ledgers:
            self.ledgers[slot] = BudgetLedger(self._connect())
        return SlicedCap(self.ledgers[slot], f"shadow/{slot}", utcnow().date(), limit_usd, spent_usd)

    async def __aenter__(self) -> "RunnerWorker":
        await self.beat()
        self._beating = asyncio.create_task(self._beat_every())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._beating is not None:  # never cancelled mid-beat: its thread would still use the connection
            await self._beating
        try:
            await asyncio.to_thread(self.heartbeats.leave)
        finally:
            await self.runner.aclose()
            for connection in self._connections:
                connection.close()

    async def beat(self) -> None:
        """Record this worker alive and take its share of each provider's limits for the runners live now
        (at every beat: a reloaded config, which sets whole limits, is shared again within one beat)."""
        live = await asyncio.to_thread(self.heartbeats.beat)
        providers = self.registry.workspace.config.providers
        self.runner.providers.update({name: shared_provider(provider, live) for name, provider in providers.items()})
        if live != self.live:
            self.live = live
            log.info("%d live runners: %s takes 1/%d of each provider's rate limits", live, self.holder, live)

    async def _beat_every(self) -> None:
        while not await _set_within(self._stopping, self.heartbeat_s):
            try:
                await self.beat()
            except Exception as exc:  # PostgreSQL away: keep the last share, try again at the next beat
                log.warning("runner heartbeat failed: %s", exc)


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Whether `event` is set within `timeout_s`."""
    try:
        await asyncio.wait_for(event.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
