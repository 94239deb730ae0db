"""`shadowzoo demo`: the whole loop, offline, in a fresh workspace, in about two minutes.

It starts the bundled simulator (not a real LLM) and `shadowzoo serve`, registers a
champion and four challengers from the zoo, sends traffic through the gateway with the
official `openai` client (some of it streamed), posts the labels afterwards, waits while
the daemon replays and scores, trains a better skill from the labelled traffic and
replays it, then prints the leaderboard, writes `report.html`, and prints the promote
command the evidence supports. Every operator step is the CLI command a user would
type, printed before it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import openai
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ops.output import console, say
from ops.workspace_init import init_workspace
from registry import ShadowzooError

DEMO_MARKER = ".shadowzoo-demo"
SLOT = "support-triage"
STREAM_SHARE = 0.2
CONCURRENCY = 48
CATCH_UP_TIMEOUT_S = 240
SETTLED_POLLS = 4  # 8 s without change: longer than the demo's 5 s scoring interval


def run_demo(directory: Path, requests: int = 2000, keep_running: bool = False) -> None:
    """Create the demo workspace at `directory` (replacing an earlier demo's) and run the loop."""
    _fresh(directory)
    init_workspace(directory)
    (directory / DEMO_MARKER).write_text("created by `shadowzoo demo`; safe to delete\n")
    ports = _configure(directory)
    os.environ.setdefault("SHADOWZOO_ADMIN_TOKEN", secrets.token_urlsafe(16))
    os.environ.setdefault("SIM_API_KEY", "demo")
    ws = ["-w", str(directory)]
    with ExitStack() as stack:
        sim = stack.enter_context(_process("simulator", [_cli(), "sim", "--config", "simulator.yaml", "--port", str(ports["sim"])],
                                     directory, f"http://127.0.0.1:{ports['sim']}/healthz", keep_running))
        _step(ws, "zoo", "register", "--all-active")
        ids = {v["label"]: v["version_id"] for v in json.loads(_quiet(ws, "variants", "list", "--json"))}
        _step(ws, "promote", SLOT, ids["baseline"], "--reason", "initial champion")
        say(f"\n[bold cyan]$ shadowzoo serve --workers 2[/bold cyan]   (gateway :{ports['gateway']}, daemon :{ports['admin']})")
        stack.enter_context(_process("serve", [_cli(), "serve", "--workers", "2"], directory,
                                     f"http://127.0.0.1:{ports['admin']}/healthz", keep_running))
        _wait_healthy(f"http://127.0.0.1:{ports['gateway']}/healthz")
        gateway = f"http://127.0.0.1:{ports['gateway']}/v1"
        admin = f"http://127.0.0.1:{ports['admin']}"
        tickets = directory / "tickets.jsonl"
        _post_labels(gateway, asyncio.run(_send_traffic(gateway, tickets, requests, seed=7)))
        _catch_up(admin)
        if _train(ws):
            say("\nthe trained skill is a challenger like any other: it answers the traffic that arrives next")
            _post_labels(gateway, asyncio.run(_send_traffic(gateway, tickets, max(requests // 2, 200), seed=8)))
            _catch_up(admin)
        _step(ws, "leaderboard", "--slot", SLOT)
        _step(ws, "report", "--slot", SLOT, "--out", str(directory / "report.html"))
        _recommend(ws, ids)
        if keep_running:
            _print_urls(directory, ports, sim.process.pid)
            stack.pop_all()


def _fresh(directory: Path) -> None:
    """Remove an earlier demo workspace; never touch a directory the demo did not create."""
    if not directory.exists():
        return
    if not (directory / DEMO_MARKER).exists():
        raise ShadowzooError(f"{directory} exists and was not created by `shadowzoo demo`; pass --dir elsewhere")
    shutil.rmtree(directory)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _configure(directory: Path) -> dict[str, int]:
    """Free loopback ports for the simulator, the gateway and the daemon, written into the config."""
    ports = {"sim": _free_port(), "gateway": _free_port(), "admin": _free_port()}
    path = directory / "shadowzoo.yaml"
    config = yaml.safe_load(path.read_text())
    config["providers"]["sim"]["base_url"] = f"http://127.0.0.1:{ports['sim']}/v1"
    config["gateway"]["port"] = ports["gateway"]
    config["daemon"]["admin_port"] = ports["admin"]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ports


def _cli() -> str:
    return str(Path(sys.executable).parent / "shadowzoo")


class _process:
    """A child process for the demo's length (or left running with --keep-running)."""

    def __init__(self, name: str, argv: list[str], cwd: Path, health_url: str, keep: bool) -> None:
        self.name, self.argv, self.cwd, self.health_url, self.keep = name, argv, cwd, health_url, keep
        self.log = cwd / f"{name}.log"

    def __enter__(self) -> "_process":
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        _wait_healthy(self.health_url, self.process, self.log)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _wait_healthy(url: str, process: subprocess.Popen | None = None, log: Path | None = None, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ShadowzooError(f"{process.args[1]} exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise ShadowzooError(f"{url} did not answer within {timeout_s:.0f}s")


async def _send_traffic(gateway: str, tickets_path: Path, requests: int, seed: int) -> list[tuple[str, str]]:
    """`requests` tickets through the gateway (a share streamed); returns (client id, label) pairs."""
    tickets = [json.loads(line) for line in tickets_path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    plan = [(f"{t['id']}-{seed}-{i:05d}", t, rng.random() < STREAM_SHARE) for i, t in
            enumerate(rng.choice(tickets) for _ in range(requests))]
    client = openai.AsyncOpenAI(base_url=gateway, api_key="demo-client", max_retries=0, timeout=60,
                                http_client=openai.DefaultAioHttpClient())
    limit = asyncio.Semaphore(CONCURRENCY)
    failures = 0
    say(f"\n[bold]sending {requests} requests through the gateway with the openai client "
        f"({STREAM_SHARE:.0%} streamed)[/bold]")
    with Progress(TextColumn("traffic"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("traffic", total=requests)

        async def one(client_id: str, ticket: dict[str, Any], stream: bool) -> None:
            nonlocal failures
            async with limit:
                try:
                    await _ask(client, client_id, ticket["input"], stream)
                except openai.APIError:
                    failures += 1
                bar.advance(task)

        async with client:
            await asyncio.gather(*(one(*item) for item in plan))
    if failures:
        say(f"{failures} request(s) failed upstream (the champion's own errors, passed through unchanged)")
    return [(client_id, ticket["expected"]) for client_id, ticket, _ in plan]


async def _ask(client: openai.AsyncOpenAI, client_id: str, text: str, stream: bool) -> None:
    messages = [{"role": "user", "content": text}]
    headers = {"x-shadowzoo-request-id": client_id}
    if not stream:
        await client.chat.completions.create(model=SLOT, messages=messages, extra_headers=headers)
        return
    chunks = await client.chat.completions.create(model=SLOT, messages=messages, stream=True, extra_headers=headers)
    async for _ in chunks:
        pass


def _post_labels(gateway: str, labels: list[tuple[str, str]]) -> None:
    """The ground truth arrives later, as it does in production: one feedback call per request."""
    say(f"\n[bold]posting {len(labels)} delayed labels to /v1/feedback[/bold]")
    for client_id, label in labels:
        body = json.dumps({"request_id": client_id, "label": label}).encode()
        request = urllib.request.Request(f"{gateway}/feedback", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass


def _catch_up(admin: str) -> None:
    """Follow the daemon until the spool and the shadow queue are empty and the pairs stop growing."""
    token = os.environ["SHADOWZOO_ADMIN_TOKEN"]
    say("\n[bold]the daemon ingests, replays against the challengers and scores[/bold]")
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    last, steady = -1, 0
    with Progress(TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("pairs scored: 0")
        while time.monotonic() < deadline:
            board = _admin_get(admin, f"/admin/leaderboard?slot={SLOT}", token) or {"rows": []}  # None: not scored yet
            status = _admin_get(admin, "/admin/status", token)
            pairs = sum(r["comparison"]["pairs"] for r in board["rows"] if r.get("comparison"))
            idle = not status["queue_depth"] and not status["spool_segments"]
            steady = steady + 1 if idle and pairs == last else 0
            last = pairs
            bar.update(task, description=f"pairs scored: {pairs}  (shadow queue {status['queue_depth'] or 0:.0f}, "
                                         f"spool {status['spool_segments']})")
            if steady >= SETTLED_POLLS:
                return
            time.sleep(2)
    say("[yellow]the daemon is still catching up; the leaderboard below shows the evidence so far[/yellow]")


def _train(ws: list[str]) -> bool:
    """Train cheap-mini's skill on the labelled traffic; True when a trained challenger was registered."""
    say("\n[bold]training a better skill from the labelled traffic[/bold] (the simulator plays the optimizer)")
    _step(ws, "zoo", "train", "--spec", "cheap-mini")
    if any(v["source"] == "train" for v in json.loads(_quiet(ws, "variants", "list", "--json"))):
        return True
    say("no trained skill beat its parent on the selection split this time")
    return False


def _admin_get(admin: str, path: str, token: str) -> dict[str, Any] | None:
    """The admin API's answer, or None when it has nothing there yet (404)."""
    request = urllib.request.Request(f"{admin}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        return None


def _recommend(ws: list[str], ids: dict[str, str]) -> None:
    board = json.loads(_quiet(ws, "leaderboard", "--slot", SLOT, "--format", "json"))
    rows = {r["version_id"]: r for r in board["rows"]}
    best_quality = max((r for r in board["rows"]), key=lambda r: r["mean_quality"] or 0)
    if board["recommendation"]:
        best = rows[board["recommendation"].rsplit(" ", 1)[-1]]
        say(f"\n[bold green]The evidence supports:[/bold green]  {board['recommendation']}")
        if best["version_id"] != best_quality["version_id"]:
            say(f"Note the trade-off: {best_quality['label']} has the best quality "
                f"({best_quality['mean_quality']:.3f}) but {best['label']} wins net of cost "
                f"(${rows[best['version_id']]['net_per_1k_usd']:.2f} vs ${best_quality['net_per_1k_usd']:.2f} per 1k requests).")
    else:
        say("\nNo challenger is ready yet; run `shadowzoo leaderboard --slot support-triage` again later.")


def _print_urls(directory: Path, ports: dict[str, int], sim_pid: int) -> None:
    say(f"\n[bold]still running[/bold] (stop with `shadowzoo -w {directory} stop` and `kill {sim_pid}` for the simulator):")
    say(f"  gateway   http://127.0.0.1:{ports['gateway']}/v1   (OpenAI SDK: model='{SLOT}')")
    say(f"  metrics   http://127.0.0.1:{ports['gateway']}/metrics and http://127.0.0.1:{ports['admin']}/metrics")
    say(f"  admin API http://127.0.0.1:{ports['admin']}/admin   (token: $SHADOWZOO_ADMIN_TOKEN = {os.environ['SHADOWZOO_ADMIN_TOKEN']})")


def _step(ws: list[str], *args: str) -> None:
    say(f"\n[bold cyan]$ shadowzoo {shlex.join(args)}[/bold cyan]")
    _run([*ws, *args])


def _quiet(ws: list[str], *args: str) -> str:
    buffer = StringIO()
    with redirect_stdout(buffer):
        _run([*ws, *args])
    return buffer.getvalue()


def _run(argv: list[str]) -> None:
    """Run one CLI command in this process; a failing step fails the demo."""
    from ops.cli import main  # the CLI imports this module: import at call time

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    if code:
        raise ShadowzooError(f"demo step failed (exit {code}): shadowzoo {shlex.join(argv)}")
