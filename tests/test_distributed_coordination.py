"""How workers on several hosts share work, leadership and budgets through PostgreSQL (issue 16):
work leases, leader election, budget slices and rate-limit shares, against a real server, with
real processes killed by SIGKILL where a crash is the point."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import date
from functools import partial
from pathlib import Path

import psycopg
import pytest

from registry.control_plane import migrate_control
from registry.leadership import Leadership, NotLeader, job_name
from registry.leases import LeaseLost, WorkLeases
from registry.workspace_config import ProviderConfig
from shadow.budget import USD_TOLERANCE
from shadow.budget_slices import BudgetLedger, SlicedCap
from shadow.rate_shares import Heartbeats, shared_provider
from tests.engines import PostgresServer
from tests.servers import wait_until

DAY = date(2026, 12, 5)


def _connect(url: str, **options) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, connect_timeout=5, **options)


@pytest.fixture(scope="module")
def control(postgres) -> str:
    """The module's PostgreSQL with the control-plane tables (each test uses kinds and names of its own)."""
    with _connect(postgres.url) as connection:
        migrate_control(connection)
        migrate_control(connection)  # a second process starting changes nothing
    return postgres.url


@pytest.fixture
def connections(control) -> Iterator[Callable[..., psycopg.Connection]]:
    """Connections to the control plane, closed after the test."""
    opened: list[psycopg.Connection] = []

    def connect(**options) -> psycopg.Connection:
        opened.append(_connect(control, **options))
        return opened[-1]

    yield connect
    for connection in opened:
        connection.close()


class Child:
    """A small worker in a process of its own, which reports one JSON line to a file and then waits to be killed."""

    def __init__(self, directory: Path, code: str) -> None:
        self.report = directory / "report.json"
        self.log = directory / "child.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code, str(self.report)], stdout=log,
                                            stderr=subprocess.STDOUT)

    def reported(self) -> dict:
        """What the child reported, once it has (a bounded wait)."""
        wait_until(lambda: self.report.exists() or self.process.poll() is not None, timeout_s=30)
        assert self.report.exists(), f"the child exited without reporting: {self.log.read_text()}"
        return json.loads(self.report.read_text())

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


@pytest.fixture
def children(tmp_path) -> Iterator[Callable[[str], "Child"]]:
    started: list[Child] = []

    def start(code: str) -> Child:
        directory = tmp_path / f"child{len(started)}"
        directory.mkdir()
        started.append(Child(directory, code))
        return started[-1]

    yield start
    for child in started:
        child.kill()


_REPORT_AND_WAIT = "pathlib.Path(sys.argv[1]).write_text(json.dumps(report)); time.sleep(600)"


# Work leases

def test_two_workers_claiming_at_once_never_hold_the_same_item(connections) -> None:
    items = [f"segment-{n:04d}" for n in range(300)]
    assert WorkLeases(connections(), "segment", "offerer", 30).offer(items) == 300
    assert WorkLeases(connections(), "segment", "offerer", 30).offer(items[:10]) == 0  # offered once
    done: dict[str, list[str]] = {"a": [], "b": []}

    def work(holder: str) -> None:
        leases = WorkLeases(connections(), "segment", holder, 30)
        for _ in range(200):
            claimed = leases.claim(7)
            if not claimed:
                return
            for lease in claimed:
                with leases.fenced(lease.token) as item:
                    done[holder].append(item)

    workers = [threading.Thread(target=work, args=(holder,)) for holder in done]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not set(done["a"]) & set(done["b"])
    assert sorted(done["a"] + done["b"]) == items
    assert done["a"] and done["b"]  # both took part
    assert WorkLeases(connections(), "segment", "a", 30).open_count() == 0
    assert WorkLeases(connections(), "segment", "a", 30).offer(items) == 0  # a done item is never offered again


