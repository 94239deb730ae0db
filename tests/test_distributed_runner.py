"""Runner workers sharing the replay work on `backend: distributed` (issue 16): batches under
leases in PostgreSQL, the slot's daily budget as slices of one cap, each pair answered once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from registry import Registry, load_workspace
from registry.leases import WorkLeases
from shadow import pending
from shadow.replay_leases import KIND, batch_name
from shadow.runner import RunFilters, RunReport
from shadow.runner_worker import RunnerWorker
from tests.engines import distributed_section
from tests.servers import champion_workspace, edit_config, ingest_answered, start_steady_simulator, wait_until

pytestmark = pytest.mark.usefixtures("engine_credentials")  # the engines' and the simulator's keys, as an operator sets them

SLOT = "support-triage"
IN_FLIGHT = 4
"""Calls in flight per worker (small, so two workers interleave and a budget binds mid-run)."""
BLOCK = 6
"""Requests per replay batch (small, so the work is cut into many batches)."""
LATENCY_MS = 200


@pytest.fixture(scope="module")
def simulator():
    handle = start_steady_simulator(LATENCY_MS)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def workspace_dir(tmp_path_factory, simulator, postgres, object_store, lake_extensions) -> Path:
    settings = {"backend": "distributed", "distributed": distributed_section(postgres, object_store, lake_extensions)}
    return champion_workspace(tmp_path_factory.mktemp("runners") / "ws", simulator.base_url, settings=settings)


def _results(workspace_dir: Path, prefix: str) -> list[tuple[str, str, str, str | None, float | None]]:
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        return db.execute("SELECT request_id, version_id, status, error, cost_usd FROM shadow_results "
                          "WHERE request_id LIKE ? ORDER BY 1, 2", [f"{prefix}-%"]).fetchall()


def _budget_day(postgres) -> tuple[float, float, float]:
    with psycopg.connect(postgres.url, autocommit=True) as control:
        return control.execute("SELECT limit_usd, allotted_usd, spent_usd FROM budget_days WHERE scope = %s",
                               [f"shadow/{SLOT}"]).fetchone() or (0.0, 0.0, 0.0)  # no reservation yet


async def _two_workers(workspace_dir: Path) -> list[RunReport]:
    """Two runner workers (own lease, ledger and heartbeat connections) over one open registry, at once."""
    with Registry.open(load_workspace(workspace_dir)) as registry:
        async with RunnerWorker(registry, "host-a/1", max_in_flight=IN_FLIGHT) as first, \
                RunnerWorker(registry, "host-b/1", max_in_flight=IN_FLIGHT) as second:
            for worker in (first, second):
                worker.runner.work.block_seqs = BLOCK
            return list(await asyncio.gather(first.runner.run_once(), second.runner.run_once()))


@pytest.fixture(scope="module")
def shared(workspace_dir) -> tuple[set[tuple[str, str]], list[RunReport], list[tuple]]:
    """48 requests replayed by two workers at once: the pairs, the workers' reports, the results."""
    pairs = ingest_answered(workspace_dir, "shared", 48)
    reports = asyncio.run(_two_workers(workspace_dir))
    return pairs, reports, _results(workspace_dir, "shared")


def test_two_runner_workers_answer_every_pair_once_between_them(shared, postgres) -> None:
    pairs, reports, results = shared
    assert {(rid, vid) for rid, vid, *_ in results} == pairs  # none missing, and one row per pair (keyed)
    assert all(status == "ok" for _, _, status, _, _ in results)
    assert all(report.done > 0 for report in reports), [r.summary() for r in reports]  # both took a share
    assert sum(report.done for report in reports) == len(pairs)  # no batch was done twice
    limit, allotted, spent = _budget_day(postgres)
    written = sum(cost for *_, cost in results)
    # every slice was given back, and what the workers reported spent is what was written: no call made twice
    assert (allotted, spent) == (pytest.approx(written), pytest.approx(written))
    with psycopg.connect(postgres.url, autocommit=True) as control:
        assert control.execute("SELECT count(*) FROM worker_heartbeats").fetchone()[0] == 0  # both left


