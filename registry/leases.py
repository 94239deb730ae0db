"""Work leases in PostgreSQL: how ingest and runner workers on several hosts share items of work.

An item is a key of a named kind (a spool segment's name for "segment", a replay batch for
"replay"). It is offered once (offering it again changes nothing), claimed by one worker at a
time with `FOR UPDATE SKIP LOCKED` (two workers never hold the same item, and a claim never
waits on another's), held until an expiry the holder renews, and completed once. Every claim
draws a fresh fencing token from a sequence, so tokens only grow: a holder that lost its lease
(it expired and another worker claimed the item) finds its token no longer matches, and its
`complete` fails with `LeaseLost`. Until another worker claims it, an expired lease is still
its holder's (a late renewal or completion succeeds). Times are PostgreSQL's clock, never a host's.

At-least-once: a holder killed with `kill -9`, or one that stalls past its expiry, loses its
items, and another worker does them again. What it did before it died may have been done
already (a shadow call made, rows appended), so the work may be done twice, but never more
than one lease's in-flight items per lost lease: the duplicates are bounded by what a worker
claims at once. Results stay idempotent because a worker commits an item's output under
`fenced(token)`: the lease row stays locked until the output is written and the item marked
done, so a stale holder is refused before it writes, and a commit that reached the data but
not the ledger (a crash in between) is read once, by its idempotent key.

Rows do not pile up: the retention job `prune`s those done, or expired and not claimed again,
more than `KEPT_S` ago. A live holder renews its lease long before that, so its row (which
its fence needs) is never deleted; a holder stalled past it finds its token gone and is
refused (`LeaseLost`), as if another worker had claimed the item.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from registry.errors import ShadowzooError

if TYPE_CHECKING:
    import psycopg

KEPT_S = 86_400.0
"""How long a completed lease row, or one expired and never claimed again, is kept before `prune`
deletes it: long past any run that planned its item before it was done (a done row keeps that
item from being offered again while such a plan may still offer it)."""


class LeaseLost(ShadowzooError):
    """The lease behind a fencing token is no longer held: it expired and another worker claimed the item."""


@dataclass(frozen=True)
class Lease:
    """One claimed item: what it is, the fencing token of this claim, and when it expires unless renewed."""

    kind: str
    item: str
    token: int
    expires_at: datetime


class WorkLeases:
    """One worker's view of the items of one kind: offer, claim, renew, complete, release.

    `connection` is this worker's psycopg connection to the control plane, used by one thread
    at a time (each method runs in a transaction of its own); `holder` names the worker (host,
    pid, role) in the table.
    """

    def __init__(self, connection: "psycopg.Connection", kind: str, holder: str, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"a lease's ttl_s must be above 0, got {ttl_s}")
        self.connection = connection
        self.kind = kind
        self.holder = holder
        self.ttl_s = ttl_s

    def offer(self, items: Iterable[str]) -> int:
        """Make items claimable; an item already offered (open, held or done) is left as it is. Returns how many are new."""
        keys = sorted(set(items))
        if not keys:
            return 0
        with self.connection.transaction():
            rows = self.connection.execute(
                "INSERT INTO work_leases (kind, item) SELECT %s, unnest(%s::text[]) "
                "ON CONFLICT (kind, item) DO NOTHING RETURNING item", [self.kind, keys]).fetchall()
        return len(rows)

    def claim(self, limit: int) -> list[Lease]:
        """Up to `limit` open items nobody holds (never held, released, or expired), oldest offered first."""
        with self.connection.transaction():
            rows = self.connection.execute(
                "WITH free AS (SELECT item FROM work_leases "
                "  WHERE kind = %(kind)s AND done_at IS NULL AND (holder IS NULL OR expires_at <= now()) "
                "  ORDER BY offered_at, item LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
                "UPDATE work_leases w SET holder = %(holder)s, token = nextval('lease_tokens'), "
                "  expires_at = now() + make_interval(secs => %(ttl)s) "
                "FROM free WHERE w.kind = %(kind)s AND w.item = free.item "
                "RETURNING w.item, w.token, w.expires_at",
                {"kind": self.kind, "limit": limit, "holder": self.holder, "ttl": self.ttl_s}).fetchall()
        return sorted((Lease(self.kind, item, token, expires) for item, token, expires in rows), key=lambda x: x.token)

    def renew(self, tokens: Iterable[int]) -> set[int]:
        """Push the expiry of these leases one ttl past now; the tokens still held (the others were lost)."""
        with self.connection.transaction():
            rows = self.connection.execute(
                "UPDATE work_leases SET expires_at = now() + make_interval(secs => %s) "
                "WHERE token = ANY(%s) AND done_at IS NULL RETURNING token", [self.ttl_s, list(tokens)]).fetchall()
        return {token for (token,) in rows}

    def complete(self, token: int) -> None:
        """Mark the item of this lease done; `LeaseLost` when another claim replaced it."""
        with self.fenced(token):
            pass

    @contextmanager
    def fenced(self, token: int) -> Iterator[str]:
        """Hold this lease's row locked while the item's output is written, then mark the item done.

        Yields the item. `LeaseLost` (before anything is written) when the token is no longer
        the item's; while the block runs, no other worker can claim the item, expired or not.
        If the block raises, the item stays open and held by this token (it can be retried).
        """
        with self.connection.transaction():
            row = self.connection.execute(
                "SELECT item FROM work_leases WHERE token = %s AND done_at IS NULL FOR UPDATE", [token]).fetchone()
            if row is None:
                raise LeaseLost(f"{self.kind} lease {token} of {self.holder} is no longer held: it was completed "
                                "or released, or it expired and another worker claimed the item")
            yield row[0]
            self.connection.execute("UPDATE work_leases SET done_at = now() WHERE token = %s", [token])

    def release(self, tokens: Iterable[int]) -> int:
        """Give items back undone (a worker shutting down), so another worker claims them at once."""
        with self.connection.transaction():
            rows = self.connection.execute(
                "UPDATE work_leases SET holder = NULL, token = NULL, expires_at = NULL "
                "WHERE token = ANY(%s) AND done_at IS NULL RETURNING item", [list(tokens)]).fetchall()
        return len(rows)

    def open_count(self) -> int:
        """Items of this kind not yet done (held or not): the work left, for status and queue depth."""
        with self.connection.transaction():
            return self.connection.execute("SELECT count(*) FROM work_leases WHERE kind = %s AND done_at IS NULL",
                                           [self.kind]).fetchone()[0]


def prune(connection: "psycopg.Connection", kept_s: float = KEPT_S) -> int:
    """Delete the lease rows, of every kind, done or expired more than `kept_s` ago; returns how many.

    Open items never claimed, and leases held (expiring in the future, or expired within
    `kept_s`), stay: their work is not done, and their holder's fence needs the row."""
    with connection.transaction():
        return connection.execute(
            "DELETE FROM work_leases WHERE coalesce(done_at, expires_at) < now() - make_interval(secs => %s)",
            [kept_s]).rowcount
