"""The daemon: the single owner of the database, and everything that runs behind the champion.

It holds the workspace's daemon lock and DuckDB file, rewrites `routes.json` at start, and
runs, on APScheduler 3.x (`AsyncIOScheduler`):

  ingest     every `ingest_interval_s`: spool segments into traffic and outcomes
  score      every `score_interval_s`: every slot re-scored and snapshotted; gauges; auto-promote
  watch      every `watch_interval_s`: a freshly promoted champion that breaks a guardrail rolls back
  retention  daily: raw rows older than each slot's `retention.traffic_days` are deleted (the
             default window for slots no longer configured and for feedback never joined)
  rotation   at `zoo.schedule` (cron), when set: the stalest specs with a train: block are
             trained, one at a time, never overlapping; each result registers as a challenger
  config     every second, and on SIGHUP: an edited `shadowzoo.yaml` is applied (`ops.liveconfig`)

Every job has `coalesce=True` and `max_instances=1` (a slow run is never stacked with the
next: the next one simply sees more work), and a misfire grace of one interval (a run late
by less is still worth doing; later, the next run covers it). A run that did something or
failed logs one JSON line; an idle daemon logs nothing.
The shadow runner is a supervised asyncio task, restarted with back-off if it dies. The
admin API and /metrics share one port. SIGTERM/SIGINT: stop scheduling, give in-flight
shadow calls `shutdown_grace_s`, ingest what the spool holds, checkpoint, close.
A database DuckDB invalidated (a fatal error: a checkpoint that could not be written to a full
disk, an internal error while PostgreSQL died under a lake query) fails every later use until
the process restarts, so the daemon then stops by itself and exits non-zero, leaving the dead
database unclosed (closing it can abort the process): `serve`, or systemd, starts it again.

A daemon runs only the jobs of its roles (`ops.roles`, `serve --role`): `ingest` the ingest
job, `runner` the shadow runner, `scorer` score, watch, retention and rotation (on `backend:
distributed` each only where this daemon is the elected leader, `ops.leaders`), `admin` the
admin API, /metrics and the jobs it queues. Without `admin` it serves no port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from ops import tasks
from ops.admin import Api, build_admin_app
from ops.jobs import Job, JobBoard, workspace_file
from ops.leaders import job_leaders
from ops.liveconfig import POLL_S, LiveConfig
from ops.prometheus_metrics import DaemonMetrics
from ops.operations import LocalOperations
from ops.protocol import JobStatus
from ops.roles import ADMIN, DAEMON_ROLES, INGEST, RUNNER, SCORER, describe
from ops.state import DaemonInfo, DaemonLock
from registry import Registry, ShadowzooError, Workspace
from registry.workspace_config import DaemonConfig
from scorer.changes import Mark
from scorer.export import ExportOptions, ExportProgress, ExportSummary
from shadow.runner import RunFilters, ShadowRunner
from shadow.runner_worker import shadow_runner

log = logging.getLogger("shadowzoo.daemon")
RUNNER_IDLE_S = 1.0
RUNNER_MAX_BACKOFF_S = 30.0


class DatabaseInvalidated(ShadowzooError):
    """DuckDB invalidated the daemon's database: only a new process can open it again."""


class DaemonOperations(LocalOperations):
    """The operations as the daemon does them: with its status and jobs, and files written only inside the workspace."""

    def __init__(self, registry: Registry, daemon: "Daemon") -> None:
        super().__init__(registry)
        self.daemon = daemon

    def status(self) -> dict:
        return self.daemon.status()

    def jobs(self) -> list[JobStatus]:
        return self.daemon.jobs.all()

    def job(self, job_id: str) -> JobStatus:
        return self.daemon.jobs.status(job_id)

    def export(self, options: ExportOptions, out: str,
               progress: Callable[[ExportProgress], None] | None = None) -> ExportSummary:
        return super().export(options, str(workspace_file(self.workspace, out)), progress)


