"""Commands from the office to a site: signed, stored with who and why, answered or timed out.

A command is signed with the node's key (HMAC-SHA256 over the canonical JSON,
as the wire contract says), stored as ``sent`` once the broker has it, and
moves to ``done``, ``rejected`` or ``failed`` when the node's ``cmd-result``
is ingested, or to ``timeout`` when it expires unanswered (the scheduler's
:meth:`Commands.expire_due`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, get_args

from cloud.db import commands as db_commands
from cloud.db.store import Store
from cloud.events import Bus, CommandSent
from floodgate import wire
from floodgate.clock import Clock
from floodgate.errors import RequestError
from floodgate.ids import new_ulid

Publish = Callable[[str, bytes], Awaitable[None]]
COMMAND_TYPES: tuple[str, ...] = get_args(wire.CommandType)
NEEDS_DEV = {"sign.show", "sign.clear", "gate.close", "gate.open", "thresholds.set"}
# Who may force a gate open against the site's policy. The role goes into the
# signed command as ``args.role``, set here from the login, never from the body.
FORCE_ROLES = ("admin", "dispatcher")


class CommandError(RequestError):
    """``code``: invalid (bad request), forbidden (a force by a role that may not), no_key (node
    unknown to the key store), unavailable (no broker)."""


class Keys:
    """Per-node command keys: explicit ones first, else derived from a master key."""

    def __init__(self, master: bytes | None = None, explicit: Mapping[str, bytes] | None = None) -> None:
        self.master = master
        self.explicit = dict(explicit or {})

    def __call__(self, node: str) -> bytes | None:
        if node in self.explicit:
            return self.explicit[node]
        return wire.node_command_key(self.master, node) if self.master else None


class Commands:
    def __init__(
        self, store: Store, keys: Keys, clock: Clock, publish: Publish | None = None, bus: Bus | None = None
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.publish = publish
        self.bus = bus or Bus()

    async def send(
        self,
        node: str,
        type_: str,
        *,
        issued_by: str,
        reason: str,
        dev: str | None = None,
        args: dict[str, Any] | None = None,
        ttl_s: float = 60.0,
        role: str | None = None,
    ) -> dict[str, Any]:
        args = {k: v for k, v in (args or {}).items() if k != "role"}
        if args.get("force"):
            if role not in FORCE_ROLES:
                raise CommandError(
                    "forbidden", f"only {' or '.join(FORCE_ROLES)} may force a command; you are {role}"
                )
            args["role"] = role
        if type_ not in COMMAND_TYPES:
            raise CommandError(
                "invalid", f"unknown command type {type_!r}; one of {', '.join(COMMAND_TYPES)}"
            )
        if type_ in NEEDS_DEV and not dev:
            raise CommandError("invalid", f"{type_} needs 'dev', the device it is for")
        if not reason.strip():
            raise CommandError("invalid", "a command needs a reason")
        if not 1 <= ttl_s <= 3600:
            raise CommandError("invalid", "ttl_s must be between 1 and 3600 seconds")
        key = self.keys(node)
        if key is None:
            raise CommandError("no_key", f"no command key for node {node!r}")
        if self.publish is None:
            raise CommandError("unavailable", "not connected to the broker")
        now = self.clock.now_ms()
        fields: dict[str, Any] = {
            "v": 1,
            "cmd_id": new_ulid(now),
            "type": type_,
            "args": args or {},
            "issued_by": issued_by,
            "issued_at": now,
            "expires_at": now + int(ttl_s * 1000),
        }
        if dev:
            fields["dev"] = dev
        signed = wire.sign_command(fields, key)
        payload = wire.canonical_json(signed)
        wire.decode(str(wire.Topic(node, wire.Kind.CMD)), payload)  # never send what the contract refuses
        row = {
            "cmd_id": fields["cmd_id"],
            "node": node,
            "type": type_,
            "dev": dev,
            "args": json.dumps(args or {}, ensure_ascii=False),
            "issued_by": issued_by,
            "reason": reason,
            "issued_ms": now,
            "expires_ms": fields["expires_at"],
            "status": "sent",
        }
        # Stored before it is published: a fast answer must find its command.
        await db_commands.add(self.store, row)
        try:
            await self.publish(str(wire.Topic(node, wire.Kind.CMD)), payload)
        except Exception as exc:
            await db_commands.not_published(self.store, row["cmd_id"], f"not published: {exc}", now)
            raise CommandError("unavailable", f"the broker did not take the command: {exc}") from exc
        await self.bus.publish(CommandSent(row["cmd_id"], row["expires_ms"]))  # a new expiry to watch
        return await self.get(row["cmd_id"])

    async def get(self, cmd_id: str) -> dict[str, Any]:
        row = await db_commands.get(self.store, cmd_id)
        if row is None:
            raise CommandError("not_found", f"no command {cmd_id}")
        return _public(row)

    async def list(
        self, node: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[int, list[dict[str, Any]]]:
        total, found = await db_commands.page(self.store, node, limit, offset)
        return total, [_public(r) for r in found]

    async def expire_due(self) -> int:
        """Mark sent commands past their expiry as timed out; returns how many."""
        return await db_commands.time_out(self.store, self.clock.now_ms())

    async def next_expiry(self) -> int | None:
        v = await db_commands.first_expiry(self.store)
        return v + 1 if v is not None else None


def _public(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["args"] = json.loads(out["args"])
    return out