def test_two_runner_workers_hold_the_slot_budget_together(workspace_dir, shared, postgres) -> None:
    costs = [cost for *_, cost in shared[2]]
    cost_per_call = max(costs)
    pairs = ingest_answered(workspace_dir, "budget", 48)  # the same shapes as the shared 48: the same costs
    _, _, spent_before = _budget_day(postgres)
    room = sum(costs) / 3  # what a third of them cost, so most must be refused whatever the estimates
    edit_config(workspace_dir, lambda c: c["slots"][SLOT]["shadow"].update(daily_budget_usd=spent_before + room))
    asyncio.run(_two_workers(workspace_dir))
    results = _results(workspace_dir, "budget")
    assert {(rid, vid) for rid, vid, *_ in results} == pairs
    answered = [cost for _, _, status, _, cost in results if status == "ok"]
    refused = [error for _, _, status, error, _ in results if status == "not_run"]
    assert answered and refused and all(error.startswith("budget:") for error in refused)
    # each worker alone would spend the whole room; together they pass it at most by what the calls in
    # flight cost beyond their estimates (shadow/budget_slices.py), here under one call each
    overshoot_bound = 2 * IN_FLIGHT * cost_per_call
    assert sum(answered) <= room + overshoot_bound
    limit, allotted, spent = _budget_day(postgres)
    assert spent - spent_before == pytest.approx(sum(answered))
    assert spent <= limit + overshoot_bound


_WORKER = """
import asyncio, sys
from pathlib import Path
from registry import Registry, load_workspace
from shadow.runner_worker import RunnerWorker

async def main():
    with Registry.open(load_workspace(Path(sys.argv[1]))) as registry:
        async with RunnerWorker(registry, sys.argv[2], lease_ttl_s=float(sys.argv[3]), max_in_flight=2) as worker:
            worker.runner.work.block_seqs = int(sys.argv[4])
            print((await worker.runner.run_once()).done)

asyncio.run(main())
"""


def test_a_runner_killed_mid_run_loses_its_batches_to_another_after_the_expiry(workspace_dir, postgres,
                                                                               tmp_path) -> None:
    edit_config(workspace_dir, lambda c: c["slots"][SLOT]["shadow"].update(daily_budget_usd=1000.0))
    pairs = ingest_answered(workspace_dir, "killed", 24)
    log = (tmp_path / "doomed.log").open("w")
    doomed = _worker_process(workspace_dir, "doomed/1", 3, log)
    try:
        with psycopg.connect(postgres.url, autocommit=True) as control:
            held = "SELECT item FROM work_leases WHERE holder = 'doomed/1' AND done_at IS NULL"
            taken = wait_until(lambda: doomed.poll() is None and control.execute(held).fetchall(), timeout_s=60)
            doomed.kill()  # SIGKILL, with calls in flight and batches held
            doomed.wait(timeout=10)
            orphaned = {item for (item,) in control.execute(held).fetchall()}
        assert orphaned, taken
        with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
            mark = db.execute("SELECT max(seq) FROM traffic").fetchone()[0]

        async def survive() -> None:
            """A daemon's passes: each over the traffic after its mark, past the killed runner's."""
            with Registry.open(load_workspace(workspace_dir)) as registry:
                async with RunnerWorker(registry, "survivor/1", lease_ttl_s=3, max_in_flight=IN_FLIGHT) as worker:
                    worker.runner.work.block_seqs = BLOCK
                    for _ in range(40):  # each pass takes what is free; the orphans once their leases expire
                        await worker.runner.run_once(RunFilters(after_seq=mark))
                        if not await asyncio.to_thread(_open, postgres):
                            return
                        await asyncio.sleep(0.5)

        asyncio.run(survive())
    finally:
        doomed.kill()
        log.close()
    results = _results(workspace_dir, "killed")
    assert {(rid, vid) for rid, vid, *_ in results} == pairs  # every pair answered, each once (keyed rows)
    with psycopg.connect(postgres.url, autocommit=True) as control:
        finished_by = dict(control.execute("SELECT item, holder FROM work_leases WHERE item = ANY(%s)",
                                           [list(orphaned)]).fetchall())
    assert set(finished_by.values()) == {"survivor/1"}, finished_by


