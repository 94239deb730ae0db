"""The console's routes on the admin application: login, the pages, and the actions.

Every page and action needs a session (else: to the login page); every POST needs the
session's CSRF token (else: 403). `/admin/*` keeps its own bearer auth, untouched: a
console session never authorises an API call, and the API token is never put in a cookie.

To add a page, write its render function
`async def name(visit: Visit) -> View` (see `ops.console.pages`) and add one `PageRoute`
to `PAGES`; a `nav` label puts it in the navigation bar.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web
from multidict import MultiDictProxy

from ops.console import actions, html, inspect, pages
from ops.console.session import COOKIE, COOKIE_PATH, LIFETIME_S, Session, Sessions
from ops.console.visit import View, Visit
from ops.optable import error_status
from registry import ConfigError, NotFound

if TYPE_CHECKING:
    from ops.admin import Api

Render = Callable[[Visit], Awaitable[View]]
Act = Callable[[Visit, MultiDictProxy], Awaitable[str]]


@dataclass(frozen=True)
class PageRoute:
    """One GET page of the console; `nav`: its label in the navigation bar (None: reached by links only)."""

    path: str
    nav: str | None
    render: Render


PAGES: tuple[PageRoute, ...] = (
    PageRoute("/ui/leaderboard", "Leaderboard", pages.leaderboard),
    PageRoute("/ui/variants", "Variants", pages.variants),
    PageRoute("/ui/variants/{version_id}", None, pages.variant),
    PageRoute("/ui/requests", "Requests", inspect.requests),
    PageRoute("/ui/requests/{request_id}", None, inspect.trace),
    PageRoute("/ui/history", "History", pages.history),
    PageRoute("/ui/status", "Status", pages.status),
    PageRoute("/ui/jobs", "Jobs", pages.jobs),
)
ACTIONS: dict[str, Act] = {"/ui/promote": actions.promote, "/ui/rollback": actions.rollback}
HOME = PAGES[0].path
SLOT_PAGES = {"/ui/leaderboard", "/ui/variants", "/ui/requests", "/ui/history"}  # the slot switcher stays on these


def add_console(app: web.Application, api: Api) -> None:
    """Serve the console under /ui on the admin application."""
    sessions = Sessions(api.token)
    app.router.add_get("/ui", partial(_home, sessions))
    app.router.add_get("/ui/login", partial(_login_page, sessions))
    app.router.add_post("/ui/login", partial(_login, sessions))
    app.router.add_post("/ui/logout", partial(_logout, sessions))
    for page in PAGES:
        app.router.add_get(page.path, _page(api, sessions, page))
    for path, act in ACTIONS.items():
        app.router.add_post(path, _action(api, sessions, act))


def _page(api: Api, sessions: Sessions, page: PageRoute):
    async def handle(request: web.Request) -> web.StreamResponse:
        session = sessions.find(request.cookies.get(COOKIE))
        if session is None:
            return _to_login(request)
        visit = Visit(api, request, session)
        try:
            view = await page.render(visit)
            status = 200
        except (NotFound, ConfigError) as exc:
            status = error_status(exc)[0]
            view = View("Not found" if status == 404 else "Invalid request", f'<p class="msg error">{_text(exc)}</p>')
        return _html(_layout(visit, view), status)

    return handle


def _action(api: Api, sessions: Sessions, act: Act):
    async def handle(request: web.Request) -> web.StreamResponse:
        session = sessions.find(request.cookies.get(COOKIE))
        if session is None:
            return _to_login(request)
        form = await request.post()
        if not session.csrf_ok(form.get("csrf")):
            return _html(html.document("Forbidden", '<p class="msg error">Missing or stale form token: reload the page '
                                                    'and submit again.</p>'), 403)
        visit = Visit(api, request, session)
        try:
            return _redirect(await act(visit, form))
        except ConfigError as exc:
            return _html(_layout(visit, View("Invalid request", f'<p class="msg error">{_text(exc)}</p>')), 400)

    return handle


def _layout(visit: Visit, view: View) -> str:
    """The page with the navigation bar (keeping the slot), the slot switcher, messages and logout."""
    slot = visit.request.query.get("slot")
    slot = slot if slot in visit.slots else None
    current = visit.request.match_info.route.resource.canonical if visit.request.match_info.route.resource else ""
    links = [html.link(page.path, page.nav, "here" if page.path == current else "", slot=slot)
             for page in PAGES if page.nav]
    switch = " ".join(html.link(current if current in SLOT_PAGES else HOME, name,
                                "here" if name == (slot or visit.slots[0]) else "", slot=name)
                      for name in visit.slots) if len(visit.slots) > 1 else ""
    logout = html.form("/ui/logout", visit.session.csrf, "", "Log out", css="logout")
    nav = (f'<nav><span class="brand">shadowzoo</span>{"".join(links)}'
           f'<span class="muted">{("slot: " + switch) if switch else ""}</span>'
           f'<span class="muted">signed in as {html.escape(visit.session.actor)}</span>{logout}</nav>')
    return html.document(view.title, nav + html.messages(visit.session.take_messages()) + view.body, view.refresh_s)


async def _home(sessions: Sessions, request: web.Request) -> web.StreamResponse:
    return _redirect(HOME) if sessions.find(request.cookies.get(COOKIE)) else _to_login(request)


async def _login_page(sessions: Sessions, request: web.Request, error: str = "", status: int = 200) -> web.Response:
    fields = (html.hidden("next", _safe_next(request.query.get("next")))
              + html.text_field("token", "Admin token", password=True)
              + html.text_field("actor", "Your name (for the audit log)"))
    body = (f"<h1>shadowzoo console</h1>{html.messages([('error', error)] if error else [])}"
            f'<form method="post" action="/ui/login" class="action">{fields}<button type="submit">Log in</button></form>')
    return _html(html.document("Log in", body), status)


async def _login(sessions: Sessions, request: web.Request) -> web.StreamResponse:
    form = await request.post()
    cookie = sessions.login(str(form.get("token") or ""), str(form.get("actor") or "").strip())
    if cookie is None:
        return await _login_page(sessions, request, "Wrong admin token.", 401)
    response = _redirect(_safe_next(str(form.get("next") or "")))
    response.set_cookie(COOKIE, cookie, path=COOKIE_PATH, httponly=True, samesite="Strict", max_age=LIFETIME_S)
    return response


async def _logout(sessions: Sessions, request: web.Request) -> web.StreamResponse:
    cookie = request.cookies.get(COOKIE)
    session = sessions.find(cookie)
    form = await request.post()
    if session is not None and not session.csrf_ok(form.get("csrf")):
        return _html(html.document("Forbidden", '<p class="msg error">Missing or stale form token.</p>'), 403)
    sessions.logout(cookie)
    response = _redirect("/ui/login")
    response.del_cookie(COOKIE, path=COOKIE_PATH)
    return response


def _to_login(request: web.Request) -> web.StreamResponse:
    return _redirect(f"/ui/login?next={quote(request.path_qs)}" if request.method == "GET" else "/ui/login")


def _safe_next(target: str | None) -> str:
    """Where to go after login: a console path only (never another site)."""
    return target if target and target.startswith("/ui/") and not target.startswith("/ui//") else HOME


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", headers=html.SECURITY_HEADERS)


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, **html.SECURITY_HEADERS})


def _text(exc: Exception) -> str:
    return html.escape(str(exc))


__all__ = ["PAGES", "PageRoute", "Session", "add_console"]
