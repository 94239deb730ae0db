"""The web console in a real browser: headless Debian chromium, driven by selenium, against a real daemon.

The workspace has evidence before the daemon starts (careful-large clearly better than the
champion, cheap-mini worse), so the console shows a ready challenger, refuses
what the CLI refuses, promotes with a reason into the audit log, and leads from the
requests where cheap-mini disagrees to one request's trace. Set
SHADOWZOO_CONSOLE_SCREENSHOTS to a directory (e.g. docs) to keep the main pages' screenshots.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from ops.workspace_init import init_workspace
from tests.scoring_data import SLOT, Answers, demo_registry, simulate
from tests.servers import wait_until
from tests.test_admin_api import TOKEN, Daemon

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, dict[str, str]]]:
    workspace_dir = init_workspace(tmp_path_factory.mktemp("console") / "ws")
    registry, ids = demo_registry(workspace_dir)
    answers = Answers()
    simulate(answers, ids["baseline"], {ids["careful-large"]: 0.95, ids["cheap-mini"]: 0.6}, n=300)
    answers.write(registry)
    registry.close()
    daemon = Daemon(workspace_dir)
    wait_until(lambda: daemon.call("GET", f"/admin/leaderboard?slot={SLOT}")[0] == 200, timeout_s=60)  # first scoring
    yield daemon, ids
    daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    assert CHROMIUM and CHROMEDRIVER, "chromium and chromedriver are missing: `make test-tools` installs Debian's packages"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _shoot(driver: webdriver.Chrome, name: str) -> None:
    target = os.environ.get("SHADOWZOO_CONSOLE_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / f"console-{name}.png"))


def _submit(driver: webdriver.Chrome, form_action: str, **fields: str) -> None:
    form = driver.find_element(By.CSS_SELECTOR, f'form[action="{form_action}"]')
    for name, value in fields.items():
        element = form.find_element(By.NAME, name)
        if element.get_attribute("type") == "checkbox":
            element.click()
        else:
            element.send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 60).until(_replaced(form))


def _follow(driver: webdriver.Chrome, link) -> None:
    """Click a link and wait until its page has replaced this one: a click need not wait for the navigation."""
    page = driver.find_element(By.TAG_NAME, "html")
    link.click()
    WebDriverWait(driver, 60).until(_replaced(page))


def _replaced(element) -> Callable[[webdriver.Chrome], bool]:
    """A wait condition: the next page has replaced the one `element` was on. Asked about an
    element of a page being replaced, Chrome answers that it is stale, or (caught mid-way) that its
    node "does not belong to the document": both mean the old page is gone."""
    def gone(_driver: webdriver.Chrome) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
            return True
        return False

    return gone


def _severe(driver: webdriver.Chrome) -> list[dict]:
    """The browser's severe console entries since the last look (reading the log empties it)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _message(driver: webdriver.Chrome) -> str:
    return driver.find_element(By.CSS_SELECTOR, "p.msg").text