class Daemon:
    """One daemon process's worth of state."""

    def __init__(self, workspace: Workspace, port: int | None = None, roles: frozenset[str] = DAEMON_ROLES) -> None:
        self.workspace = workspace
        self.roles = roles
        self.live = LiveConfig(workspace)
        self.port = self.config.admin_port if port is None else port
        self.lock = DaemonLock(workspace)
        self.metrics = DaemonMetrics()
        self.jobs = JobBoard()
        self.stopping = asyncio.Event()
        self.last_runs: dict[str, dict] = {}
        self.job_threads: set[asyncio.Future] = set()
        """Jobs' work under way in worker threads: a stop waits for it rather than close the database under it."""
        self.runner_mark: Mark | None = None  # None: the first pass after start looks at all traffic
        self.runner: ShadowRunner | None = None
        self.reloading = asyncio.Lock()  # SIGHUP and the poll never apply a file twice at once
        self.started = time.time()
        self.invalidated: duckdb.FatalException | None = None
        """The fatal error that invalidated the database, once one has: the daemon is stopping for it."""
        self.abandoned: Registry | None = None
        """The registry over an invalidated database, kept open until the process exits."""

    @property
    def config(self) -> DaemonConfig:
        """The daemon's settings as they run now (a reload changes the live ones)."""
        return self.workspace.config.daemon

    async def run(self) -> None:
        """Serve until a signal arrives; then shut down in order."""
        token = os.environ.get(self.config.admin_token_env, "")
        if ADMIN in self.roles and not token:
            raise ShadowzooError(
                f"the admin API needs a token: set {self.config.admin_token_env} (daemon.admin_token_env in shadowzoo.yaml)")
        self.lock.acquire()
        try:
            await self._serve(token)
        finally:
            self.lock.release()
            if self.invalidated is not None:  # whatever else failed while stopping: the exit must skip teardown
                raise DatabaseInvalidated(f"DuckDB invalidated the database ({self.invalidated}); the daemon "
                                          "stopped so that it is started again with the database opened anew")

    async def _serve(self, token: str) -> None:
        registry = Registry.open(self.workspace, lock_wait_s=0)
        try:
            registry.database.limit(self.config.duckdb_threads, self.config.duckdb_memory_limit)
            registry.write_routes()
            leaders = job_leaders(self.workspace.config.backend, self.workspace.config.distributed)
            self.context = tasks.TaskContext(self.workspace, DaemonOperations(registry, self), self.metrics,
                                             leaders=leaders)
            await asyncio.to_thread(self.context.start_metrics)
            admin = await self._start_admin(token) if ADMIN in self.roles else None
            if admin is None:
                print(f"shadowzoo daemon {os.getpid()}: roles {describe(self.roles)}, no admin API", flush=True)
            await self._run_until_stopped(registry)
            await asyncio.to_thread(leaders.resign)
            if admin is not None:
                await admin.cleanup()
        finally:
            if self.invalidated is None:
                await asyncio.to_thread(_checkpoint_and_close, registry)
            else:
                self.abandoned = registry

    async def _start_admin(self, token: str) -> web.AppRunner:
        """Serve the admin API and /metrics, and tell the CLI where (the `admin` role)."""
        runner = web.AppRunner(build_admin_app(Api(self.context.operations, self.jobs, self.metrics.registry, token)),
                               access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.admin_host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._publish(token)
        return runner

    def _publish(self, token: str) -> None:
        base = f"http://{self.config.admin_host}:{self.port}"
        self.lock.publish(DaemonInfo(pid=os.getpid(), admin_url=base, metrics_url=f"{base}/metrics",
                                     started_at=datetime.now(UTC).isoformat()), token)
        print(f"shadowzoo daemon {os.getpid()}: roles {describe(self.roles)}, admin API {base}/admin, "
              f"metrics {base}/metrics", flush=True)

    async def _run_until_stopped(self, registry: Registry) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload_config(registry, force=True)))
        scheduler = self._scheduler(registry)
        scheduler.start()
        shadow = asyncio.create_task(self._supervise_runner(registry)) if RUNNER in self.roles else None
        others = [asyncio.create_task(self._serve_jobs())] if ADMIN in self.roles else []
        if ADMIN in self.roles and shadow is None:
            others.append(asyncio.create_task(self._refuse_replays()))
        await self.stopping.wait()
        scheduler.shutdown(wait=False)
        await asyncio.gather(*self.job_threads, return_exceptions=True)  # a job's thread ends before the database closes
        for task in others:
            task.cancel()
        if shadow is not None:
            try:
                await asyncio.wait_for(shadow, self.config.shutdown_grace_s)
            except asyncio.TimeoutError:
                log.info("shadow calls still in flight after %.0fs were abandoned; they run again after restart",
                         self.config.shutdown_grace_s)
        if INGEST in self.roles and self.invalidated is None:
            await self._job("ingest", tasks.ingest)

    def _scheduler(self, registry: Registry) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(self._reload_config, "interval", args=[registry], seconds=POLL_S, id="config",
                          coalesce=True, max_instances=1, misfire_grace_time=1)
        for role, name, function, seconds in (
            (INGEST, "ingest", tasks.ingest, self.config.ingest_interval_s),
            (SCORER, "score", tasks.score, self.config.score_interval_s),
            (SCORER, "watch", tasks.watch, self.config.watch_interval_s),
            (SCORER, "retention", tasks.retention, 86400.0),
        ):
            if role not in self.roles:
                continue
            scheduler.add_job(self._job, "interval", args=[name, function], seconds=seconds, id=name,
                              coalesce=True, max_instances=1, misfire_grace_time=max(1, int(seconds)),
                              next_run_time=datetime.now(UTC))
        schedule = self.workspace.config.zoo.schedule
        if schedule and SCORER in self.roles:
            scheduler.add_job(self._job, CronTrigger.from_crontab(schedule, timezone="UTC"), args=["rotation", tasks.rotate],
                              id="rotation", coalesce=True, max_instances=1, misfire_grace_time=3600)
        return scheduler

    async def _reload_config(self, registry: Registry, force: bool = False) -> None:
        """Apply an edited `shadowzoo.yaml` (see `ops.liveconfig`): routes rewritten, runner's providers updated."""
        async with self.reloading:
            reload = await asyncio.to_thread(self.live.check, force)
            if reload is None:
                return
            self.workspace.config = reload.config
            await asyncio.to_thread(registry.write_routes)
        if self.runner is not None:
            self.runner.providers.update(reload.config.providers)

    async def _job(self, name: str, function) -> None:
        """Run one job in a worker thread; count it; log one structured line when it did something or failed.

        An idle daemon writes nothing: a run whose counts are all zero or empty is not logged.
        """
        started = time.perf_counter()
        outcome, counts = "ok", {}
        work = asyncio.ensure_future(asyncio.to_thread(function, self.context))
        self.job_threads.add(work)
        work.add_done_callback(self.job_threads.discard)
        try:
            counts = await asyncio.shield(work)
        except asyncio.CancelledError:  # the scheduler stops: the thread cannot be; the stop awaits it
            return
        except Exception as exc:  # noqa: BLE001 - a failing job is logged and counted; the daemon goes on
            outcome, counts = "error", {"error": f"{type(exc).__name__}: {exc}"}
            self._stop_if_invalidated(exc)
        duration = time.perf_counter() - started
        self.metrics.job_runs.labels(name, outcome).inc()
        self.metrics.job_duration.labels(name).observe(duration)
        line = {"job": name, "outcome": outcome, "duration_s": round(duration, 4), **counts}
        failures = self.last_runs.get(name, {}).get("failures_in_a_row", 0) + 1 if outcome == "error" else 0
        self.last_runs[name] = {**line, "at": datetime.now(UTC).isoformat(), "failures_in_a_row": failures}
        if outcome == "error" or tasks.did_work(counts):
            log.info(json.dumps(line, default=str))

    async def _supervise_runner(self, registry: Registry) -> None:
        """Keep the shadow runner going: queued replays first, else whatever is pending."""
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                async with shadow_runner(registry) as runner:
                    self.runner, backoff = runner, 1.0
                    while not self.stopping.is_set():
                        await self._runner_turn(runner)
            except Exception as exc:  # noqa: BLE001 - the runner is restarted; the traceback goes to the log
                if self._stop_if_invalidated(exc):
                    return
                log.exception("shadow runner died; restarting in %.0fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RUNNER_MAX_BACKOFF_S)

    def _stop_if_invalidated(self, exc: BaseException) -> bool:
        """Stop the daemon when `exc` is DuckDB's fatal error (the database is invalidated: every later
        use fails); False for any other error, which the next run may not meet."""
        if not isinstance(exc, duckdb.FatalException):
            return False
        if self.invalidated is None:
            log.error("DuckDB invalidated the database (%s): stopping, to be started again", exc)
            self.invalidated = exc
            self.stopping.set()
        return True

    async def _runner_turn(self, runner: ShadowRunner) -> None:
        """One pass of the runner: a queued replay, or the traffic that arrived since the last pass."""
        if not self.jobs.replays.empty():
            job = self.jobs.replays.get_nowait()
            job.status.state = "running"
            try:
                job.finish(await runner.run_once(RunFilters(**job.arguments.model_dump()), progress=job.report))
            except Exception as exc:  # noqa: BLE001 - the job fails, the runner goes on
                job.finish(error=exc)
            return
        mark, after_seq = await asyncio.to_thread(self.context.runner_pass, self.runner_mark)
        report = await runner.run_once(RunFilters(after_seq=after_seq),
                                       progress=lambda r: self.metrics.queue_depth.set(r.total - r.done))
        self.runner_mark = mark  # the next pass looks only at traffic that arrived after this one began
        self.metrics.queue_depth.set(0)
        if report.total == 0:
            try:
                await asyncio.wait_for(self.stopping.wait(), RUNNER_IDLE_S)
            except asyncio.TimeoutError:
                pass

    async def _serve_jobs(self) -> None:
        """The other jobs (reports, exports, training, ingest), one at a time, each its operation in a worker thread."""
        while True:
            job: Job = await self.jobs.others.get()
            job.status.state = "running"
            try:
                job.finish(await asyncio.to_thread(job.operation.invoke, self.context.operations, job.arguments,
                                                   job.report))
            except Exception as exc:  # noqa: BLE001 - the job fails, the daemon goes on
                job.finish(error=exc)

    async def _refuse_replays(self) -> None:
        """Without the `runner` role nothing here replays: a replay asked of this admin API fails at once, saying so."""
        while True:
            job = await self.jobs.replays.get()
            job.finish(error=ShadowzooError(f"this daemon's roles are {describe(self.roles)}, without runner: "
                                            "ask a daemon with the runner role to replay"))

    def status(self) -> dict:
        """What `shadowzoo status` shows (runs in a worker thread)."""
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "roles": describe(self.roles),
            "last_runs": self.last_runs,
            "config": self.live.status(),
            **tasks.status(self.context),
        }


