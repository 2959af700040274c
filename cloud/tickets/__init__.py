"""Tickets: from alert to closed case.

- ``machine``: the state machine without I/O: transitions, deadlines, who may
  act, the escalation target, the order an episode's transitions apply in.
- ``service``: :class:`Tickets`, which applies it to the database: alerts in
  the ingest transaction, people's actions, escalation, reads.
- ``storm``: the bulk path, a batch of alerts opening tickets in a few statements.
- ``rows``: a new ticket's row, routed (``cloud.db.tickets`` holds the SQL).

The rules are in ``docs/tickets.md``; the words (states, actions, kinds) in
``floodgate.vocab``.
"""

from cloud.tickets.machine import (
    Target,
    TicketError,
    TicketEvent,
    allowed_actions,
    escalation_target,
    is_overdue,
)
from cloud.tickets.service import Tickets

__all__ = [
    "Target",
    "TicketError",
    "TicketEvent",
    "Tickets",
    "allowed_actions",
    "escalation_target",
    "is_overdue",
]
