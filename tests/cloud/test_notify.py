"""Notifications to a real local HTTP receiver and a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI, Request, Response
from sqlalchemy import select

from cloud.db.schema import notifications
from cloud.db.store import Store
from cloud.events import TicketsChanged
from cloud.ingest import Ingestor
from cloud.notify import Notifier, Smtp
from cloud.server import ApiServer
from cloud.tickets import Tickets
from floodgate.clock import ManualClock
from floodgate.errors import ConfigError
from floodgate.ids import new_ulid
from tests.cloud.test_tickets import REGISTRY, Site, registry
from tests.helpers import free_port, wait_until

MIN = 60_000


@dataclass
class Receiver:
    url: str
    fail_first: int = 0
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = FastAPI()
    port = free_port()
    rec = Receiver(f"http://127.0.0.1:{port}")

    @app.post("/{name}")
    async def hook(name: str, request: Request) -> Response:
        rec.calls.append(({**request.headers, "x-path": name}, await request.body()))
        if len(rec.calls) <= rec.fail_first:
            return Response("busy", status_code=503)
        return Response("ok")

    server = ApiServer(app, "127.0.0.1", port)
    task = asyncio.create_task(server.run_until_cancelled())
    await wait_until(lambda: server.started, 10, "the webhook receiver")
    yield rec
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def mailbox() -> Any:
    box = Mailbox()
    ctl = Controller(box, hostname="127.0.0.1", port=free_port())
    ctl.start()
    yield box, ctl.port
    ctl.stop()


def notifying_registry(tmp_path: Path, url: str) -> str:
    return REGISTRY.replace(
        "  drainage-dasha: {name: 大沙街排水所, leader: 王所长}\n",
        "  drainage-dasha:\n"
        "    name: 大沙街排水所\n"
        "    leader: 王所长\n"
        f"    notify: {{webhook: '{url}/dasha', webhook_secret: s3cret-dasha, email: [duty@dasha.example]}}\n"
        "    leader_notify: {email: [wang@dasha.example], events: [escalated]}\n",
    ).replace(
        "  supervision-office: {name: 督办室}\n",
        f"  supervision-office: {{name: 督办室, notify: {{webhook: '{url}/supervision'}}}}\n",
    )


async def rows(store: Store) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(select(notifications).order_by(notifications.c.id))).mappings().all())


async def test_ticket_events_reach_webhooks_and_mailboxes_with_retries(
    store: Store, tmp_path: Path, receiver: Receiver, mailbox: Any
) -> None:
    box, smtp_port = mailbox
    clock = ManualClock()
    reg = registry(tmp_path, notifying_registry(tmp_path, receiver.url))
    t = Tickets(store, reg, clock)
    notifier = Notifier(store, reg, clock, Smtp(port=smtp_port, sender="floodgate@test"), backoff_ms=5_000)
    notifier.attach(t.bus)  # as the collector does: stored with the ticket change
    site = Site(Ingestor(store, t))
    receiver.fail_first = 2

    await site.send(site.alert(new_ulid(), "danger", "clear"))
    assert len(await rows(store)) == 2  # opened: the unit's webhook and its e-mail
    assert await notifier.deliver_due() == 1, "the e-mail goes, the webhook gets a 503"
    clock.advance(5_000)
    assert await notifier.deliver_due() == 0, "second 503"
    clock.advance(9_000)
    assert await notifier.deliver_due() == 0, "backoff doubled: not due yet"
    clock.advance(1_000)
    assert await notifier.deliver_due() == 1
    assert [r["status"] for r in await rows(store)] == ["sent", "sent"]
    assert [r["last_error"] for r in await rows(store)] == [None, None], "sent: the failures are over"

    assert len(receiver.calls) == 3
    deliveries = {h["x-floodgate-delivery"] for h, _ in receiver.calls}
    assert len(deliveries) == 1, "one delivery id on every retry"
    headers, body = receiver.calls[-1]
    expected = hmac.new(b"s3cret-dasha", body, hashlib.sha256).hexdigest()
    assert headers["x-floodgate-signature"] == f"sha256={expected}"
    data = json.loads(body)
    assert data["event"] == "ticket.opened" and data["ticket"]["unit"] == "drainage-dasha"
    assert box.messages[0]["To"] == "duty@dasha.example"
    sent_at = email.utils.parsedate_to_datetime(box.messages[0]["Date"])
    assert sent_at.timestamp() * 1000 == clock.now_ms() - 15_000, "Date: when it was sent"
    assert "ticket.opened" in box.messages[0]["Subject"]

    # Escalation: level 1 to the unit's leader (e-mail only), level 2 to the supervision office.
    tid = data["ticket"]["id"]
    await t.act(tid, "dispatch", "user:chen")
    clock.advance(16 * MIN)
    await t.escalate_due()
    clock.advance(15 * MIN)
    await t.escalate_due()
    await notifier.deliver_due()
    by_path = [h["x-path"] for h, _ in receiver.calls]
    assert by_path.count("supervision") == 1
    escalated = json.loads(next(b for h, b in receiver.calls if h["x-path"] == "supervision"))
    assert escalated["event"] == "ticket.escalated" and escalated["ticket"]["escalation"] == 2
    to = [m["To"] for m in box.messages]
    assert to.count("wang@dasha.example") == 1, "the leader hears of level 1 only"
    assert to.count("duty@dasha.example") == 2, "opened and dispatched"


async def test_a_delivery_that_keeps_failing_is_kept_as_failed(store: Store, tmp_path: Path) -> None:
    clock = ManualClock()
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens
    reg = registry(tmp_path, notifying_registry(tmp_path, dead))
    t = Tickets(store, reg, clock)
    notifier = Notifier(store, reg, clock, None, max_attempts=3, backoff_ms=1_000)
    notifier.attach(t.bus)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    for _ in range(4):
        await notifier.deliver_due()
        clock.advance(10_000)
    got = {r["channel"]: r for r in await rows(store)}
    assert got["webhook"]["status"] == "failed" and got["webhook"]["attempts"] == 3
    assert got["email"]["status"] == "failed" and "no SMTP server" in got["email"]["last_error"]


async def test_the_running_notifier_wakes_for_new_deliveries(
    store: Store, tmp_path: Path, receiver: Receiver
) -> None:
    clock = ManualClock()
    reg = registry(tmp_path, notifying_registry(tmp_path, receiver.url))
    t = Tickets(store, reg, clock)
    notifier = Notifier(store, reg, clock, None)
    notifier.attach(t.bus)
    task = asyncio.create_task(notifier.run())
    try:
        site = Site(Ingestor(store, t))
        await site.send(site.alert(new_ulid(), "warning", "clear"))
        notifier.poke()  # as the collector does after the commit
        await wait_until(lambda: len(receiver.calls) == 1, 10, "the webhook, without a clock tick")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_webhook_secret_can_live_in_a_file_of_its_own(tmp_path: Path) -> None:
    (tmp_path / "dasha.secret").write_text("from-a-file\n")
    text = notifying_registry(tmp_path, "http://127.0.0.1:9").replace(
        "webhook_secret: s3cret-dasha", "webhook_secret_file: dasha.secret"
    )
    reg = registry(tmp_path, text)  # relative to the registry file
    notify = reg.units["drainage-dasha"].notify
    assert notify is not None and notify.webhook_secret == "from-a-file"

    (tmp_path / "dasha.secret").unlink()
    with pytest.raises(ConfigError) as err:
        registry(tmp_path, text)
    assert "units.drainage-dasha.notify.webhook_secret_file" in str(err.value)
    assert "dasha.secret" in str(err.value) and "registry.yaml:" in str(err.value)

    (tmp_path / "dasha.secret").write_text("x")
    both = text.replace("webhook_secret_file:", "webhook_secret: a, webhook_secret_file:")
    with pytest.raises(ConfigError, match="not both"):
        registry(tmp_path, both)


async def test_notifications_are_stored_with_the_ticket_change_or_not_at_all(
    store: Store, tmp_path: Path
) -> None:
    """Attached to the tickets, the notifier records deliveries inside the transaction that
    changed the ticket: a crash after the commit cannot lose them, and a failure to store
    them undoes the change (the alert is then delivered again)."""
    clock = ManualClock()
    reg = registry(tmp_path, notifying_registry(tmp_path, "http://127.0.0.1:9"))
    t = Tickets(store, reg, clock)
    notifier = Notifier(store, reg, clock, None)
    notifier.attach(t.bus)
    site = Site(Ingestor(store, t))

    applied = await site.send(site.alert(new_ulid(), "danger", "clear"))
    assert sorted(r["event"] for r in await rows(store)) == ["ticket.opened", "ticket.opened"]
    tid = applied.tickets[0].ticket_id

    failing = True

    async def broken(conn: Any, changed: Any) -> None:
        if failing:
            raise RuntimeError("the disk is full")

    t.bus.with_commit(TicketsChanged, broken)
    with pytest.raises(RuntimeError, match="disk is full"):
        await t.act(tid, "dispatch", "user:chen")
    assert (await t.get(tid))["state"] == "open", "the dispatch was undone with its notifications"
    assert len(await rows(store)) == 2
    failing = False
    await t.act(tid, "dispatch", "user:chen")
    assert sorted(r["event"] for r in await rows(store)).count("ticket.dispatched") == 2


async def test_each_unit_signs_with_its_own_secret_whatever_url_it_shares(
    store: Store, tmp_path: Path, receiver: Receiver
) -> None:
    clock = ManualClock()
    shared = f"{receiver.url}/shared"
    text = notifying_registry(tmp_path, receiver.url).replace(f"{receiver.url}/dasha", shared)
    text = text.replace(
        "  maint-huangpu: {name: 区设备维护班}\n",
        "  maint-huangpu:\n"
        "    name: 区设备维护班\n"
        f"    notify: {{webhook: '{shared}', webhook_secret: s3cret-maint}}\n",
    )
    reg = registry(tmp_path, text)
    t = Tickets(store, reg, clock)
    notifier = Notifier(store, reg, clock, None)
    notifier.attach(t.bus)
    site = Site(Ingestor(store, t))
    await site.send(site.alert(new_ulid(), "danger", "clear"))  # flood: drainage-dasha
    await site.send(site.alert(new_ulid(), "warning", "clear", kind="sensor_fault"))  # maint-huangpu
    await notifier.deliver_due()
    signed = {}
    for headers, body in receiver.calls:
        unit = json.loads(body)["ticket"]["unit"]
        signed[unit] = headers["x-floodgate-signature"]
        assert json.loads(body)["recipient"] == {"unit": unit, "notify": "notify"}
        assert headers["x-path"] == "shared"
    bodies = {json.loads(b)["ticket"]["unit"]: b for _, b in receiver.calls}
    for unit, secret in (("drainage-dasha", b"s3cret-dasha"), ("maint-huangpu", b"s3cret-maint")):
        assert signed[unit] == "sha256=" + hmac.new(secret, bodies[unit], hashlib.sha256).hexdigest()
