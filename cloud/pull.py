"""A JetStream pull on a durable consumer, lean: one request a batch, its messages gathered as they come.

nats-py's ``PullSubscription.fetch`` waits for each message of a batch in two
tasks of its own (``next_msg``: a task, ``asyncio.wait_for``'s, a uuid): at a
city's rate that was a tenth of a collector's time. Here a subscription's
callback puts each message in the batch being gathered, and the fetch waits
once, for the batch to be full or the pull to end.

The request is the one nats-py makes for a batch: ``batch``, ``expires`` and
``no_wait``. nats-server (2.9 on) answers it with what the consumer has, up to
``batch``, and ends it with a status (404 no messages, 408 expired) as soon as
nothing more waits; with nothing at all, it waits up to ``expires`` for the
first message (``tests/cloud/test_jetstream_intake.py`` pins that on the
server here). Each request has its own reply subject, so the status that ends
an earlier pull (one given up on) does not end the next. A message delivered
to an earlier pull is still the consumer's message for this collector: it is
taken with the next batch, not dropped (it would come again only after
``ack_wait``).
"""

from __future__ import annotations

import asyncio
import json

import nats.js.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

STATUS = "Status"
ENDS = frozenset({"404", "408", "409"})  # no messages, expired, a conflict (nats-py's temporary ones)
HEARTBEAT = "100"
GRACE_S = 1.0  # past ``expires`` before the pull counts as lost (its 408 did not come)


class Puller:
    """Pulls from ``durable`` on ``stream`` over ``nc``, one batch at a time (not shared between tasks)."""

    def __init__(self, nc: Nats, stream: str, durable: str, api_prefix: str = "$JS.API") -> None:
        self._nc = nc
        self._next = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._n = 0
        self._want = ""  # the reply subject of the pull under way
        self._batch = 0
        self._held: list[Msg] = []  # delivered, not handed out yet
        self._ended = asyncio.Event()  # the pull under way is full or over
        self._error: nats.js.errors.APIError | None = None
        self.answered = False  # the server ended the last pull (or filled it): it is there

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._inbox + ".*", cb=self._on)

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def fetch(self, batch: int, wait_s: float) -> list[Msg]:
        """Up to ``batch`` messages: what the consumer has now, or, when it has nothing, what
        comes first within ``wait_s`` (``[]`` if nothing). Raises the server's error (503: no
        JetStream) and the connection's."""
        if self._held:  # delivered to an earlier pull after it was given up on
            self.answered = True
            return self._take(batch)
        self._n += 1
        self._want = f"{self._inbox}.{self._n}"
        self._batch = batch
        self._ended.clear()
        self._error = None
        expires = max(1, int(wait_s * 1e9) - 100_000)
        req = json.dumps({"batch": batch, "expires": expires, "no_wait": True}).encode()
        await self._nc.publish(self._next, req, reply=self._want)
        try:
            await asyncio.wait_for(self._ended.wait(), wait_s + GRACE_S)
        except TimeoutError:
            pass  # the end was lost (a reconnect): what came is this batch
        finally:
            self._want = ""
        self.answered = self._ended.is_set()
        error = self._failed()
        if error is not None and not self._held:
            raise error
        return self._take(batch)

    def _failed(self) -> nats.js.errors.APIError | None:
        """The error status that ended the pull, if one did (set by ``_on`` meanwhile)."""
        return self._error

    def _take(self, batch: int) -> list[Msg]:
        out, self._held = self._held[:batch], self._held[batch:]
        return out

    async def _on(self, msg: Msg) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            self._held.append(msg)
            if self._want and len(self._held) >= self._batch:
                self._ended.set()
        elif msg.subject != self._want or status == HEARTBEAT:
            return  # the end of a pull given up on, or one still going
        elif status in ENDS:
            self._ended.set()
        else:
            try:
                nats.js.errors.APIError.from_msg(msg)  # raises the status's error
            except nats.js.errors.APIError as exc:
                self._error = exc
            self._ended.set()
