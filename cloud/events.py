"""One event bus for what happens after (or with) a commit.

Publishers say what happened (:class:`TicketsChanged`, :class:`CommandSent`,
:class:`ForecastRound`);
whoever cares subscribes by event type. Two phases:

- ``with_commit``: called inside the transaction that made the change, so what
  it stores (notification deliveries) commits with the change or not at all;
  an error there rolls the change back.
- ``subscribe``: called after the commit (live views, waking the scheduler or
  the notification sender, logs); a failing subscriber is logged and the
  others still run.
"""

from __future__ import annotations

import inspect
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from cloud.db.store import Conn

if TYPE_CHECKING:
    from cloud.tickets.machine import TicketEvent

log = logging.getLogger("floodgate.cloud.events")
E = TypeVar("E")


@dataclass(frozen=True)
class TicketsChanged:
    """Ticket changes of one transaction, in order (alerts, people, escalation)."""

    events: list[TicketEvent]


@dataclass(frozen=True)
class ForecastRound:
    """A forecast round stored every site's forecast, issued at ``issued_ms``."""

    issued_ms: int


@dataclass(frozen=True)
class CommandSent:
    """A command went to a node; it expires at ``expires_ms`` unless answered."""

    cmd_id: str
    expires_ms: int


class Bus:
    def __init__(self) -> None:
        self._after: dict[type[Any], list[Callable[[Any], Awaitable[object] | object]]] = defaultdict(list)
        self._with: dict[type[Any], list[Callable[[Conn, Any], Awaitable[object]]]] = defaultdict(list)

    def subscribe(self, kind: type[E], fn: Callable[[E], Awaitable[object] | object]) -> None:
        """Call ``fn(event)`` after each commit that made an event of ``kind``."""
        self._after[kind].append(fn)

    def with_commit(self, kind: type[E], fn: Callable[[Conn, E], Awaitable[object]]) -> None:
        """Call ``fn(conn, event)`` inside the transaction making each event of ``kind``."""
        self._with[kind].append(fn)

    async def record(self, conn: Conn, event: object) -> None:
        """In the transaction that made ``event`` (its ``with_commit`` subscribers)."""
        for fn in self._with[type(event)]:
            await fn(conn, event)

    async def publish(self, event: object) -> None:
        """After the commit that made ``event``."""
        for fn in self._after[type(event)]:
            try:
                result = fn(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a subscriber to %s failed", type(event).__name__)
