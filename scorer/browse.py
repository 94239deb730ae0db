"""Browsing a slot's requests: where a challenger disagrees with the champion, errs, or loses most.

A page lists requests newest first (by traffic `seq`), or, for `worst`, by the challenger's
paired net difference in the slot's current evaluation period, most negative first (a page
within the first `scorer.pairing.WORST_DEPTH` pairs, filtered by nothing else, reads them
alone from `worst_pairs`). The
cursor of the next page carries the last row's position and the newest seq of the first
page, so paging on while traffic arrives never repeats a request nor skips one that was
there when the first page was read.

Newest first is read in windows of seq that double until the page is full: a page of recent
requests reads only the recent rows of each table (DuckDB skips row groups by their seq
range), whatever the size of the slot's history. An `errors` page starts its windows at the newest
error, found first from the errors alone (none: the page is empty without reading further).

Two answers disagree when what the slot's metrics read of them differs, trimmed and
lower-cased (the first line when every metric reads only the first line, else the whole
text), or when their tool calls differ; an error (or a call not run) is not a disagreement
(see `errors`).

`tags` keeps the requests carrying every given tag, by the condition a leaderboard slice
selects its requests with (`scorer.slices.tags_sql`).

On the lake (`backend: distributed`) several writers commit out of `seq` order, but a row
keeps its `seq` (and a pair its `d_net`) for good: a keyset cursor still never repeats a row,
and one committed after the first page with a `seq` below the cursor shows on a later page.
A result two runners both stored (a lease lost mid-flight) lists its request once, with the
first answer written, as the scorer reads it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Callable

import duckdb
from pydantic import BaseModel, ConfigDict, Field

from registry import ConfigError
from registry.db import sql_literal
from registry.errors import validated
from scorer.answer_query import read_once
from scorer.slices import tags_sql
from shadow.tags import parse_where

FIRST_WINDOW = 4096
"""Seqs read by the first window of a newest-first page (each next window doubles)."""
MAX_LIMIT = 1000


class RequestFilter(BaseModel):
    """Which requests of a slot to list, and where the page starts (an unknown field is an error)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    slot: str
    since: datetime | None = None
    version: str | None = Field(None, description="Only requests this variant answered (or was called on).")
    disagree: str | None = Field(None, description="Only requests where this challenger's answer differs from the champion's.")
    errors: bool = Field(False, description="Only requests where the variant (else the champion or any challenger) errored.")
    worst: str | None = Field(None, description="Order by this challenger's paired net difference, most negative first.")
    tags: dict[str, str] = Field(default_factory=dict, alias="tag",
                                 description="Only requests carrying every one of these tags (`tag=key=value` in a query).")
    limit: int = Field(20, ge=1, le=MAX_LIMIT)
    cursor: str | None = Field(None, description="The `next_cursor` of the previous page.")

    def focus(self) -> str | None:
        """The one challenger the filter is about (named by --version, --disagree or --worst)."""
        named = {v for v in (self.version, self.disagree, self.worst) if v is not None}
        if len(named) > 1:
            raise ConfigError(f"version, disagree and worst must name the same variant, got {', '.join(sorted(named))}")
        return next(iter(named), None)


class RequestRow(BaseModel):
    """One request of a page: the champion's answer and the focused variant's."""

    request_id: str
    client_request_id: str | None
    received_at: datetime
    champion_version: str | None
    champion_status: str
    champion_output: str | None
    version_id: str | None = None
    status: str | None = None
    output: str | None = None
    error: str | None = None
    d_net: float | None = Field(None, description="The variant's paired net difference in the current period.")


class RequestPage(BaseModel):
    requests: list[RequestRow]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last.")


def filter_of_query(query: dict[str, str], tags: list[str]) -> RequestFilter:
    """The filter that query parameters (or a form's fields) ask for, each of `tags` a `key=value` condition;
    else a `ConfigError` naming the parameter (`tag` for a bad condition)."""
    try:
        where = parse_where(tags, option="tag")
    except ValueError as exc:
        raise ConfigError(f"tag: {exc}") from None
    if "tags" in query:
        raise ConfigError("tags: not a parameter; give each tag as tag=key=value")
    return validated(RequestFilter, {**query, "tags": where}, "query parameter")


def browse_requests(db: duckdb.DuckDBPyConnection, request: RequestFilter, first_line: bool = False) -> RequestPage:
    """One page of the slot's requests that match `request`; `first_line`: answers disagree
    by their first lines only (every metric of the slot reads only that)."""
    focus = request.focus()
    disagreement = _disagreement(first_line)
    period = db.execute("SELECT max(period_id) FROM evaluation_periods WHERE slot = ?", [request.slot]).fetchone()[0]
    if request.worst is not None:
        return _worst_page(db, request, focus, disagreement, period)
    newest, after = _newest_cursor(db, request.cursor)
    seqs: list[int] = []
    low, window = _first_candidate(db, request, focus, min(newest, after - 1)), FIRST_WINDOW
    while len(seqs) <= request.limit and low > 0:
        high, low = low, max(0, low - window)
        seqs += _matching(db, request, focus, disagreement, _between(low, high), request.limit - len(seqs))
        window *= 2
    rows = _rows(db, focus, seqs, "t.seq DESC", period)
    return _page(rows, request.limit, lambda row: f"seq:{newest}:{row[0]}")


