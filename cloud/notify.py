"""Notifications: webhooks (JSON, HMAC-signed) and e-mail, when tickets open, are
dispatched, escalate and close, as each unit's ``notify`` in the registry asks.

Who hears what:

- opened, dispatched, closed: the ticket's unit;
- escalated, level 1: the unit's ``leader_notify`` (its ``notify`` if it has none);
- escalated, level 2: the supervision unit (the fallback unit if the registry names none);
  the ladder is ``floodgate.vocab.LADDER``, resolved by ``cloud.tickets.escalation_target``.

Each delivery is a row in ``notifications`` first (so a restart loses none),
then sent by :meth:`Notifier.run`: leased while sending, retried with
exponential backoff up to ``max_attempts``, and kept as ``sent`` or ``failed``.
A webhook body is signed: ``X-Floodgate-Signature: sha256=<hex HMAC-SHA256 of
the body with the unit's webhook_secret>``; ``X-Floodgate-Delivery`` is the
delivery id, the same on every retry, for receivers to drop repeats.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import logging
import smtplib
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import httpx

from cloud.db import notifications
from cloud.db.store import Conn, Store
from cloud.events import Bus, TicketsChanged
from cloud.metrics import Metrics
from cloud.registry import Notify, Registry
from cloud.tickets import TicketEvent, escalation_target
from floodgate.clock import Clock, sleep_until_or
from floodgate.ids import new_ulid
from floodgate.vocab import NOTIFY_AS

log = logging.getLogger("floodgate.cloud.notify")
EVENTS = NOTIFY_AS  # ticket event -> what it is notified as
LEASE_MS = 60_000


def shown(channel: str, target: str) -> str:
    """A delivery's target as a log may show it: a webhook's scheme and host only (its path and
    query may hold an access token)."""
    if channel != "webhook":
        return target
    u = urllib.parse.urlsplit(target)
    return f"{u.scheme}://{u.hostname or ''}/…"


@dataclass(frozen=True)
class Smtp:
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "floodgate@localhost"
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 10.0


class Notifier:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        clock: Clock,
        smtp: Smtp | None = None,
        *,
        max_attempts: int = 6,
        backoff_ms: int = 5_000,
        http: httpx.AsyncClient | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.smtp = smtp
        self.max_attempts = max_attempts
        self.backoff_ms = backoff_ms
        self.http = http or httpx.AsyncClient(timeout=10)
        self._poke = asyncio.Event()
        m = metrics or Metrics()
        self.sent_total = m.counter(
            "floodgate_notifications_sent_total", "Notification deliveries this collector sent, by channel."
        )
        self.failures_total = m.counter(
            "floodgate_notification_failures_total",
            "Notification attempts of this collector that failed (retried, or given up), by channel.",
        )

    def poke(self) -> None:
        self._poke.set()

    def _targets(self, e: TicketEvent) -> list[tuple[dict[str, str], Notify]]:
        """Who hears of ``e``: (the registry entry it is, as {unit, notify}) and its settings."""
        if e.action == "escalate":
            t = escalation_target(self.registry, e.unit, e.escalation)
            if t.notify is None:
                return []
            owner = self.registry.units.get(t.unit)
            leader = owner is not None and t.notify is owner.leader_notify
            return [({"unit": t.unit, "notify": "leader_notify" if leader else "notify"}, t.notify)]
        unit = self.registry.units.get(e.unit)
        return [({"unit": e.unit, "notify": "notify"}, unit.notify)] if unit and unit.notify else []

    def attach(self, bus: Bus) -> None:
        """Record deliveries inside each transaction that changes tickets (``Bus.with_commit``)."""

        async def record(conn: Conn, changed: TicketsChanged) -> None:
            await self.record(conn, changed.events)

        bus.with_commit(TicketsChanged, record)

    async def record(self, conn: Conn, events: list[TicketEvent]) -> int:
        """Record the deliveries these events call for in ``conn``'s transaction (the one that
        made them: see ``attach``); returns how many. ``poke`` after the commit."""
        rows: list[dict[str, Any]] = []
        now = self.clock.now_ms()
        for e in events:
            name = EVENTS.get(e.action)
            if name is None:
                continue
            for recipient, target in self._targets(e):
                if name not in target.events:
                    continue
                payload = {
                    "event": f"ticket.{name}",
                    "recipient": recipient,
                    "ts": e.ts,
                    "actor": e.actor,
                    "note": e.note,
                    "ticket": {
                        "id": e.ticket_id,
                        "title": e.title,
                        "state": e.state,
                        "priority": e.priority,
                        "unit": e.unit,
                        "node": e.node,
                        "kind": e.kind,
                        "escalation": e.escalation,
                    },
                }
                channels: list[tuple[str, str]] = []
                if target.webhook:
                    channels.append(("webhook", target.webhook))
                if target.email:
                    channels.append(("email", ",".join(target.email)))
                for channel, where in channels:
                    delivery = new_ulid(now)
                    rows.append(
                        {
                            "id": delivery,
                            "channel": channel,
                            "target": where,
                            "event": f"ticket.{name}",
                            "ticket_id": e.ticket_id,
                            "payload": json.dumps({"id": delivery, **payload}, ensure_ascii=False),
                            "status": "pending",
                            "attempts": 0,
                            "next_attempt_ms": now,
                            "created_ms": now,
                        }
                    )
        await notifications.add(conn, rows)
        return len(rows)

    def _secret(self, row: Any) -> bytes | None:
        """The webhook secret of the unit (and its notify or leader_notify) the delivery is for,
        whatever other unit shares its URL."""
        recipient = json.loads(row["payload"]).get("recipient")
        if recipient is None:  # recorded before deliveries named their recipient
            for unit in self.registry.units.values():
                for n in (unit.notify, unit.leader_notify):
                    if n is not None and n.webhook == row["target"] and n.webhook_secret:
                        return n.webhook_secret.encode()
            return None
        owner = self.registry.units.get(recipient["unit"])
        n = getattr(owner, recipient["notify"], None) if owner is not None else None
        return n.webhook_secret.encode() if n is not None and n.webhook_secret else None

    async def _send(self, row: Any) -> None:
        body = row["payload"].encode()
        if row["channel"] == "webhook":
            headers = {
                "Content-Type": "application/json",
                "X-Floodgate-Event": row["event"],
                "X-Floodgate-Delivery": row["id"],
            }
            secret = self._secret(row)
            if secret is not None:
                headers["X-Floodgate-Signature"] = (
                    "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                )
            r = await self.http.post(row["target"], content=body, headers=headers)
            if r.status_code >= 300:
                raise RuntimeError(f"HTTP {r.status_code}")
            return
        if self.smtp is None:
            raise RuntimeError("no SMTP server configured")
        await asyncio.to_thread(self._mail, row)

    def _mail(self, row: Any) -> None:
        assert self.smtp is not None
        s = self.smtp
        data = json.loads(row["payload"])
        t = data["ticket"]
        msg = EmailMessage()
        msg["From"] = s.sender
        msg["To"] = row["target"]
        msg["Subject"] = f"[Floodgate] {row['event']}: {t['title']} ({t['priority']})"
        msg["Message-ID"] = f"<{row['id']}@floodgate>"
        msg["Date"] = email.utils.format_datetime(datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC))
        lines = [
            f"Ticket {t['id']}: {t['title']}",
            f"Event: {row['event']} by {data['actor']}",
            f"State: {t['state']}, priority {t['priority']}, unit {t['unit']}, escalation {t['escalation']}",
        ]
        if data.get("note"):
            lines.append(f"Note: {data['note']}")
        msg.set_content("\n".join(lines) + "\n")
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
            if s.starttls:
                smtp.starttls()
            if s.username:
                smtp.login(s.username, s.password or "")
            smtp.send_message(msg)

    async def deliver_due(self) -> int:
        """Send every delivery that is due; returns how many were sent."""
        now = self.clock.now_ms()
        due = await notifications.due(self.store, now)
        sent = 0
        for row in due:
            if not await notifications.lease(self.store, row, now + LEASE_MS):  # another collector's
                continue
            try:
                await self._send(row)
            except Exception as exc:
                attempts = row["attempts"] + 1
                failed = attempts >= self.max_attempts
                values: dict[str, Any] = {
                    "attempts": attempts,
                    "last_error": str(exc)[:500] or type(exc).__name__,
                    "status": "failed" if failed else "pending",
                    "next_attempt_ms": now + self.backoff_ms * 2 ** (attempts - 1),
                }
                self.failures_total.inc(channel=row["channel"])
                log.log(
                    logging.ERROR if failed else logging.WARNING,
                    "notification %s to %s failed (attempt %d): %s",
                    row["id"],
                    shown(row["channel"], row["target"]),
                    attempts,
                    exc,
                )
            else:
                values = {
                    "attempts": row["attempts"] + 1,
                    "status": "sent",
                    "sent_ms": self.clock.now_ms(),
                    "last_error": None,  # the failed attempts before it are over
                }
                sent += 1
                self.sent_total.inc(channel=row["channel"])
            await notifications.attempted(self.store, row["id"], values)
        return sent

    async def next_due(self) -> int | None:
        return await notifications.next_due(self.store)

    async def run(self, idle_ms: int = 60_000) -> None:
        try:
            while True:
                self._poke.clear()
                try:
                    await self.deliver_due()
                    nxt = await self.next_due()
                except Exception:
                    log.exception("notification round failed")
                    nxt = None
                target = self.clock.now_ms() + idle_ms if nxt is None else nxt
                await sleep_until_or(self.clock, target, self._poke)
        finally:
            await self.http.aclose()