def test_an_item_held_by_a_live_worker_is_not_claimed_until_it_is_released(connections) -> None:
    first = WorkLeases(connections(), "replay-held", "first", 60)
    second = WorkLeases(connections(), "replay-held", "second", 60)
    first.offer(["r1:v1", "r2:v1"])
    held = first.claim(10)
    assert [lease.item for lease in held] == ["r1:v1", "r2:v1"]
    assert second.claim(10) == []
    assert first.renew([lease.token for lease in held]) == {lease.token for lease in held}
    assert first.release([held[0].token]) == 1
    taken = second.claim(10)
    assert [lease.item for lease in taken] == ["r1:v1"] and taken[0].token > held[-1].token
    with pytest.raises(LeaseLost):
        first.complete(held[0].token)


def test_a_killed_holders_items_are_taken_after_expiry_and_its_late_complete_fails(connections, control,
                                                                                   children) -> None:
    survivor = WorkLeases(connections(), "segment-killed", "survivor", 30)
    survivor.offer(["s1", "s2", "s3", "s4"])
    holder = children(
        "import json, pathlib, sys, time, psycopg; from registry.leases import WorkLeases\n"
        f"leases = WorkLeases(psycopg.connect({control!r}, autocommit=True), 'segment-killed', 'doomed', 1.0)\n"
        "report = {lease.item: lease.token for lease in leases.claim(3)}\n" + _REPORT_AND_WAIT)
    lost = holder.reported()
    assert sorted(lost) == ["s1", "s2", "s3"]
    holder.kill()

    taken: list = []
    wait_until(lambda: taken.extend(survivor.claim(10)) or {lease.item for lease in taken} >= set(lost), timeout_s=30)
    assert sorted(lease.item for lease in taken) == ["s1", "s2", "s3", "s4"]
    assert all(lease.token > max(lost.values()) for lease in taken)
    late = WorkLeases(connections(), "segment-killed", "doomed", 1.0)  # the holder, had it only stalled
    assert late.renew(lost.values()) == set()
    for token in lost.values():
        with pytest.raises(LeaseLost, match="no longer held"):
            late.complete(token)
    for lease in taken:
        survivor.complete(lease.token)
    assert survivor.open_count() == 0


def test_a_holder_late_to_renew_keeps_its_items_while_nobody_claimed_them(connections) -> None:
    late = WorkLeases(connections(), "segment-late", "late", 0.2)
    late.offer(["s1"])
    [lease] = late.claim(1)
    probe = connections()
    wait_until(lambda: probe.execute("SELECT expires_at < now() FROM work_leases WHERE token = %s",
                                     [lease.token]).fetchone()[0], timeout_s=15)
    assert late.renew([lease.token]) == {lease.token}
    late.complete(lease.token)
    assert late.open_count() == 0


def test_an_expired_lease_being_committed_is_not_claimed_by_another_worker(connections) -> None:
    slow = WorkLeases(connections(), "segment-fenced", "slow", 0.2)
    other = WorkLeases(connections(), "segment-fenced", "other", 30)
    slow.offer(["s1"])
    [lease] = slow.claim(1)
    probe = connections()
    with slow.fenced(lease.token) as item:
        wait_until(lambda: probe.execute("SELECT expires_at < now() FROM work_leases WHERE token = %s",
                                         [lease.token]).fetchone()[0], timeout_s=15)
        assert other.claim(1) == []  # the row is locked by the commit in progress
        assert item == "s1"
    assert other.claim(1) == []  # and then done
    assert other.open_count() == 0


# Leadership

def _candidate(url: str, name: str, candidate: str) -> Leadership:
    return Leadership(partial(psycopg.connect, url, connect_timeout=5, application_name=candidate), name, candidate)


def test_exactly_one_of_two_candidates_leads_and_a_resignation_hands_over(control) -> None:
    one, two = _candidate(control, job_name("scorer", "support"), "one"), _candidate(control, "scorer/support", "two")
    try:
        for _ in range(5):
            assert [one.campaign(), two.campaign()].count(True) == 1
        leader, other = (one, two) if one.epoch is not None else (two, one)
        won = leader.epoch
        leader.resign()
        assert other.campaign() and other.epoch == won + 1
        assert not leader.campaign()
    finally:
        one.resign()
        two.resign()


