"""Signed commands from the cloud, checked before anything moves.

Order of checks (the first that fails answers the ``cmd-result``):
parseable JSON -> this node has a key -> signed -> signature right (HMAC over
the canonical JSON of every other field) -> shape -> not expired -> not seen
before (ids persist in the outbox database, so a replay after a restart is
refused too) -> safe (the actuation rules) -> done or failed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from edge.actuation import Outcome, ResponseController
from edge.config.site import Thresholds
from edge.devices.drivers import LevelSensor
from edge.outbox import Outbox
from floodgate.ids import now_ms
from floodgate.wire import Command, describe, verify_command

MAX_CLOCK_SKEW_MS = 5 * 60 * 1000


@dataclass(frozen=True)
class Result:
    cmd_id: str
    status: str
    reason: str = ""


class CommandHandler:
    def __init__(
        self,
        key: bytes | None,
        outbox: Outbox,
        controllers: dict[str, ResponseController],
        levels: dict[str, LevelSensor],
        on_rebirth: Callable[[], Awaitable[None]],
        on_config: Callable[[str, dict[str, Any]], None],
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.key = key
        self.outbox = outbox
        self.controllers = controllers  # by actuator device id
        self.levels = levels
        self.on_rebirth = on_rebirth
        self.on_config = on_config
        self.clock_ms = clock_ms

    async def handle(self, payload: bytes) -> Result:
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return Result("unknown", "rejected", "bad_json: payload is not JSON")
        if not isinstance(raw, dict):
            return Result("unknown", "rejected", "bad_json: payload must be an object")
        cmd_id = raw.get("cmd_id")
        cmd_id = cmd_id if isinstance(cmd_id, str) and 0 < len(cmd_id) <= 64 else "unknown"
        if self.key is None:
            return Result(cmd_id, "rejected", "no_key: this node has no command key configured")
        if "sig" not in raw:
            return Result(cmd_id, "rejected", "unsigned: the command carries no sig")
        if not verify_command(raw, self.key):
            return Result(cmd_id, "rejected", "bad_signature: sig does not match this node's key")
        try:
            cmd = msgspec.convert(raw, type=Command)
        except msgspec.ValidationError as exc:
            where, msg = describe(exc)
            return Result(cmd_id, "rejected", f"bad_command: {where or 'command'}: {msg}")
        now = self.clock_ms()
        if cmd.expires_at <= now:
            return Result(cmd_id, "rejected", f"expired: {(now - cmd.expires_at) / 1000:.1f} s ago")
        if cmd.issued_at > now + MAX_CLOCK_SKEW_MS:
            return Result(cmd_id, "rejected", "not_yet_valid: issued_at is in the future")
        if not await self.outbox.remember_command(cmd.cmd_id, cmd.expires_at, now):
            return Result(cmd_id, "rejected", "replayed: this cmd_id was already received")
        outcome = await self._execute(cmd)
        return Result(cmd_id, outcome.status, outcome.reason)

    async def _execute(self, cmd: Command) -> Outcome:
        cause = f"cmd:{cmd.cmd_id} by {cmd.issued_by}"
        if cmd.type == "rebirth":
            await self.on_rebirth()
            return Outcome("done")
        if cmd.type == "thresholds.set":
            sensor = self.levels.get(cmd.dev or "")
            if sensor is None:
                return Outcome("rejected", f"bad_command: {cmd.dev!r} is not a level sensor here")
            try:
                th = msgspec.convert(cmd.args, type=Thresholds)
            except msgspec.ValidationError as exc:
                where, msg = describe(exc)
                return Outcome("rejected", f"bad_command: args.{where}: {msg}")
            for name in ("warning", "danger"):
                t = getattr(th, name)
                if t.clear >= t.on:
                    return Outcome("rejected", f"bad_command: {name}.clear must be below {name}.on")
            if th.warning.on >= th.danger.on:
                return Outcome("rejected", "bad_command: danger.on must be above warning.on")
            sensor.set_thresholds(th)
            self.on_config(sensor.id, {"thresholds": msgspec.to_builtins(th), "cause": cause})
            return Outcome("done")
        ctl = self.controllers.get(cmd.dev or "")
        if ctl is None:
            return Outcome("rejected", f"bad_command: no sign or gate {cmd.dev!r} on this node")
        return await ctl.command(cmd.type, cmd.args, cause)
