"""What a console page or action gets: the admin API's state, the request, the session and the slot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ops.console.session import Session

if TYPE_CHECKING:
    from ops.admin import Api


@dataclass(frozen=True)
class View:
    """A rendered page: its title, its body HTML, and how often the browser reloads it (None: never)."""

    title: str
    body: str
    refresh_s: int | None = None


@dataclass(frozen=True)
class Visit:
    """One logged-in request to the console."""

    api: Api
    request: web.Request
    session: Session

    @property
    def slots(self) -> list[str]:
        return list(self.api.operations.registry.workspace.config.slots)

    def slot(self, given: str | None = None) -> str:
        """The slot asked for (query or form), checked against the config; else the first configured."""
        name = given or self.request.query.get("slot")
        if name:
            self.api.operations.registry.workspace.slot(name)  # an unknown slot is a ConfigError naming the known ones
            return name
        if not self.slots:
            return ""
        return self.slots[0]

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """An operation, off the event loop, as the admin API runs it."""
        return await self.api.call(function, *args)
