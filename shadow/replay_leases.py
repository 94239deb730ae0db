"""Replay work shared by the runners of every host (`backend: distributed`): batches under leases.

Each run cuts the pending pairs into batches as it counts them (one scan, `RunPlan.batches`), one
challenger's requests whose `seq` falls in one block of `BLOCK_SEQS`, named `<version_id>:<seq_lo>-<seq_hi>#<pairs>` (the block's first
seq, its highest pending seq, and how many pairs were pending). Every runner that plans the same
pending work names the same batches, so offering them again (`registry.leases.WorkLeases`)
changes nothing; when the pending pairs of a block change (new traffic, or pairs a batch left
pending), the name changes and the block is offered again for what is left. A runner holds at
most `HOLD` batches at once, renews them while it works, and writes a batch's results in one
transaction under the lease's fence, which marks the batch done: a runner that lost its lease
is refused before it writes, and its results are dropped. A runner whose own lease expired under
it (a renewal waited behind a slow write) may claim the batch again itself: it goes on with the
batch under that newer claim, and writes its results there.

Duplicates. A runner killed with `kill -9` (or stalled past the lease's ttl) loses its
batches after the expiry and another runner replays them: the calls it had made for them are
made again, at most `HOLD` batches of pairs per lost runner. Two runners that planned while
traffic was arriving may offer overlapping batches of one block (seen with different pending
pairs): the pairs of both may be in flight at once, at most one batch per block. Either way
each pair's result is written once (`shadow_results` is keyed (request_id, version_id)); only
the calls, and their cost, are duplicated. A replay with filters (`RunPlan.shared` false: a
slot, a version, a time, `include_old`, `retry_errors`) is not cut into batches: the runner
that took it runs every pair it selects, so a pair also in a shared batch may be called twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from registry import Database
from registry.leases import Lease, LeaseLost, WorkLeases
from shadow.pending import pending_batch
from shadow.results import Row, Work, write_results
from shadow.runner import RunPlan

log = logging.getLogger(__name__)

KIND = "replay"
BLOCK_SEQS = 64
"""Requests per block of `seq`: a batch is one challenger's pending pairs in one block."""
HOLD = 2
"""Batches a runner holds at once: what the others cannot take, and what its death makes them redo."""


def batch_name(version_id: str, seq_lo: int, seq_hi: int, pairs: int) -> str:
    return f"{version_id}:{seq_lo}-{seq_hi}#{pairs}"


def parse_batch(item: str) -> tuple[str, int, int]:
    """(version_id, seq_lo, seq_hi) of a batch's name."""
    version_id, _, span = item.rpartition(":")
    seq_lo, _, rest = span.partition("-")
    return version_id, int(seq_lo), int(rest.partition("#")[0])


class LeasedReplay:
    """A runner's `WorkSource` on `backend: distributed`: its share of the pending pairs, claimed as leases.

    `leases` is this runner's `WorkLeases` of kind `KIND` (its own psycopg connection).
    """

    def __init__(self, database: Database, leases: WorkLeases, block_seqs: int = BLOCK_SEQS, hold: int = HOLD) -> None:
        self.database = database
        self.leases = leases
        self.block_seqs = block_seqs
        self.hold = hold
        self.control = asyncio.Lock()
        """One call at a time on the lease connection (renewals run beside the writes)."""

    def open(self, plan: RunPlan, on_written: Callable[[list[Row]], None]) -> "_LeasedRun":
        return _LeasedRun(self, plan, on_written)

    async def call(self, method: Callable[..., object], *args: object) -> object:
        async with self.control:
            return await asyncio.to_thread(method, *args)


@dataclass
class _Batch:
    lease: Lease
    """The batch's latest claim by this run: the one its results are written under."""
    expected: int
    rows: list[Row] = field(default_factory=list)