def _checkpoint_and_close(registry: Registry) -> None:
    """Fold a DuckDB file's WAL into it, then close. Not on the lake: its commits are durable as made,
    and a CHECKPOINT there rewrites shared data, which daemons stopping at once refuse each other."""
    if registry.database.path is not None:
        with registry.database.reading() as db:
            db.execute("CHECKPOINT")
    registry.close()


class ExpectedSchedulingFilter(logging.Filter):
    """Drops APScheduler's warnings that a run was skipped because the last one still runs, or started
    late: with `coalesce` and `max_instances=1` that is the design (the next run sees more work), and
    a busy daemon would otherwise log it every interval while it has nothing to report."""

    EXPECTED = ('Execution of job "%s" skipped', 'Run time of job "%s" was missed')

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("apscheduler") and isinstance(record.msg, str)
                    and record.msg.startswith(self.EXPECTED))


def configure_logging() -> None:
    """The daemon's log: one line per run that did something or failed, nothing while idle."""
    handler = logging.StreamHandler()
    handler.addFilter(ExpectedSchedulingFilter())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=[handler])
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # not one line per shadow or judge call


def run_daemon(workspace_dir: Path, port: int | None = None, roles: frozenset[str] = DAEMON_ROLES) -> None:
    """Entry point of the daemon process: it runs the jobs of `roles` (all of the daemon's by default)."""
    from registry import load_workspace

    configure_logging()
    daemon = Daemon(load_workspace(workspace_dir), port, roles)
    try:
        asyncio.run(daemon.run())
    except DatabaseInvalidated as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        logging.shutdown()
        os._exit(1)  # not through the interpreter's teardown: closing the dead database there can abort
