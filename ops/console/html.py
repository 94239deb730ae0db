"""The console's one template helper: the page layout, forms with their CSRF token, tables.

Plain f-strings with `html.escape` on everything that comes from data (labels, reasons,
skill text, configs); no template engine and no script. The report's CSS is the base, so
the console's leaderboard looks exactly like the report's.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from scorer.report.page import CSS as REPORT_CSS

CONSOLE_CSS = """
nav{display:flex;flex-wrap:wrap;gap:4px 16px;align-items:center;border-bottom:1px solid #d0d7de;
 padding:0 0 10px;margin:0 0 18px}
nav a{color:#0969da;text-decoration:none}nav a.here{font-weight:700;color:#1f2328}
nav .brand{font-weight:700;color:#1f2328;margin-right:8px}nav form{margin-left:auto}
.msg{border-radius:6px;padding:8px 12px;margin:0 0 12px;border:1px solid}
.msg.ok{background:#dafbe1;border-color:#1a7f37}.msg.error{background:#ffebe9;border-color:#cf222e}
form.action{border:1px solid #d0d7de;border-radius:8px;padding:12px 16px;margin:12px 0;max-width:640px}
form.action h2{margin:0 0 8px}label{display:block;margin:8px 0 2px;font-weight:600}
input[type=text],input[type=password],textarea{width:100%;box-sizing:border-box;padding:6px 8px;
 border:1px solid #d0d7de;border-radius:6px;font:inherit}
label.check{font-weight:400}button{margin-top:10px;padding:6px 14px;border-radius:6px;border:1px solid #1f2328;
 background:#f6f8fa;font:inherit;cursor:pointer}
pre{background:#f6f8fa;border:1px solid #d8dee4;border-radius:6px;padding:10px;overflow-x:auto;
 font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;white-space:pre-wrap}
pre.diff span{display:block}pre.diff .add{background:#dafbe1}pre.diff .del{background:#ffebe9}
pre.diff .hunk{color:#8250df}tr.changed td{background:#fff8c5}.muted{color:#57606a}
form.filters{display:flex;flex-wrap:wrap;gap:4px 12px;align-items:end;margin:0 0 12px}
form.filters label{margin:0;font-size:12px}form.filters input[type=text]{width:170px}
.answers{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:12px}
.answer{border:1px solid #d0d7de;border-radius:8px;padding:8px 12px;min-width:0}
.answer h3{margin:4px 0}.answer.differs{border-color:#bf8700}
"""

SECURITY_HEADERS = {
    # nothing from elsewhere, no scripts at all; inline styles and data: icons only
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def document(title: str, body: str, refresh_s: int | None = None) -> str:
    """A whole page: head (no external resource, not even a favicon request) and `body`."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="icon" href="data:,">{refresh}<title>{escape(title)} · shadowzoo</title>'
        f"<style>{REPORT_CSS}{CONSOLE_CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def link(path: str, text: str, css: str = "", **query: str | None) -> str:
    """An anchor to a console path with a query string; the text is escaped."""
    params = {name: value for name, value in query.items() if value is not None}
    href = path + (f"?{urlencode(params)}" if params else "")
    return f'<a href="{escape(href)}"{f" class={css!r}" if css else ""}>{escape(text)}</a>'


def messages(items: Iterable[tuple[str, str]]) -> str:
    return "".join(f'<p class="msg {escape(kind)}" role="status">{escape(text)}</p>' for kind, text in items)


def form(action: str, csrf: str, fields: str, button: str, css: str = "action", title: str = "") -> str:
    """A POST form carrying the session's CSRF token."""
    heading = f"<h2>{escape(title)}</h2>" if title else ""
    return (f'<form method="post" action="{escape(action)}" class="{css}">{heading}'
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">{fields}'
            f"<button type=\"submit\">{escape(button)}</button></form>")


def filters(action: str, fields: str, button: str = "Show") -> str:
    """A GET form (a search: nothing changes, so no CSRF token) whose fields become the page's query."""
    return f'<form method="get" action="{escape(action)}" class="filters">{fields}<button type="submit">{escape(button)}</button></form>'


def hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


def text_field(name: str, label: str, multiline: bool = False, password: bool = False, value: str = "") -> str:
    control = (f'<textarea id="{name}" name="{name}" rows="3">{escape(value)}</textarea>' if multiline else
               f'<input id="{name}" name="{name}" type="{"password" if password else "text"}" value="{escape(value)}">')
    return f'<label for="{name}">{escape(label)}</label>{control}'


def checkbox(name: str, label: str, checked: bool = False) -> str:
    mark = " checked" if checked else ""
    return f'<label class="check"><input type="checkbox" name="{name}" value="1"{mark}> {escape(label)}</label>'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str, row_css: Sequence[str] = ()) -> str:
    """A table whose cells are already HTML (callers escape data); `empty` when there are no rows."""
    rows = list(rows)
    if not rows:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    css = list(row_css) + [""] * len(rows)
    body = "".join(f"<tr{f' class={css[i]!r}' if css[i] else ''}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                   for i, row in enumerate(rows))
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def mono(value: Any) -> str:
    return f'<span class="mono">{escape("" if value is None else str(value))}</span>'


def pretty_json(value: Any) -> str:
    return f"<pre>{escape(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>"


def line_diff(before: str, after: str, before_name: str, after_name: str, same: str) -> str:
    """A unified diff of two texts, added and removed lines highlighted; `same` when they do not differ."""
    lines = list(difflib.unified_diff(before.splitlines(), after.splitlines(), before_name, after_name, lineterm=""))
    if not lines:
        return f"<p class='empty'>{escape(same)}</p>"
    css = {"+": "add", "-": "del", "@": "hunk"}
    spans = "".join(f'<span class="{css.get(line[:1], "")}">{escape(line) or " "}</span>' for line in lines)
    return f'<pre class="diff">{spans}</pre>'