def _worker_process(workspace_dir: Path, holder: str, ttl_s: float, output) -> subprocess.Popen:
    """A runner worker in a process of its own (a host), doing one run; it prints how many results it wrote."""
    return subprocess.Popen([sys.executable, "-c", _WORKER, str(workspace_dir), holder, str(ttl_s), str(BLOCK)],
                            stdout=output, stderr=subprocess.STDOUT, text=True)


def test_runner_workers_in_two_processes_answer_every_pair_once_between_them(workspace_dir, postgres,
                                                                             tmp_path) -> None:
    pairs = ingest_answered(workspace_dir, "hosts", 24)
    _, _, spent_before = _budget_day(postgres)
    logs = [tmp_path / f"host-{n}.log" for n in range(2)]
    outputs = [path.open("w") for path in logs]
    workers = [_worker_process(workspace_dir, f"host-{n}/1", 30, output) for n, output in enumerate(outputs)]
    try:
        codes = [worker.wait(timeout=180) for worker in workers]
    finally:
        for worker, output in zip(workers, outputs):
            worker.kill()
            output.close()
    assert codes == [0, 0], [path.read_text()[-2000:] for path in logs]
    written = [int(path.read_text().split()[-1]) for path in logs]
    results = _results(workspace_dir, "hosts")
    assert {(rid, vid) for rid, vid, *_ in results} == pairs
    assert sum(written) == len(pairs) and all(written), written  # both took a share, no batch written twice
    _, _, spent = _budget_day(postgres)
    assert spent - spent_before == pytest.approx(sum(cost for *_, cost in results))  # no call made twice


def _open(postgres) -> int:
    with psycopg.connect(postgres.url, autocommit=True) as control:
        return control.execute("SELECT count(*) FROM work_leases WHERE kind = 'replay' AND done_at IS NULL").fetchone()[0]


def test_batches_planned_from_different_traffic_answer_each_pair_once(workspace_dir, postgres) -> None:
    pairs = ingest_answered(workspace_dir, "overlap", 10)
    with Registry.open(load_workspace(workspace_dir)) as registry, registry.database.reading() as db:
        first_seq = db.execute("SELECT min(seq) FROM traffic WHERE request_id LIKE 'overlap-%'").fetchone()[0]
    version = min(version for _, version in pairs)
    # a runner that planned before the last requests arrived offered a narrower batch of the same block
    with psycopg.connect(postgres.url, autocommit=True) as control:
        earlier = WorkLeases(control, KIND, "earlier-planner", 30)
        block = first_seq // BLOCK * BLOCK
        assert earlier.offer([batch_name(version, block, first_seq + 1, 2 + first_seq - block)]) == 1

    async def replay() -> RunReport:
        with Registry.open(load_workspace(workspace_dir)) as registry:
            async with RunnerWorker(registry, "host-c/1", max_in_flight=IN_FLIGHT) as worker:
                worker.runner.work.block_seqs, worker.runner.work.hold = BLOCK, 50  # every batch held at once
                return await worker.runner.run_once()

    report = asyncio.run(replay())
    assert {(rid, vid) for rid, vid, *_ in _results(workspace_dir, "overlap")} == pairs
    assert report.done == len(pairs)
    assert not _open(postgres)


