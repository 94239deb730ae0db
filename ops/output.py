"""How the CLI prints: rich tables for people, JSON for scripts, errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
error_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200, highlight=False)


def print_json(value: Any) -> None:
    """Print models, lists of models or plain values as indented JSON."""
    print(json.dumps(_plain(value), indent=2, ensure_ascii=False, default=str))


def _plain(value: Any) -> Any:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain table; `None` cells print as '-'."""
    table = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console.print(table)


def print_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """A titled section of `name  value` lines, the names aligned."""
    table = Table.grid(padding=(0, 2))
    table.title, table.title_justify, table.title_style = title, "left", "bold"
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    for name, value in fields:
        table.add_row(name, "-" if value is None else str(value))
    console.print(table)


def say(message: str) -> None:
    """A line of normal output (rich markup allowed)."""
    console.print(message)


def warn(message: str) -> None:
    error_console.print(f"[yellow]warning:[/yellow] {message}", markup=True)


def fail(message: str) -> None:
    """An error line on stderr, printed verbatim (messages may contain brackets)."""
    error_console.print("[red]error:[/red] ", end="", markup=True)
    error_console.print(message, markup=False)