def test_an_operator_logs_in_reads_every_page_promotes_and_rolls_back_with_a_reason_in_a_real_browser(served, browser) -> None:
    daemon, ids = served
    browser.get(f"{daemon.url}/ui/leaderboard")
    assert browser.current_url.startswith(f"{daemon.url}/ui/login")
    _submit(browser, "/ui/login", token="not-the-token", actor="mallory")
    assert "Wrong admin token." in _message(browser)
    assert [e["message"] for e in _severe(browser)] == [
        f"{daemon.url}/ui/login - Failed to load resource: the server responded with a status of 401 (Unauthorized)"]
    _submit(browser, "/ui/login", token=TOKEN, actor="browser-tester")
    assert browser.current_url == f"{daemon.url}/ui/leaderboard"
    assert browser.find_element(By.TAG_NAME, "h1").text == f"{SLOT} · leaderboard"
    assert "Ready to promote: careful-large" in browser.page_source
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure svg")) == 3
    _shoot(browser, "leaderboard")

    for page, heading in (("variants", f"{SLOT} · variants"), ("history", f"{SLOT} · promotion history"),
                          ("status", "Status"), ("jobs", "Jobs")):
        _follow(browser, browser.find_element(By.LINK_TEXT, page.capitalize()))
        assert browser.find_element(By.TAG_NAME, "h1").text == heading
        if page == "status":
            _shoot(browser, page)

    browser.get(f"{daemon.url}/ui/variants/{ids['cheap-mini']}")
    changed = browser.find_elements(By.CSS_SELECTOR, "tr.changed")
    assert [row.find_element(By.TAG_NAME, "td").text for row in changed] == ["model"]
    _submit(browser, "/ui/promote", reason="just because")
    assert _message(browser).startswith(f"Refused: {ids['cheap-mini']} is not ready to promote:")
    _submit(browser, "/ui/promote", force="1")
    assert _message(browser) == "Refused: force needs a reason, so the audit log says why."

    browser.get(f"{daemon.url}/ui/variants/{ids['careful-large']}")
    assert "Same settings, apart from the skill." in browser.page_source
    assert browser.find_elements(By.CSS_SELECTOR, "pre.diff .add") and browser.find_elements(By.CSS_SELECTOR, "pre.diff .del")
    _shoot(browser, "variant")
    _submit(browser, "/ui/promote", reason="ready on 300 pairs, checked in the console")
    assert _message(browser) == f"promote: {SLOT} champion {ids['baseline']} -> {ids['careful-large']}"
    assert browser.current_url == f"{daemon.url}/ui/history?slot={SLOT}"
    _shoot(browser, "history")

    status, moves, _ = daemon.call("GET", f"/admin/history?slot={SLOT}")
    assert status == 200
    move = moves[-1]
    assert (move["action"], move["to_version"], move["actor"]) == ("promote", ids["careful-large"], "browser-tester")
    assert move["reason"] == "ready on 300 pairs, checked in the console" and not move["evidence"]["forced"]
    assert len(moves) == 2, "the refused promotions left no audit row"

    _submit(browser, "/ui/rollback", reason="rolling back from the console")
    assert _message(browser) == f"rollback: {SLOT} champion {ids['careful-large']} -> {ids['baseline']}"
    status, moves, _ = daemon.call("GET", f"/admin/history?slot={SLOT}")
    assert (moves[-1]["action"], moves[-1]["reason"]) == ("rollback", "rolling back from the console")

    _submit(browser, "/ui/logout")
    browser.get(f"{daemon.url}/ui/history")
    assert browser.current_url.startswith(f"{daemon.url}/ui/login")
    assert not _severe(browser)


def test_an_operator_finds_a_disagreement_on_the_requests_page_and_reads_its_trace_in_a_real_browser(served, browser) -> None:
    daemon, ids = served
    browser.get(f"{daemon.url}/ui/requests?slot={SLOT}")
    if browser.current_url.startswith(f"{daemon.url}/ui/login"):  # alone, or after the other test logged out
        _submit(browser, "/ui/login", token=TOKEN, actor="browser-tester")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"{SLOT} · requests"
    _submit(browser, "/ui/requests", disagree=ids["cheap-mini"], limit="8")
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 8 and all(ids["cheap-mini"] in row.text for row in rows)
    assert browser.find_element(By.LINK_TEXT, "Next page →")
    _shoot(browser, "requests")

    request_id = rows[0].find_element(By.TAG_NAME, "a").text
    _follow(browser, rows[0].find_element(By.TAG_NAME, "a"))
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Request {request_id}"
    answers = {card.find_element(By.TAG_NAME, "h3").text: card for card in browser.find_elements(By.CSS_SELECTOR, ".answer")}
    assert ids["baseline"] in answers and ids["cheap-mini"] in answers
    assert "champion · ok" in answers[ids["baseline"]].text and "challenger · ok" in answers[ids["cheap-mini"]].text
    cheap = answers[ids["cheap-mini"]]
    assert cheap.find_elements(By.CSS_SELECTOR, "pre.diff .add") and cheap.find_elements(By.CSS_SELECTOR, "pre.diff .del")
    assert "exact_match" in cheap.text and "net" in cheap.text
    ActionChains(browser).scroll_by_amount(0, answers[ids["baseline"]].location["y"] - 60).perform()  # answers on top
    _shoot(browser, "trace")
    assert not _severe(browser)
