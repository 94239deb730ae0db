"""Hostile and faulty requests to the real admin API: refused with a JSON 4xx naming the field.

One `shadowzoo daemon` process serves every test of this module, on a demo workspace with
a second slot, so the same label and config can be registered in two slots.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from ops.optable import OPERATIONS
from ops.state import TOKEN_FILE
from ops.workspace_init import init_workspace
from tests.conftest import SHADOWZOO
from tests.servers import edit_config, free_port, wait_until

TOKEN = "admin-api-test-token"
SLOT, OTHER = "support-triage", "refund-triage"


class Daemon:
    """`shadowzoo daemon` run by its console script on a free port."""

    def __init__(self, workspace_dir: Path) -> None:
        self.workspace_dir = workspace_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workspace_dir / "daemon.log"  # a file, not a pipe nobody reads (it would block the daemon)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SHADOWZOO), "daemon", "--admin-port", str(self.port)], cwd=workspace_dir,
                env={**self.environment(), "SHADOWZOO_ADMIN_TOKEN": TOKEN}, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.process.poll() is not None or self.call("GET", "/healthz")[0] == 200, timeout_s=60)
        assert self.process.poll() is None, self.log_path.read_text(errors="replace")

    @staticmethod
    def environment() -> dict[str, str]:
        """This process's environment without the demo provider's key."""
        return {name: value for name, value in os.environ.items() if name != "SIM_API_KEY"}

    def call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
        """(status, JSON body, headers) of one request; connection failures are status 0."""
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode() if body is not None else None, method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read()), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)
        except OSError:
            return 0, {}, {}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workspace_dir = init_workspace(tmp_path_factory.mktemp("admin") / "ws")
    edit_config(workspace_dir, lambda c: c["slots"].update({OTHER: c["slots"][SLOT]}))
    (workspace_dir / "rules.py").write_text("def answer(request):\n    return 'billing'\n")
    served = Daemon(workspace_dir)
    yield served
    served.stop()


def _variant(slot: str = SLOT, label: str = "probe", **config) -> dict:
    kind = config.get("kind", "chat")
    base = {"kind": "chat", "provider": "sim", "model": "sim-mini", "params": {}} if kind == "chat" else {}
    return {"slot": slot, "label": label, "kind": kind, "config": {**base, **config}}


def _labels(daemon: Daemon) -> set[str]:
    status, variants, _ = daemon.call("GET", "/admin/variants")
    assert status == 200
    return {v["label"] for v in variants}


def test_a_python_variant_naming_a_module_outside_the_workspace_is_refused(daemon: Daemon) -> None:
    marker = daemon.workspace_dir / "pwned"
    body = _variant(label="pwn", kind="python", entrypoint="subprocess:run",
                    params={"args": ["touch", str(marker)]})
    status, answer, _ = daemon.call("POST", "/admin/variants", body)
    assert status == 400 and answer["error"]["type"] == "invalid"
    assert answer["error"]["message"].startswith("config.entrypoint:") and "'subprocess'" in answer["error"]["message"]
    assert "pwn" not in _labels(daemon)
    assert not marker.exists()


def test_a_workspace_module_that_links_to_an_installed_one_is_refused(daemon: Daemon) -> None:
    (daemon.workspace_dir / "linked.py").symlink_to(subprocess.__file__)
    status, answer, _ = daemon.call("POST", "/admin/variants", _variant(label="linked", kind="python", entrypoint="linked:run"))
    assert status == 400 and f"is {Path(subprocess.__file__).resolve()}, outside the workspace" in answer["error"]["message"]


def test_a_python_variant_of_the_workspace_s_own_module_is_registered(daemon: Daemon) -> None:
    status, answer, _ = daemon.call("POST", "/admin/variants", _variant(label="rules", kind="python", entrypoint="rules:answer"))
    assert status == 200 and answer["variant"]["config"]["entrypoint"] == "rules:answer"


@pytest.mark.parametrize(("body", "field"), [
    (_variant(label="Not A Label"), "label:"),
    (_variant(slot="nowhere"), "slot:"),
    (_variant(provider="elsewhere"), "config.provider:"),
    (_variant(params={"temperature": 7}), "config.params.temperature:"),
    (_variant(params={"logit_bias": {"1": 100}}), "config.params.logit_bias:"),
    (_variant(api_key="sk-..."), "config.api_key:"),
    (_variant(kind="python", entrypoint="os.path:join;rm"), "config.entrypoint:"),
    ({**_variant(), "kind": "python"}, "config.kind:"),
    ({**_variant(), "source": "backdoor"}, "source:"),
    ({**_variant(), "version_id": "chosen-by-me"}, "version_id:"),
])
def test_every_field_of_a_registration_is_checked_like_the_cli_checks_it(daemon: Daemon, body: dict, field: str) -> None:
    status, answer, _ = daemon.call("POST", "/admin/variants", body)
    assert status == 400 and answer["error"]["message"].startswith(field), answer


def test_a_report_job_writes_no_file_the_cli_writes_it_where_asked(daemon: Daemon, cli, tmp_path: Path) -> None:
    status, answer, _ = daemon.call("POST", "/admin/jobs/report", {"slot": SLOT, "out": "../escaped.html"})
    assert status == 400 and answer["error"]["message"].startswith("out:"), answer
    out = tmp_path / "elsewhere" / "report.md"
    out.parent.mkdir()
    written = cli("report", "--slot", SLOT, "--out", str(out), cwd=daemon.workspace_dir, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert written.code == 0, written.err
    assert f"wrote {out}" in written.out and out.read_text().startswith(f"### shadowzoo leaderboard: `{SLOT}`")
    assert not list(daemon.workspace_dir.glob("report*"))


def test_the_same_label_and_config_in_two_slots_get_two_version_ids(daemon: Daemon) -> None:
    first_status, first, _ = daemon.call("POST", "/admin/variants", _variant(SLOT, "twin", model="sim-flash"))
    second_status, second, _ = daemon.call("POST", "/admin/variants", _variant(OTHER, "twin", model="sim-flash"))
    assert (first_status, second_status) == (200, 200), second
    assert first["variant"]["version_id"] != second["variant"]["version_id"]
    assert second["variant"]["slot"] == OTHER and second["created"]


def test_a_wrong_method_is_a_json_405_that_says_which_methods_are_allowed(daemon: Daemon) -> None:
    status, answer, headers = daemon.call("GET", "/admin/promote")
    assert status == 405 and headers["Allow"] == "POST"
    assert answer["error"]["type"] == "method_not_allowed"


def test_the_bearer_scheme_of_the_admin_token_is_case_insensitive(daemon: Daemon) -> None:
    for scheme in ("bearer", "BEARER"):
        status, answer, _ = daemon.call("GET", "/admin/pauses", headers={"Authorization": f"{scheme} {TOKEN}"})
        assert status == 200, answer


def test_status_names_a_provider_key_missing_from_the_daemon_s_environment(daemon: Daemon, cli) -> None:
    status, report, _ = daemon.call("GET", "/admin/status")
    assert status == 200 and report["missing_api_keys"] == {"sim": "SIM_API_KEY"}
    shown = cli("status", cwd=daemon.workspace_dir, env={"SIM_API_KEY": None, "SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert shown.code == 0 and "provider 'sim': SIM_API_KEY is not set" in shown.err


def test_the_openapi_document_is_valid_and_documents_every_error_status(daemon: Daemon) -> None:
    status, document, _ = daemon.call("GET", "/openapi.json")
    assert status == 200
    validate(document)  # raises on a dangling $ref or any other violation of OpenAPI 3.1
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert documented == {(operation.method, operation.path) for operation in OPERATIONS}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"200", "400", "401", "404", "405", "409", "500"} <= set(operation["responses"]), (method, path)


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/admin/promote", {"slot": SLOT, "version_id": "x", "actor": "t", "forse": True}, "forse:"),
    ("/admin/pause", {"version_id": None, "actor": "t", "until": "tomorrow"}, "until:"),
    ("/admin/jobs/replay", {"slot": "nowhere"}, "slot:"),
    ("/admin/jobs/report", {"slot": SLOT, "format": "pdf"}, "format:"),
    ("/admin/jobs/train", {"all_active": True, "limit": -3}, "limit:"),
    ("/admin/jobs/train", {"spec": "triage-mini", "all_active": True}, "spec:"),
    ("/admin/jobs/train", {}, "spec:"),
    ("/admin/leaderboard", {"slot": SLOT, "where": "tier"}, "where:"),
    ("/admin/rollback", {"slot": SLOT, "actor": "t"}, "reason:"),
    ("/admin/retire", {"version_id": "x", "actor": "t"}, "reason:"),
    ("/admin/retire", {"version_id": "x", "actor": "t", "reason": ""}, "reason:"),
    ("/admin/reactivate", {"version_id": "x", "actor": "t"}, "reason:"),
])
def test_an_unknown_key_or_slot_in_any_body_is_a_400_naming_it(daemon: Daemon, path: str, body: dict, field: str) -> None:
    status, answer, _ = daemon.call("POST", path, body)
    assert status == 400 and answer["error"]["message"].startswith(field), answer


def test_timestamps_in_answers_carry_their_utc_offset(daemon: Daemon) -> None:
    status, registered, _ = daemon.call("POST", "/admin/variants", _variant(label="stamped", model="sim-large"))
    assert status == 200
    paused = daemon.call("POST", "/admin/pause", {"version_id": registered["variant"]["version_id"], "actor": "t"})[1]
    moments = [registered["variant"]["created_at"], paused["since"]]
    assert all(datetime.fromisoformat(moment).utcoffset() == timedelta(0) for moment in moments), moments


def test_a_get_of_the_leaderboard_answers_the_stored_board_and_scores_nothing(daemon: Daemon) -> None:
    status, scored, _ = daemon.call("POST", "/admin/leaderboard", {"slot": SLOT})
    assert status == 200
    looks = [daemon.call("GET", f"/admin/leaderboard?slot={SLOT}")[:2] for _ in range(2)]
    assert looks == [(200, scored), (200, scored)]  # a refresh would have stored a new board, generated now


def test_a_cli_user_without_an_exported_token_promotes_with_the_daemon_s_token_file(daemon: Daemon, cli) -> None:
    token_file = daemon.workspace_dir / ".shadowzoo" / TOKEN_FILE
    assert token_file.read_text() == TOKEN and token_file.stat().st_mode & 0o777 == 0o600
    status, registered, _ = daemon.call("POST", "/admin/variants", _variant(OTHER, "first-champion", model="sim-mini"))
    assert status == 200
    version_id = registered["variant"]["version_id"]
    promoted = cli("promote", OTHER, version_id, "--reason", "first", cwd=daemon.workspace_dir,
                   env={"SHADOWZOO_ADMIN_TOKEN": ""})
    assert promoted.code == 0, promoted.err
    assert daemon.call("GET", f"/admin/champion?slot={OTHER}")[1]["version_id"] == version_id


def test_an_error_in_a_daemon_job_is_the_error_the_cli_prints_without_a_daemon(daemon: Daemon, cli, workspace_dir) -> None:
    local = cli("zoo", "train", "--spec", "nobody")
    remote = cli("zoo", "train", "--spec", "nobody", cwd=daemon.workspace_dir, env={"SHADOWZOO_ADMIN_TOKEN": TOKEN})
    assert (remote.code, remote.err) == (local.code, local.err) == (1, remote.err)
    assert "no spec named 'nobody' in the zoo" in remote.err