def _worst_page(db: duckdb.DuckDBPyConnection, request: RequestFilter, focus: str, disagreement: str,
                period: int | None) -> RequestPage:
    """Requests ordered by the challenger's paired net difference in `period`, most negative
    first: the page's pairs are found first (in `worst_pairs` or `paired` alone when nothing
    else filters them), then their requests and answers are read."""
    conditions = [f"p.period_id = {period or 0}", f"p.version_id = {sql_literal(focus)}"]
    if request.cursor is not None:
        d_net, seq = _worst_cursor(request.cursor)
        conditions.append(f"(p.d_net > CAST('{d_net!r}' AS DOUBLE) OR (p.d_net = CAST('{d_net!r}' AS DOUBLE) "
                          f"AND p.request_seq < {seq}))")
    joins = ""
    if request.since is not None or request.tags or request.disagree is not None or request.errors:
        joins = (" JOIN traffic t ON t.seq = p.request_seq JOIN shadow_results s ON s.request_seq = p.request_seq "
                 f"AND s.version_id = {sql_literal(focus)} AND s.role <> 'control'")
        conditions += [*_filters(request, focus, disagreement, lambda column: "true"), _on_traffic(request)]

    def first(table: str) -> list[int]:
        return [row[0] for row in db.execute(
            f"SELECT DISTINCT p.request_seq, p.d_net FROM {table} p{joins} WHERE {' AND '.join(conditions)} "
            f"ORDER BY p.d_net, p.request_seq DESC LIMIT {request.limit + 1}").fetchall()]

    # `worst_pairs` holds the first pairs of this very order: when it has the page (and one
    # more row, for the cursor), those are the page; else the page lies past it, in `paired`
    pairs = "paired" if joins else "worst_pairs"
    seqs = first(pairs)
    if len(seqs) <= request.limit and pairs != "paired":
        pairs, seqs = "paired", first("paired")
    rows = _rows(db, focus, seqs, "p.d_net, t.seq DESC", period, pairs)
    return _page(rows, request.limit, lambda row: f"net:{row[-1]!r}:{row[0]}")


def _first_candidate(db: duckdb.DuckDBPyConnection, request: RequestFilter, focus: str | None, start: int) -> int:
    """The newest seq at or below `start` that can match: for --errors, the newest error's
    request (0 when there is none), found by the errors alone. Errors are rare, so `status`
    rules out most row groups by its min and max without reading them, where the windows
    would read every answer of the slot down to the first request."""
    if not request.errors:
        return start
    errored = f"SELECT max(request_seq) FROM shadow_results WHERE status = 'error' AND request_seq <= {start}"
    if focus is not None:
        errored += f" AND version_id = {sql_literal(focus)} AND role <> 'control'"
    else:
        errored = (f"SELECT greatest(({errored}), (SELECT max(seq) FROM traffic WHERE slot = {sql_literal(request.slot)} "
                   f"AND seq <= {start} AND (status <> 200 OR error IS NOT NULL)))")
    return db.execute(errored).fetchone()[0] or 0


def _between(low: int, high: int) -> Callable[[str], str]:
    return lambda column: f"{column} > {low} AND {column} <= {high}"


def _matching(db: duckdb.DuckDBPyConnection, request: RequestFilter, focus: str | None, disagreement: str,
              within: Callable[[str], str], limit: int) -> list[int]:
    """The seqs of up to `limit` + 1 matching requests whose seq meets `within` (a condition on
    a seq column, put on every table read, so each skips the row groups outside it), newest
    first. Only the columns the filters need are read."""
    joins = ""
    if focus is not None and (request.version or request.disagree or request.errors):
        joins = (f" JOIN shadow_results s ON s.request_seq = t.seq AND s.version_id = {sql_literal(focus)} "
                 f"AND s.role <> 'control' AND {within('s.request_seq')}")
    conditions = [f"t.slot = {sql_literal(request.slot)}", within("t.seq"), _on_traffic(request),
                  *_filters(request, focus, disagreement, within)]
    return [row[0] for row in db.execute(
        f"SELECT DISTINCT t.seq FROM traffic t{joins} WHERE {' AND '.join(conditions)} ORDER BY t.seq DESC LIMIT {limit + 1}"
    ).fetchall()]


