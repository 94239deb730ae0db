"""Console logins: a random session token in a cookie, its CSRF token, and messages for the next page.

The admin token is checked once, at login, in constant time, and never leaves the daemon:
the cookie holds a fresh random token, and the store keeps only its SHA-256, so finding a
session by cookie leaks nothing about other sessions' tokens through timing. Each session
has its own CSRF token, which every POST form carries and which is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "shadowzoo_console"
COOKIE_PATH = "/ui"
LIFETIME_S = 8 * 3600
MAX_SESSIONS = 64


@dataclass
class Session:
    """One logged-in browser: who acts (for the audit log), its CSRF token, and pending messages."""

    actor: str
    csrf: str
    expires_at: float
    messages: list[tuple[str, str]] = field(default_factory=list)

    def say(self, kind: str, text: str) -> None:
        """A message for the next page shown (kind: ok or error), as after a promotion."""
        self.messages.append((kind, text))

    def take_messages(self) -> list[tuple[str, str]]:
        messages, self.messages = self.messages, []
        return messages

    def csrf_ok(self, given: str | None) -> bool:
        return hmac.compare_digest((given or "").encode(), self.csrf.encode())


class Sessions:
    """The daemon's console sessions, in memory: a restart logs everyone out."""

    def __init__(self, admin_token: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._admin_token = admin_token
        self._clock = clock
        self._by_digest: dict[str, Session] = {}

    def login(self, given_token: str, actor: str) -> str | None:
        """A new session's cookie value when `given_token` is the admin token, else None."""
        if not self._admin_token or not hmac.compare_digest(given_token.encode(), self._admin_token.encode()):
            return None
        self._forget_expired()
        while len(self._by_digest) >= MAX_SESSIONS:  # the oldest goes first (dicts keep insertion order)
            del self._by_digest[next(iter(self._by_digest))]
        cookie = secrets.token_urlsafe(32)
        self._by_digest[_digest(cookie)] = Session(actor or "console", secrets.token_urlsafe(32),
                                                   self._clock() + LIFETIME_S)
        return cookie

    def find(self, cookie: str | None) -> Session | None:
        """The live session of a cookie value, or None (missing, unknown or expired)."""
        if not cookie:
            return None
        session = self._by_digest.get(_digest(cookie))
        if session is None or session.expires_at <= self._clock():
            return None
        return session

    def logout(self, cookie: str | None) -> None:
        if cookie:
            self._by_digest.pop(_digest(cookie), None)

    def _forget_expired(self) -> None:
        now = self._clock()
        for digest in [d for d, s in self._by_digest.items() if s.expires_at <= now]:
            del self._by_digest[digest]


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()
