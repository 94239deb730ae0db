"""The shadow runner: captured traffic × active challengers → `shadow_results`.

Work is every (traffic row, active challenger of its slot other than the champion) pair
that has no result yet and that sampling selects; with `champion_control_rate` set, the
champion is also replayed on a sample of the requests it answered live (role `control`),
so latency guardrails can compare answers given under the same replay load. Only pairs that
can count are run unless a replay says `include_old`: the request was answered by the
slot's current champion (a pair compares with the champion of the period) and received in
the current evaluation period, after the challenger was registered (the scorer pairs
nothing earlier). The others are counted by reason in the report (`skipped`), not run and
not recorded, so a later replay with `include_old` can still run them. Sampling is
a deterministic hash of (request_id, version_id) against the rate, so a rerun selects the
same pairs and a higher rate selects a superset. Work is streamed in pages ordered by
request, under a bound on calls in flight, and results are written in batches keyed
(request_id, version_id) with INSERT OR IGNORE: a crash loses at most the unwritten
batch, which the next run simply does again, and nothing is ever written twice.

A call shadowzoo decides not to make (a paused challenger, the slot's daily budget
reached) or that fails before reaching the variant's model or code (a provider missing
from the config, a key or model the upstream refuses, a python entrypoint that does not
load) is recorded as `not_run` with the reason in `error` ("paused: …", "budget: …",
"config: …"), and logged once per challenger and reason. An upstream failure is an
`error`, which the scorer scores as 0; calls are attempted as the champion's live call is
(`as_live`, see `shadow.providers`). With `retry_errors`, pairs whose result is an error or
not run for a config reason are run again and their new result replaces the old one (a
retry that is not made keeps the old row).

Every database call runs in a worker thread under the `Database` lock, so the event loop
never waits on DuckDB.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Protocol

from pydantic import BaseModel, Field

from registry import NotFound, Refused, Registry, Variant, utcnow
from registry.workspace_config import Price, ShadowConfig
from registry.evidence import period_start
from shadow.apply import apply_variant
from shadow.budget import CapFactory, DailyBudget, spent_today
from shadow.pending import (CHALLENGER, CONTROL, count_pending, count_skipped, newest_ingested, pending_page,
                            replay_batches)
from shadow.pauses import Pause, PauseSet, read_pauses
from shadow.pricing import cost_usd, estimate_usd, price_of, workspace_prices
from shadow.providers import ProviderPool, estimate_tokens
from shadow.pyvariants import PythonVariants
from shadow.results import ResultWriter, Row, Work, replaces_earlier, result_row

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1)
PAUSES_REFRESH_S = 2.0



@dataclass(frozen=True)
class RunFilters:
    """Which work a run takes on: one slot, traffic received since a time (naive UTC), one challenger,
    traffic written after a `seq` (the daemon's passes look only at what arrived since the last one);
    `include_old` also runs pairs that cannot count in the current period, `retry_errors` runs
    errored (and config-not-run) pairs again."""

    slot: str | None = None
    since: datetime | None = None
    version: str | None = None
    after_seq: int | None = None
    include_old: bool = False
    retry_errors: bool = False


class VersionCounts(BaseModel):
    """One challenger's results in a run."""

    ok: int = 0
    error: int = 0
    not_run: int = 0
    cost_usd: float = 0.0
    unpriced: int = Field(0, description="Answers whose cost is unknown (model without a price).")


class RunReport(BaseModel):
    """What a run did; counts cover results written to the database."""

    total: int = Field(0, description="Pairs pending when the run started.")
    done: int = 0
    ok: int = 0
    error: int = 0
    not_run: int = 0
    not_run_reasons: dict[str, int] = Field(default_factory=dict, description="By reason keyword: paused, budget, config.")
    skipped: dict[str, int] = Field(
        default_factory=dict,
        description="Requests with pairs left out because they cannot count, by reason: before_period (received "
                    "before the current evaluation period or the challenger's registration), other_champion "
                    "(answered by a champion other than the current one). Known when the run starts.")
    retried: int = Field(0, description="Earlier errors or config not-run results replaced by a retry.")
    cost_usd: float = 0.0
    unpriced: int = Field(0, description="Answers whose cost is unknown (model without a price).")
    elapsed_s: float = 0.0
    versions: dict[str, VersionCounts] = Field(default_factory=dict)

    def count(self, row: Row) -> None:
        status, cost = row["status"], row["cost_usd"]
        counts = self.versions.setdefault(row["version_id"], VersionCounts())
        self.done += 1
        self.retried += replaces_earlier(row)
        setattr(self, status, getattr(self, status) + 1)
        setattr(counts, status, getattr(counts, status) + 1)
        if status == "not_run":
            keyword = row["error"].split(":", 1)[0]
            self.not_run_reasons[keyword] = self.not_run_reasons.get(keyword, 0) + 1
        elif cost is None:
            self.unpriced += 1
            counts.unpriced += 1
        else:
            self.cost_usd += cost
            counts.cost_usd += cost

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {n}" for k, n in sorted(self.not_run_reasons.items()))
        skipped = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped.items()))
        return (
            f"{self.done} of {self.total} pending: {self.ok} ok, {self.error} error, {self.not_run} not run"
            f"{f' ({reasons})' if reasons else ''}{f', {self.retried} retried' if self.retried else ''}; "
            f"cost ${self.cost_usd:.4f}{f' (+{self.unpriced} unpriced)' if self.unpriced else ''}; "
            f"{self.elapsed_s:.1f} s{f'; requests skipped ({skipped})' if skipped else ''}"
        )