def _rows(db: duckdb.DuckDBPyConnection, focus: str | None, seqs: list[int], order: str, period: int | None,
          pairs: str = "paired") -> list[tuple]:
    """The requests `seqs` in `order`, with the champion's answer and the focused variant's
    (and its pair in `period`, read from `pairs`: `worst_pairs` when it holds them all)."""
    if not seqs:
        return []

    def among(column: str) -> str:
        # the range lets each scan skip the row groups outside it; the list alone does not
        return f"{column} BETWEEN {min(seqs)} AND {max(seqs)} AND {column} IN ({', '.join(map(str, seqs))})"

    joins, columns = "", "NULL, NULL, NULL, NULL, NULL"
    if focus is not None:
        version = sql_literal(focus)
        joins = (f" LEFT JOIN (SELECT * FROM shadow_results WHERE version_id = {version} AND role <> 'control' "
                 f"AND {among('request_seq')}{read_once('request_seq')}) s "
                 "ON s.request_seq = t.seq"
                 f" LEFT JOIN (SELECT * FROM {pairs} WHERE version_id = {version} AND period_id = {period or 0} "
                 f"AND {among('request_seq')}) p ON p.request_seq = t.seq")
        columns = f"{version}, s.status, s.output, s.error, p.d_net"
    return db.execute(f"""
        SELECT t.seq, t.request_id, t.client_request_id, t.received_at, t.champion_version,
               CASE WHEN t.status = 200 AND t.error IS NULL THEN 'ok' ELSE 'error' END, t.output, {columns}
        FROM traffic t{joins}
        WHERE {among('t.seq')}
        ORDER BY {order}""").fetchall()


def _disagreement(first_line: bool) -> str:
    """SQL: the challenger's answer `s` differs from the champion's `t` (see the module's docstring)."""
    def read(answer: str) -> str:
        text = f"coalesce({answer}.output, '')"
        return f"lower(trim(split_part({text}, chr(10), 1)))" if first_line else f"lower(trim({text}))"

    return (f"s.status = 'ok' AND ({read('s')} <> {read('t')} "
            "OR coalesce(s.tool_calls_json::VARCHAR, '') <> coalesce(t.tool_calls_json::VARCHAR, ''))")


def _on_traffic(request: RequestFilter) -> str:
    """The conditions of --since and --tag on the traffic row `t`."""
    since = "true" if request.since is None else \
        f"t.received_at >= TIMESTAMP {sql_literal(request.since.isoformat(sep=' '))}"
    return f"{since} AND {tags_sql(request.tags, 't.tags')}"


def _filters(request: RequestFilter, focus: str | None, disagreement: str, within: Callable[[str], str]) -> list[str]:
    """The conditions of --disagree and --errors."""
    conditions = []
    if request.disagree is not None:
        conditions.append(disagreement)
    if request.errors and focus is not None:
        conditions.append("s.status = 'error'")
    elif request.errors:
        conditions.append("(t.status <> 200 OR t.error IS NOT NULL OR EXISTS (SELECT 1 FROM shadow_results e "
                          f"WHERE e.request_seq = t.seq AND e.status = 'error' AND {within('e.request_seq')}))")
    return conditions


def _page(rows: list[tuple], limit: int, cursor_of) -> RequestPage:
    shown = rows[:limit]
    return RequestPage(
        requests=[RequestRow(request_id=r[1], client_request_id=r[2], received_at=r[3], champion_version=r[4],
                             champion_status=r[5], champion_output=r[6], version_id=r[7], status=r[8], output=r[9],
                             error=r[10], d_net=r[11]) for r in shown],
        next_cursor=cursor_of(shown[-1]) if len(rows) > limit else None)


def _newest_cursor(db: duckdb.DuckDBPyConnection, cursor: str | None) -> tuple[int, int]:
    """(the newest seq the listing covers, the seq the page starts below) for a newest-first page."""
    if cursor is None:
        newest = db.execute("SELECT coalesce(max(seq), 0) FROM traffic").fetchone()[0]
        return newest, newest + 1
    parts = cursor.split(":")
    if len(parts) != 3 or parts[0] != "seq" or not all(p.isdigit() for p in parts[1:]):
        raise ConfigError(f"cursor: {cursor!r} is not a cursor of a newest-first page (expected the next_cursor it gave)")
    return int(parts[1]), int(parts[2])


def _worst_cursor(cursor: str) -> tuple[float, int]:
    kind, _, rest = cursor.partition(":")
    d_net, _, seq = rest.rpartition(":")
    try:
        if kind != "net":
            raise ValueError(kind)
        value = float(d_net)
        if not math.isfinite(value):
            raise ValueError(d_net)
        return value, int(seq)
    except ValueError:
        raise ConfigError(f"cursor: {cursor!r} is not a cursor of a --worst page (expected the next_cursor it gave)") from None