def test_a_leader_killed_with_sigkill_is_replaced_and_the_new_epoch_is_higher(control, children) -> None:
    waiting = _candidate(control, "watch", "waiting")
    try:
        leader = children(
            "import json, pathlib, sys, time, psycopg, functools; from registry.leadership import Leadership\n"
            f"me = Leadership(functools.partial(psycopg.connect, {control!r}), 'watch', 'doomed')\n"
            "deadline = time.monotonic() + 30\n"
            "while not me.campaign() and time.monotonic() < deadline: time.sleep(0.05)\n"
            "report = {'epoch': me.epoch}\n" + _REPORT_AND_WAIT)
        killed_epoch = leader.reported()["epoch"]
        assert killed_epoch is not None
        assert not waiting.campaign()
        leader.kill()
        wait_until(waiting.campaign, timeout_s=30)
        assert waiting.epoch > killed_epoch
    finally:
        waiting.resign()


def test_a_leader_cut_off_from_postgres_has_its_writes_refused_by_the_epoch(control, connections) -> None:
    stale, next_leader = _candidate(control, "retention", "stale"), _candidate(control, "retention", "next")
    admin = connections()
    try:
        assert stale.campaign() and not next_leader.campaign()
        with admin.transaction():
            assert stale.fence(admin) == stale.epoch
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'stale'")
        wait_until(next_leader.campaign, timeout_s=30)
        with pytest.raises(NotLeader, match="stale no longer leads retention"), admin.transaction():
            stale.fence(admin)  # it has not noticed yet: its write is refused all the same
        assert not stale.campaign()  # and its next check says so
    finally:
        stale.resign()
        next_leader.resign()


def test_leadership_moves_to_another_candidate_after_postgres_restarts() -> None:
    server = PostgresServer()  # this test restarts it: not the module's server
    one = two = None
    try:
        with _connect(server.url) as connection:
            migrate_control(connection)
        one, two = _candidate(server.url, "rotation", "one"), _candidate(server.url, "rotation", "two")
        assert one.campaign() and not two.campaign()
        first = one.epoch
        server.restart()
        wait_until(two.campaign, timeout_s=30)  # the old session and its lock are gone
        assert two.epoch == first + 1
        assert not one.campaign()
        with _connect(server.url) as connection, pytest.raises(NotLeader), connection.transaction():
            one.fence(connection)
    finally:
        for candidate in (one, two):
            if candidate is not None:
                candidate.resign()
        server.close()


# Budget slices

async def _spend(cap: SlicedCap, calls: int, estimate: float, cost: float, in_flight: int = 4) -> int:
    """Make up to `calls` calls of `estimate` (each costs `cost`), a few at once, until the cap refuses; how many ran."""
    made = 0
    slots = asyncio.Semaphore(in_flight)

    async def call() -> None:
        nonlocal made
        async with slots:
            if not await cap.reserve(estimate):
                return
            await asyncio.sleep(random.random() / 1000)
            cap.settle(estimate, cost)
            made += 1

    await asyncio.gather(*(call() for _ in range(calls)))
    await cap.release()
    return made


def test_two_runners_spending_one_daily_cap_never_pass_it(connections) -> None:
    limit, estimate = 1.0, 0.01

    async def both() -> list[int]:
        caps = [SlicedCap(BudgetLedger(connections()), "shadow/support", DAY, limit) for _ in range(2)]
        return await asyncio.gather(*(_spend(cap, 200, estimate, cost=0.008) for cap in caps))

    made = asyncio.run(both())
    day = BudgetLedger(connections()).day("shadow/support", DAY)
    assert all(made)  # both runners spent
    assert day.spent_usd == pytest.approx(sum(made) * 0.008)
    assert day.spent_usd <= limit
    assert day.allotted_usd == pytest.approx(day.spent_usd)  # every unused rest came back
    assert limit - day.spent_usd < 2 * estimate  # and was spent by whoever could: each runner leaves less than a call