Progress = Callable[[RunReport], None]


def _count(report: RunReport, progress: Progress | None, rows: list[Row]) -> None:
    """Count results once they are written, and tell the progress callback."""
    for row in rows:
        report.count(row)
    if progress is not None:
        progress(report)


class RunWork(Protocol):
    """One run's pairs and where their results go: `pages()` yields the pairs to dispatch, `start`/`add`/`close`
    take their results as `ResultWriter` does; `abandon()` (a call failed) ends `pages()`."""

    def pages(self) -> AsyncIterator[list[Work]]: ...
    def abandon(self) -> None: ...
    def start(self) -> None: ...
    async def add(self, row: Row) -> None: ...
    async def close(self) -> None: ...


class WorkSource(Protocol):
    """Where a runner's work comes from when it is shared with other runners (`shadow.replay_leases`);
    without one, and for a replay with filters (`RunPlan.shared` false), a run takes every pending pair itself.
    A shared plan's pending pairs are counted by blocks of `block_seqs` requests (`RunPlan.batches`)."""

    block_seqs: int

    def open(self, plan: RunPlan, on_written: Callable[[list[Row]], None]) -> RunWork: ...


@dataclass(frozen=True)
class ReplayedVariant:
    """A variant the runner replays traffic to (a challenger, or the champion as a control): how to
    build its calls, its sample rate and its price."""

    version_id: str
    slot: str
    role: str
    kind: str
    config: dict[str, Any]
    skill: str | None
    rate: float
    price: Price | None
    champion: str | None
    """The slot's current champion, whose answers this variant's are compared with."""
    counts_from: datetime
    """Requests received since then can count: the later of the period's start and the registration."""

    def body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The upstream request of a chat variant: applied by `apply_variant`, never streamed."""
        body = apply_variant(self.config.get("model"), self.config.get("params", {}), self.skill, request)
        body.pop("stream_options", None)
        body["stream"] = False
        return body

    def estimate_usd(self, body: dict[str, Any] | None) -> float:
        """What one call may cost, before it is made (0 when unknown)."""
        if self.kind == "python":
            return float(self.config.get("price_per_call_usd") or 0.0)
        prompt, completion = estimate_tokens(body or {})
        return estimate_usd(self.price, prompt, completion) or 0.0


@dataclass
class RunPlan:
    """Everything a run needs from the database, read once at its start."""

    challengers: dict[str, ReplayedVariant]
    budgets: dict[str, float]
    spent_today: dict[str, float]
    total: int
    since: datetime
    snapshot: datetime
    after_seq: int = 0
    include_old: bool = False
    retry_errors: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    shared: bool = False
    """Whether these are every runner's default pairs (a pass over what arrived, not a replay with
    filters), which runners sharing the work (`ShadowRunner.work`) cut into shared batches."""
    batches: list[tuple[str, int, int, int]] = field(default_factory=list)
    """A shared plan's pending pairs by challenger and block of `seq` (`shadow.pending.replay_batches`),
    read once with `total` (their sum): the batches its runner offers to the others."""


class ShadowRunner:
    """Runs pending shadow work; one instance serves many runs (the daemon's loop, or one replay)."""

    def __init__(
        self,
        registry: Registry,
        providers: ProviderPool | None = None,
        *,
        page_size: int = 1000,
        max_in_flight: int = 512,
        batch_rows: int = 200,
        flush_interval_s: float = 0.5,
        python_workers: int = 4,
        work: WorkSource | None = None,
        caps: CapFactory | None = None,
    ) -> None:
        self.registry = registry
        self.providers = providers or ProviderPool(registry.workspace.config.providers)
        self.page_size = page_size
        self.max_in_flight = max_in_flight
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.python = PythonVariants(python_workers, registry.workspace.python_roots)
        self.work = work
        """Shares the pairs with other runners (`backend: distributed`); None: this runner takes them all."""
        self.caps = caps
        """Makes each slot's daily cap (`shadow.budget.local_cap` when None; slices of a shared cap on distributed)."""
        self.skills: dict[str, str] = {}
        """Skill texts read by this runner, by sha256: a skill is stored by its content's hash, so its text never
        changes (every pass plans again, and on `backend: distributed` each read is a PostgreSQL round trip)."""

    async def __aenter__(self) -> "ShadowRunner":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close provider connections and the python-variant threads."""
        await self.providers.aclose()
        self.python.close()

    async def run_once(self, filters: RunFilters = RunFilters(), progress: Progress | None = None) -> RunReport:
        """Do the work pending now (traffic ingested before this call) and report what happened."""
        started = time.monotonic()
        await self.providers.close_retired()  # passes run one at a time: no call of an earlier one is in flight
        plan = await asyncio.to_thread(self._plan, filters)
        report = RunReport(total=plan.total, skipped=plan.skipped)
        if progress is not None:
            progress(report)
        on_written = partial(_count, report, progress)
        work = self.work.open(plan, on_written) if self.work is not None and plan.shared else None
        writer = work or ResultWriter(self.registry.database, on_written, self.batch_rows, self.flush_interval_s)
        if plan.total or work is not None:  # a shared run also takes batches others planned (or a dead runner held)
            await _Run(self, plan, writer, work).execute()
        report.elapsed_s = time.monotonic() - started
        if plan.total:
            log.info("shadow run: %s", report.summary())
        return report

    def _plan(self, filters: RunFilters) -> RunPlan:
        """Challengers, budgets, today's spend and the pending count (runs in a worker thread)."""
        workspace = self.registry.workspace
        slots = [filters.slot] if filters.slot else sorted(workspace.config.slots)
        challengers: dict[str, ReplayedVariant] = {}
        for slot in slots:
            challengers.update(self._challengers(slot, workspace.slot(slot).shadow))
        if filters.version is not None:
            challengers = {filters.version: self._chosen(challengers, filters)}
        plan = RunPlan(
            challengers=challengers,
            budgets={slot: workspace.slot(slot).shadow.daily_budget_usd for slot in slots},
            spent_today={},
            total=0,
            since=filters.since or EPOCH,
            snapshot=utcnow(),
            after_seq=filters.after_seq or 0,
            include_old=filters.include_old,
            retry_errors=filters.retry_errors,
            shared=filters == RunFilters(after_seq=filters.after_seq),
        )
        if challengers:
            with self.registry.database.reading() as connection:
                plan.snapshot = max(plan.snapshot, newest_ingested(connection, plan.after_seq) or plan.snapshot)
                plan.spent_today = spent_today(connection)
                if plan.shared and self.work is not None:  # one scan counts the pairs and cuts the batches
                    plan.batches = replay_batches(connection, plan, self.work.block_seqs)
                    plan.total = sum(pairs for *_, pairs in plan.batches)
                else:
                    plan.total = count_pending(connection, plan)
                plan.skipped = {} if plan.include_old else count_skipped(connection, plan)
        return plan

    def _challengers(self, slot: str, shadow: ShadowConfig) -> dict[str, ReplayedVariant]:
        """The slot's active challengers, and the champion as a control when its rate is set."""
        champion = self.registry.champion(slot)
        started = self._period_start(slot, champion)
        found = {}
        for variant in self.registry.variants(slot=slot, status="active"):
            if champion is not None and variant.version_id == champion.version_id:
                rate, role, counts_from = shadow.champion_control_rate, CONTROL, started
            else:
                rate = shadow.rates.get(variant.version_id, shadow.rates.get(variant.label, shadow.sample_rate))
                role, counts_from = CHALLENGER, max(started, variant.created_at)
            if role == CHALLENGER or rate > 0:
                found[variant.version_id] = self._challenger(variant, role, rate, champion, counts_from)
        return found

    def _period_start(self, slot: str, champion: Variant | None) -> datetime:
        """Where the slot's current evaluation period starts (the epoch when it has no champion: nothing pairs)."""
        since = self.registry.champion_since(slot)
        if champion is None or since is None:
            return EPOCH
        with self.registry.database.reading() as connection:
            return period_start(connection, slot, champion.version_id, since)

    def _challenger(self, variant: Variant, role: str, rate: float, champion: Variant | None,
                    counts_from: datetime) -> ReplayedVariant:
        prices = workspace_prices(self.registry.workspace)
        return ReplayedVariant(
            version_id=variant.version_id, slot=variant.slot, role=role, kind=variant.kind, config=variant.config,
            skill=self._skill(variant.skill_sha) if variant.skill_sha else None,
            rate=rate, price=price_of(prices, variant.config.get("model")) if variant.kind == "chat" else None,
            champion=champion.version_id if champion else None, counts_from=counts_from,
        )

    def _skill(self, sha: str) -> str:
        if sha not in self.skills:
            self.skills[sha] = self.registry.skill_text(sha)
        return self.skills[sha]

    def _chosen(self, challengers: dict[str, ReplayedVariant], filters: RunFilters) -> ReplayedVariant:
        """The one challenger `--version` names, or an error saying why it is not one."""
        if filters.version in challengers:
            return challengers[filters.version]
        variant = self.registry.variant(filters.version or "")
        if filters.slot is not None and variant.slot != filters.slot:
            raise NotFound(f"{variant.version_id} belongs to slot {variant.slot!r}, not {filters.slot!r}")
        if variant.status != "active":
            raise Refused(f"{variant.version_id} is retired: retired variants get no shadow traffic")
        raise Refused(
            f"{variant.version_id} is the champion of slot {variant.slot!r}: it is replayed only as a control, "
            f"when slots.{variant.slot}.shadow.champion_control_rate is above 0"
        )


class _Run:
    """One pass over the pending work: dispatch, limits on what runs, and the budget."""

    def __init__(self, runner: ShadowRunner, plan: RunPlan, writer: ResultWriter | RunWork,
                 work: RunWork | None) -> None:
        self.runner = runner
        self.plan = plan
        self.writer = writer
        self.work = work
        self.pages = work.pages() if work is not None else self._pages()
        self.budget = DailyBudget(plan.budgets, plan.spent_today, runner.caps)
        self.pauses = PauseSet([])
        self.pauses_read_at = 0.0
        self.in_flight = asyncio.Semaphore(runner.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None
        self.announced: set[tuple[str, str]] = set()

    async def execute(self) -> None:
        """Dispatch every pending pair, wait for the calls, and write every result."""
        self.writer.start()
        try:
            async for page in self.pages:
                for work in page:
                    await self._dispatch(work)
            while self.tasks:
                await asyncio.wait(set(self.tasks))
            self._raise_failure()
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.writer.close()
            await self.budget.release()

    async def _pages(self) -> AsyncIterator[list[Work]]:
        """Pending pairs, a page at a time."""
        cursor = (self.plan.since, "", "")
        while page := await asyncio.to_thread(self._fetch, cursor):
            yield page
            last = page[-1]
            cursor = (last.received_at, last.request_id, last.version_id)

    def _fetch(self, cursor: tuple[datetime, str, str]) -> list[Work]:
        with self.runner.registry.database.reading() as connection:
            rows = pending_page(connection, self.plan, cursor, self.runner.page_size)
        return [Work(at, rid, seq, vid, role, json.loads(request), replaces)
                for at, rid, seq, vid, role, request, replaces in rows]

    async def _refresh_pauses(self) -> None:
        """Re-read the pauses every few seconds, so a pause set during a long run takes effect."""
        if time.monotonic() - self.pauses_read_at >= PAUSES_REFRESH_S:
            self.pauses = PauseSet(await asyncio.to_thread(self._read_pauses))
            self.pauses_read_at = time.monotonic()

    def _read_pauses(self) -> list[Pause]:
        with self.runner.registry.database.reading() as connection:
            return read_pauses(connection)

    async def _dispatch(self, work: Work) -> None:
        """Start the call for one pair, or record why it is not made."""
        self._raise_failure()
        await self._refresh_pauses()
        challenger = self.plan.challengers[work.version_id]
        body = challenger.body(work.request) if challenger.kind == "chat" else None
        reason = self.pauses.reason_for(challenger.version_id) or self._config_problem(challenger)
        estimate = 0.0
        if reason is None:
            estimate = self.budget.estimate(challenger.version_id, partial(challenger.estimate_usd, body))
            reason = await self.budget.reserve(challenger.slot, estimate)
        if reason is not None:
            self._announce(challenger.version_id, reason)
            await self.writer.add(result_row(work, "not_run", error=reason))
            return
        await self.in_flight.acquire()
        task = asyncio.create_task(self._answer(work, challenger, body, estimate))
        self.tasks.add(task)
        task.add_done_callback(self._finished)

    def _config_problem(self, challenger: ReplayedVariant) -> str | None:
        provider = challenger.config.get("provider")
        if challenger.kind == "chat" and self.runner.providers.get(str(provider)) is None:
            return f"config: provider {provider!r} of {challenger.version_id} is not configured"
        return None

    async def _answer(self, work: Work, challenger: ReplayedVariant, body: dict[str, Any] | None, estimate: float) -> None:
        cost = None
        try:
            if body is not None:
                row = await self._chat(work, challenger, body)
            else:
                row = await self._python(work, challenger)
            cost = row["cost_usd"]
        finally:
            self.budget.settle(challenger.slot, challenger.version_id, estimate, cost)
        await self.writer.add(row)

    async def _chat(self, work: Work, challenger: ReplayedVariant, body: dict[str, Any]) -> Row:
        client = self.runner.providers.get(str(challenger.config["provider"]))
        assert client is not None, "checked before dispatch"
        result = await client.chat(body, as_live=True)
        if result.refused:
            reason = f"config: {result.error}"
            self._announce(challenger.version_id, reason)
            return result_row(work, "not_run", error=reason, attempts=result.attempts)
        status = "ok" if result.ok else "error"
        return result_row(
            work, status, output=result.output, tool_calls=result.tool_calls, usage=result.usage,
            cost=cost_usd(challenger.price, result.usage), latency_ms=result.latency_ms, error=result.error,
            attempts=result.attempts,
        )

    async def _python(self, work: Work, challenger: ReplayedVariant) -> Row:
        """One call of a python variant; each call that runs costs its declared price."""
        config = challenger.config
        answer = await self.runner.python.call(config["entrypoint"], work.request, config.get("params") or {})
        if answer.not_run is not None:
            reason = f"config: {answer.not_run}"
            self._announce(challenger.version_id, reason)
            return result_row(work, "not_run", error=reason)
        return result_row(work, "ok" if answer.error is None else "error", output=answer.output,
                          tool_calls=answer.tool_calls, cost=config.get("price_per_call_usd"),
                          latency_ms=answer.latency_ms, error=answer.error, attempts=1)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.in_flight.release()
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()
            if self.work is not None:
                self.work.abandon()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _announce(self, version_id: str, reason: str) -> None:
        """Log a not-run reason once per challenger and reason keyword."""
        key = (version_id, reason.split(":", 1)[0])
        if key not in self.announced:
            self.announced.add(key)
            log.warning("not running %s: %s", version_id, reason)