class _LeasedRun:
    """One run's batches: offer those its plan counted (`RunPlan.batches`), claim while fewer than `hold`
    are held, collect results, write them fenced."""

    def __init__(self, source: LeasedReplay, plan: RunPlan, on_written: Callable[[list[Row]], None]) -> None:
        self.source = source
        self.plan = plan
        self.batch_plan = replace(plan, after_seq=0)
        """A batch is its seq range: another runner's pass, whose `after_seq` is past it, still takes all its pairs."""
        self.on_written = on_written
        self.held: dict[str, _Batch] = {}
        """The batches held, by item, until their results are written (or dropped)."""
        self.item_of: dict[tuple[str, str], str] = {}
        """The batch each pair this run took is in, kept for the whole run: an overlapping batch fetched
        while a result was being written (not yet in the store it reads) leaves the pair out."""
        self.freed = asyncio.Event()
        self.abandoned = False
        self.passed: list[int] = []
        """Batches of a challenger this run does not know (registered since it began): given back at `close`."""
        self.renewing: asyncio.Task[None] | None = None

    async def pages(self) -> AsyncIterator[list[Work]]:
        """The pairs of each batch this runner claims, until none is left to claim."""
        await self.source.call(self.source.leases.offer, [batch_name(*batch) for batch in self.plan.batches])
        while True:
            while len(self.held) >= self.source.hold and not self.abandoned:
                await self._wait_freed()
            if self.abandoned:
                return
            claimed = await self.source.call(self.source.leases.claim, self.source.hold - len(self.held))
            if not claimed:
                return
            fresh = [lease for lease in claimed if not self._reclaimed(lease)]
            if not fresh:
                await self._wait_freed()  # only its own batches, expired under it: claim again once one is done
            for lease in fresh:
                fetched = await asyncio.to_thread(self._fetch, lease.item)
                if fetched is None:
                    self.passed.append(lease.token)
                    continue
                works = [work for work in fetched
                         if (work.request_id, work.version_id) not in self.item_of]  # not taken in an overlapping batch
                self.held[lease.item] = _Batch(lease, len(works))
                for work in works:
                    self.item_of[(work.request_id, work.version_id)] = lease.item
                if not works:
                    await self._commit(lease.item)
                yield works

    async def _wait_freed(self) -> None:
        self.freed.clear()
        await self.freed.wait()

    def _reclaimed(self, lease: Lease) -> bool:
        """Whether `lease` is this run's own batch claimed again: its lease expired under it (a renewal
        waited behind a slow write), and nobody else took it. The batch goes on under the new claim, whose
        fence its results pass; taken as a new batch, it would have been written empty and its results dropped."""
        batch = self.held.get(lease.item)
        if batch is not None:
            batch.lease = lease
        return batch is not None

    def _fetch(self, item: str) -> list[Work] | None:
        """The pairs of a batch still pending (None when its challenger is not in this run's plan)."""
        version_id, seq_lo, seq_hi = parse_batch(item)
        if version_id not in self.plan.challengers:
            return None
        with self.source.database.reading() as connection:
            rows = pending_batch(connection, self.batch_plan, version_id, seq_lo, seq_hi)
        return [Work(at, rid, seq, vid, role, json.loads(request), replaces)
                for at, rid, seq, vid, role, request, replaces in rows]

    def abandon(self) -> None:
        """A call failed: claim nothing more (the batches held are given back at `close`)."""
        self.abandoned = True
        self.freed.set()

    def start(self) -> None:
        self.renewing = asyncio.create_task(self._renew())

    async def add(self, row: Row) -> None:
        """Keep a result with its batch; a batch with all its results is written under its fence."""
        item = self.item_of[(row["request_id"], row["version_id"])]
        batch = self.held[item]
        batch.rows.append(row)
        if len(batch.rows) == batch.expected:
            await self._commit(item)

    async def _commit(self, item: str) -> None:
        """Write a batch's results under its latest claim (read when the write begins, after any claim
        that came first on the lease connection), then let go of it."""
        batch = self.held[item]
        try:
            await self.source.call(self._write_fenced, batch)
        except LeaseLost as lost:
            log.warning("replay batch %s dropped, %d results not written: %s", item, len(batch.rows), lost)
        else:
            self.on_written(batch.rows)
        finally:
            del self.held[item]
            self.freed.set()

    def _write_fenced(self, batch: _Batch) -> None:
        with self.source.leases.fenced(batch.lease.token):
            if batch.rows:
                write_results(self.source.database, batch.rows)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.source.leases.ttl_s / 3)
            held = {batch.lease.token: item for item, batch in self.held.items()}
            kept = await self.source.call(self.source.leases.renew, set(held))
            for token in held.keys() - kept:
                if held[token] in self.held:
                    log.warning("replay batch %s lost its lease: its results will not be written", held[token])

    async def close(self) -> None:
        """Stop renewing, and give back the batches not finished (a failed run), so another runner takes them."""
        if self.renewing is not None:
            self.renewing.cancel()
            await asyncio.gather(self.renewing, return_exceptions=True)
        if self.held or self.passed:
            await self.source.call(self.source.leases.release,
                                   [*(batch.lease.token for batch in self.held.values()), *self.passed])
            self.held.clear()
            self.passed.clear()