def test_calls_costing_more_than_estimated_pass_the_cap_by_their_shortfall_only(connections) -> None:
    limit, estimate, cost, in_flight = 0.5, 0.01, 0.012, 4

    async def both() -> list[int]:
        caps = [SlicedCap(BudgetLedger(connections()), "judge/tone", DAY, limit) for _ in range(2)]
        return await asyncio.gather(*(_spend(cap, 200, estimate, cost, in_flight) for cap in caps))

    made = asyncio.run(both())
    day = BudgetLedger(connections()).day("judge/tone", DAY)
    assert day.spent_usd == pytest.approx(sum(made) * cost)
    assert day.spent_usd <= limit + 2 * in_flight * (cost - estimate) + USD_TOLERANCE  # per runner: its calls in flight


def test_a_runner_killed_holding_a_slice_leaks_at_most_that_slice(connections, control, children) -> None:
    limit, estimate = 1.0, 0.01
    killed = children(
        "import asyncio, datetime, json, pathlib, sys, time, psycopg\n"
        "from shadow.budget_slices import BudgetLedger, SlicedCap\n"
        f"cap = SlicedCap(BudgetLedger(psycopg.connect({control!r}, autocommit=True)), 'shadow/killed', "
        f"datetime.date({DAY.year}, {DAY.month}, {DAY.day}), {limit})\n"
        f"assert asyncio.run(cap.reserve({estimate}))\n"
        "report = {'held': cap.held}\n" + _REPORT_AND_WAIT)
    leaked = killed.reported()["held"]
    killed.kill()

    async def survivors() -> list[int]:
        caps = [SlicedCap(BudgetLedger(connections()), "shadow/killed", DAY, limit) for _ in range(2)]
        return await asyncio.gather(*(_spend(cap, 200, estimate, cost=estimate) for cap in caps))

    made = asyncio.run(survivors())
    day = BudgetLedger(connections()).day("shadow/killed", DAY)
    assert 0 < leaked < limit / 2
    assert day.spent_usd == pytest.approx(sum(made) * estimate)
    assert day.allotted_usd == pytest.approx(day.spent_usd + leaked)  # the slice counts as spent, never more
    assert day.allotted_usd <= limit + 1e-9
    # the rest of the cap was spent: each survivor leaves less than a call (the last to give its rest
    # back gives it when the other has stopped asking)
    assert day.spent_usd > limit - leaked - 2 * estimate


# Rate-limit shares

def test_each_live_runner_takes_an_equal_share_of_a_providers_limits(connections) -> None:
    first, second = Heartbeats(connections(), "host-a:1", "runner"), Heartbeats(connections(), "host-b:1", "runner")
    Heartbeats(connections(), "host-a:2", "ingest").beat()  # another role does not count
    assert first.beat() == 1
    assert second.beat() == 2 and first.beat() == 2
    provider = ProviderConfig(base_url="http://127.0.0.1:1/v1", requests_per_minute=100, tokens_per_minute=9001)
    share = shared_provider(provider, first.beat())
    assert (share.requests_per_minute, share.tokens_per_minute) == (50, 4500)
    assert shared_provider(provider.model_copy(update={"tokens_per_minute": None}), 3).tokens_per_minute is None
    second.leave()
    assert first.beat() == 1


def test_a_runner_whose_heartbeat_stopped_no_longer_takes_a_share(connections) -> None:
    live, gone = Heartbeats(connections(), "host-a:7", "runner-stale"), Heartbeats(connections(), "host-b:7", "runner-stale")
    gone.beat()
    assert live.beat() == 2
    # its last beat, as PostgreSQL will see it once three beats were missed
    connections().execute("UPDATE worker_heartbeats SET seen_at = now() - interval '1 minute' WHERE worker = 'host-b:7'")
    assert live.beat() == 1
