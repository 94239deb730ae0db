"""The console's login, session and CSRF rules, in process against the real admin application.

The browser test (tests/test_console_browser.py) drives every page; these pin the rules a
hostile client would probe: no session, a wrong token, a forged POST, a cookie used on the API.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from ops.admin import Api, build_admin_app
from ops.console.session import COOKIE
from ops.jobs import JobBoard
from ops.operations import LocalOperations
from registry import Registry
from scorer.service import Scorer
from tests.scoring_data import SLOT, Answers, demo_registry

TOKEN = "console-test-token"
Scenario = Callable[[TestClient, dict[str, str]], Awaitable[None]]


def _run(workspace_dir: Path, scenario: Scenario,
         setup: Callable[[Registry, dict[str, str]], None] = lambda registry, ids: None) -> Registry:
    """`scenario(client, variant ids)` against the admin app on loopback, after `setup` wrote into the registry;
    returns the registry to inspect."""
    registry, ids = demo_registry(workspace_dir)
    setup(registry, ids)
    api = Api(LocalOperations(registry), JobBoard(), CollectorRegistry(), TOKEN)

    async def main() -> None:
        async with TestClient(TestServer(build_admin_app(api), host="127.0.0.1")) as client:
            await scenario(client, ids)

    asyncio.run(main())
    return registry


async def _login(client: TestClient, token: str = TOKEN, **extra: str):
    return await client.post("/ui/login", data={"token": token, "actor": "tester", **extra}, allow_redirects=False)


async def _csrf(client: TestClient, path: str) -> str:
    page = await (await client.get(path)).text()
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_a_page_without_a_session_sends_the_browser_to_the_login_page(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        response = await client.get(f"/ui/history?slot={SLOT}", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == f"/ui/login?next=/ui/history%3Fslot%3D{SLOT}"
        forged = await client.post("/ui/rollback", data={"slot": SLOT}, allow_redirects=False,
                                   headers={"Cookie": f"{COOKIE}=made-up"})
        assert forged.status == 303 and forged.headers["Location"] == "/ui/login"

    _run(workspace_dir, scenario).close()


def test_a_wrong_admin_token_gets_a_401_page_and_no_session(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        response = await _login(client, "wrong")
        assert response.status == 401 and "Wrong admin token." in await response.text()
        assert COOKIE not in response.cookies
        assert (await client.get("/ui/leaderboard", allow_redirects=False)).status == 303

    _run(workspace_dir, scenario).close()


def test_the_session_cookie_is_httponly_strict_scoped_to_ui_and_is_not_the_admin_token(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        response = await _login(client, next="//elsewhere.example/")
        assert response.status == 303 and response.headers["Location"] == "/ui/leaderboard"
        cookie = response.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/ui"
        assert TOKEN not in cookie.value and len(cookie.value) >= 40
        page = await client.get(f"/ui/variants/{ids['baseline']}")
        assert page.status == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]

    _run(workspace_dir, scenario).close()


def test_a_console_session_does_not_open_the_admin_api(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        cookie = (await _login(client)).cookies[COOKIE].value
        response = await client.get("/admin/variants", headers={"Cookie": f"{COOKIE}={cookie}"})
        assert response.status == 401 and (await response.json())["error"]["type"] == "unauthorized"

    _run(workspace_dir, scenario).close()


def test_a_post_without_the_session_s_csrf_token_is_forbidden_and_changes_nothing(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        await _login(client)
        for extra in ({}, {"csrf": "guessed"}):
            response = await client.post("/ui/promote", allow_redirects=False, data={
                "slot": SLOT, "version_id": ids["careful-large"], "reason": "forged", "force": "1", **extra})
            assert response.status == 403

    registry = _run(workspace_dir, scenario)
    assert [m.action for m in registry.history(SLOT)] == ["promote"], "only the first champion's promotion"
    registry.close()


def test_a_refused_rollback_shows_the_operation_s_message_and_data_is_escaped(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        await _login(client)
        csrf = await _csrf(client, f"/ui/history?slot={SLOT}")
        refused = await client.post("/ui/rollback", data={"csrf": csrf, "slot": SLOT, "reason": "oops"})
        assert "Refused: " in await refused.text() and refused.url.path == "/ui/history"
        forced = await client.post("/ui/promote", data={"csrf": csrf, "slot": SLOT, "version_id": ids["cheap-mini"],
                                                        "reason": "<script>alert(1)</script>", "force": "1"})
        page = await forced.text()
        assert "promote: " in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page

    registry = _run(workspace_dir, scenario)
    assert registry.history(SLOT)[-1].reason == "<script>alert(1)</script>"
    registry.close()


def test_an_unknown_variant_or_slot_is_an_html_error_page_naming_it(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        await _login(client)
        missing = await client.get("/ui/variants/nope-20260101-00000000")
        assert missing.status == 404 and "nope-20260101-00000000" in await missing.text()
        unknown = await client.get("/ui/history?slot=nowhere")
        text = await unknown.text()
        assert unknown.status == 400 and "slot &#x27;nowhere&#x27; is not configured" in text and SLOT in text

    _run(workspace_dir, scenario).close()


def test_a_promotion_of_a_mangled_version_id_is_refused_on_the_page_without_breaking_the_redirect(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        await _login(client)
        csrf = await _csrf(client, f"/ui/history?slot={SLOT}")
        for version_id, landing in (("", 200), ("x\r\nSet-Cookie: a=b", 404)):  # 404: back on the variant's page
            response = await client.post("/ui/promote", data={"csrf": csrf, "slot": SLOT, "version_id": version_id})
            assert response.status == landing and "Refused: " in await response.text()
            assert "a" not in client.session.cookie_jar.filter_cookies(client.make_url("/ui/"))

    _run(workspace_dir, scenario).close()


def test_the_requests_page_lists_and_filters_a_slot_s_requests_and_pages_on(workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        await _login(client)
        page = await client.get(f"/ui/requests?slot={SLOT}&limit=2")
        text = await page.text()
        assert page.status == 200 and text.index("r-3") < text.index("r-2") and "r-1" not in text
        assert f'href="/ui/requests/r-3?slot={SLOT}"' in text and f'href="/ui/requests?slot={SLOT}" class=\'here\'' in text  # the nav
        following = re.search(r'href="(/ui/requests\?[^"]*cursor=[^"]+)"', text).group(1).replace("&amp;", "&")
        assert "r-1" in await (await client.get(following)).text()
        tagged = await (await client.get(f"/ui/requests?slot={SLOT}&tag=tier%3Dgold&disagree={ids['cheap-mini']}")).text()
        assert "r-2" in tagged and "r-3" not in tagged and "r-1" not in tagged
        assert 'value="tier=gold"' in tagged  # the form keeps the filter
        worst = await (await client.get(f"/ui/requests?slot={SLOT}&worst={ids['cheap-mini']}&errors=1")).text()
        assert "No request matches." in worst and 'name="errors" value="1" checked' in worst
        bad = await client.get(f"/ui/requests?slot={SLOT}&tag=tier")
        assert bad.status == 400 and "tag: &#x27;tier&#x27; is not key=value" in await bad.text()

    _three_requests(workspace_dir, scenario)


def test_a_trace_page_shows_the_messages_every_answer_its_diff_scores_pair_and_escapes_hostile_text(
        workspace_dir: Path) -> None:
    async def scenario(client: TestClient, ids: dict[str, str]) -> None:
        await _login(client)
        page = await client.get(f"/ui/requests/r-2?slot={SLOT}")
        text = await page.text()
        assert page.status == 200
        assert "<h3>user</h3><pre>r-2</pre>" in text  # the request's message
        champion, cheap, skipped = (text.index(f"/ui/variants/{ids[n]}") for n in ("baseline", "cheap-mini", "careful-mini"))
        assert champion < min(cheap, skipped)  # the champion's answer first
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text and "<script>" not in text
        assert '<span class="del">-billing</span>' in text and '<span class="add">+&lt;script&gt;' in text
        assert "pair (period 1): Δnet -0.0" in text and "<td>exact_match</td>" in text
        assert "daily shadow budget" in text  # why careful-mini was not run
        assert "scored against" in text and "&quot;billing&quot;" in text  # the label
        missing = await client.get("/ui/requests/nobody")
        assert missing.status == 404 and "nobody" in await missing.text()

    _three_requests(workspace_dir, scenario)


def _three_requests(workspace_dir: Path, scenario: Scenario) -> None:
    """Run `scenario` on three labelled requests r-1..r-3 (r-2 tagged tier=gold), each answered by cheap-mini,
    r-2 with hostile text, and r-2 not run on careful-mini."""
    def setup(registry: Registry, ids: dict[str, str]) -> None:
        answers = Answers()
        for n in (1, 2, 3):
            answers.request(f"r-{n}", ids["baseline"], "billing", label="billing")
            answers.result(f"r-{n}", ids["cheap-mini"], '<script>alert("x")</script>' if n == 2 else "technical")
        answers.result("r-2", ids["careful-mini"], None, status="not_run")
        answers.results[-1]["error"] = "budget: daily shadow budget of 10.00 USD reached"
        for row in answers.traffic:
            row["client_request_id"] = None
        answers.write(registry)
        with registry.database.transaction() as db:
            db.execute("UPDATE traffic SET tags = MAP {'tier': 'gold'} WHERE request_id = 'r-2'")
        Scorer(registry.workspace, registry).refresh(SLOT)

    _run(workspace_dir, scenario, setup).close()