def test_a_runner_whose_leases_expire_under_it_writes_the_batches_it_claims_again(workspace_dir, postgres) -> None:
    """A renewal waiting behind a slow write lets a batch's lease expire, and the runner's next claim
    takes its own batch again: its results are written under that claim, none dropped, none left pending."""
    pairs = ingest_answered(workspace_dir, "expiring", 12)
    running, expirations = threading.Event(), []

    def expire_the_runners_leases() -> None:
        running.wait(timeout=60)
        with psycopg.connect(postgres.url, autocommit=True) as control:
            while running.is_set():
                expired = control.execute("UPDATE work_leases SET expires_at = now() - interval '1 second' "
                                          "WHERE holder = 'host-e/1' AND done_at IS NULL").rowcount
                expirations.append(expired)
                time.sleep(0.1)

    async def replay() -> RunReport:
        with Registry.open(load_workspace(workspace_dir)) as registry:
            async with RunnerWorker(registry, "host-e/1", max_in_flight=IN_FLIGHT) as worker:
                worker.runner.work.block_seqs = BLOCK
                running.set()
                try:
                    return await worker.runner.run_once()
                finally:
                    running.clear()

    expiring = threading.Thread(target=expire_the_runners_leases)
    expiring.start()
    try:
        report = asyncio.run(replay())
    finally:
        running.clear()
        expiring.join()
    assert any(expirations), expirations  # leases did expire under the runner
    assert {(rid, vid) for rid, vid, *_ in _results(workspace_dir, "expiring")} == pairs
    assert report.done == len(pairs)
    assert not _open(postgres)


def test_a_runner_pass_reads_its_pending_pairs_once_to_count_them_and_cut_the_batches(workspace_dir, postgres,
                                                                                        monkeypatch) -> None:
    pairs = ingest_answered(workspace_dir, "scans", 8)
    counted: list[str] = []  # the whole pending set read: counted (count_pending) or cut into batches (replay_batches)
    pending_sql = pending._pending_sql

    def spied(plan, select: str, tail: str, counting: str = "can"):
        if select == "count(*)" or "AS block" in select:
            counted.append(select)
        return pending_sql(plan, select, tail, counting)

    monkeypatch.setattr(pending, "_pending_sql", spied)

    async def replay() -> RunReport:
        with Registry.open(load_workspace(workspace_dir)) as registry:
            async with RunnerWorker(registry, "host-d/1", max_in_flight=IN_FLIGHT) as worker:
                worker.runner.work.block_seqs = BLOCK
                return await worker.runner.run_once()

    report = asyncio.run(replay())
    assert {(rid, vid) for rid, vid, *_ in _results(workspace_dir, "scans")} == pairs
    assert report.total == report.done >= len(pairs)  # the count is the batches' pairs, all of them done
    assert len(counted) == 1, counted  # a lake scan per pass, on every worker: not one to count and one to cut
    assert not _open(postgres)


def test_runner_workers_split_a_providers_rate_limits_between_the_live_ones(workspace_dir, postgres) -> None:
    with psycopg.connect(postgres.url, autocommit=True) as control:
        control.execute("DELETE FROM worker_heartbeats")  # no runner of an earlier test (the killed one) counts

    def limits(worker: RunnerWorker) -> tuple[int | None, int | None]:
        config = worker.runner.providers.get("sim").config
        return config.requests_per_minute, config.tokens_per_minute

    async def join_and_leave() -> list[tuple[int | None, int | None]]:
        with Registry.open(load_workspace(workspace_dir)) as registry:
            async with RunnerWorker(registry, "host-a/2", heartbeat_s=0.1) as first:
                alone = limits(first)
                async with RunnerWorker(registry, "host-b/2", heartbeat_s=0.1) as second:
                    await asyncio.wait_for(_until(lambda: limits(first) == (300, 45000)), 30)
                    together = [limits(first), limits(second)]
        return [alone, *together]

    edit_config(workspace_dir, lambda c: c["providers"]["sim"].update(requests_per_minute=600, tokens_per_minute=90000))
    try:
        assert asyncio.run(join_and_leave()) == [(600, 90000), (300, 45000), (300, 45000)]
    finally:
        edit_config(workspace_dir, lambda c: c["providers"]["sim"].update(requests_per_minute=None,
                                                                          tokens_per_minute=None))


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.05)
