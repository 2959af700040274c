"""Local actuation: the board warns and the gate stops traffic, with no cloud involved.

One :class:`ResponseController` per configured response (sensors -> board,
gate). Its rules, in order of precedence:

1. The manual override input wins: while it is on, the agent drives neither
   the board nor the gate of that response, and refuses commands for them.
2. Targets are absolute (a message, closed or open), written, then read back;
   a board that forgot its message (power cut) is written again.
3. The gate closes only after the board has shown a warning, confirmed by
   read-back, for ``gate_min_warning_s``.
4. While any sensor of the response is faulted, the gate is never opened
   automatically: the flood may still be there.
5. A command from a person holds its target until the water level of the
   response changes; then the automatic rules take over again.

Every write is an ``actuator.state`` event saying what caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge.bus.owner import BusOwner, DeviceIO
from edge.config.site import Response
from edge.devices.drivers import GateDevice, GateState, SignDevice, SignState
from floodgate.errors import BusError
from floodgate.wire import Level, level_rank

log = logging.getLogger("floodgate.edge.actuation")
EmitEvent = Callable[[str, str | None, dict[str, Any]], None]
RETRY_S = 1.0


@dataclass(frozen=True)
class Outcome:
    status: str  # done | rejected | failed
    reason: str = ""


class ResponseController:
    def __init__(
        self,
        resp: Response,
        sign: tuple[SignDevice, BusOwner] | None,
        gate: tuple[GateDevice, BusOwner] | None,
        emit: EmitEvent,
        presets: dict[str, str] | None = None,
    ) -> None:
        self.resp = resp
        self.sign = sign
        self.gate = gate
        self.emit = emit
        self.presets = presets or {}
        self.levels: dict[str, Level] = dict.fromkeys(resp.sensors, "clear")
        self.faulted: set[str] = set()
        self.override: bool | None = None
        self.cause = "startup"
        self.manual_text: str | None = None
        self.manual_gate: bool | None = None
        self.sign_state: SignState | None = None
        self.gate_state: GateState | None = None
        self.warning_since: float | None = None
        self.gate_moving_since: float | None = None
        self.gate_commanded: bool | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._time = asyncio.get_running_loop().time
        self.confirmed_text: str | None = None
        if sign is not None:
            sign[0].listener = self._sign_read
        if gate is not None:
            gate[0].listener = self._gate_read

    # --- inputs ------------------------------------------------------------------

    @property
    def level(self) -> Level:
        return max(self.levels.values(), key=level_rank)

    def sensor_level(self, dev: str, level: Level, cause: str) -> None:
        before = self.level
        self.levels[dev] = level
        if self.level != before:
            self.manual_text = None
            self.manual_gate = None
            self.cause = cause
        self._wake.set()

    def sensor_fault(self, dev: str, faulted: bool) -> None:
        if faulted:
            self.faulted.add(dev)
        else:
            self.faulted.discard(dev)
        self._wake.set()

    def _sign_read(self, dev: str, state: SignState) -> None:
        self.sign_state = state
        self._track_warning(state.text)
        self._wake.set()

    def _gate_read(self, dev: str, state: GateState) -> None:
        prev = self.gate_state
        self.gate_state = state
        if self.gate_commanded is None:
            self.gate_commanded = state.relay
        if state.override is not None and state.override != self.override:
            if self.override is not None or state.override:
                self.emit(
                    "override.on" if state.override else "override.off",
                    dev,
                    {"response": self.resp.id},
                )
            self.override = state.override
        if prev is not None and prev.position != state.position:
            self.emit(
                "actuator.state",
                dev,
                {"state": state.position, "cause": self.cause, "confirmed": True},
            )
            if state.position in ("open", "closed"):
                self.gate_moving_since = None
        self._wake.set()

    # --- what the response wants ----------------------------------------------------

    def _warning_texts(self) -> set[str]:
        m = self.resp.messages
        return {m[k] for k in ("warning", "danger") if m.get(k)}

    def _track_warning(self, shown: str) -> None:
        warns = self._warning_texts() | ({self.manual_text} if self.manual_text else set())
        if shown in warns:
            if self.warning_since is None:
                self.warning_since = self._time()
        else:
            self.warning_since = None

    def desired_text(self) -> str:
        if self.manual_text is not None:
            return self.manual_text
        level = self.level
        if level != "clear":
            return self.resp.messages[level]
        if self.faulted and "fault" in self.resp.messages:
            return self.resp.messages["fault"]
        text = self.resp.messages.get("clear", "")
        if not text and self.sign_state is not None and self.sign_state.default_text is not None:
            return self.sign_state.default_text
        return text

    def desired_gate_closed(self) -> bool:
        if self.manual_gate is not None:
            return self.manual_gate
        if level_rank(self.level) >= level_rank(self.resp.close_gate_at):
            return True
        # Never open automatically while a sensor is faulted.
        return bool(self.faulted) and bool(self.gate_commanded)

    # --- acting ---------------------------------------------------------------------

    async def _actuate(
        self,
        device: tuple[SignDevice, BusOwner] | tuple[GateDevice, BusOwner],
        write: Callable[[DeviceIO], Awaitable[bool]],
        detail: dict[str, Any],
    ) -> bool:
        """Write with read-back through the device's bus owner; every attempt is an event."""
        driver, owner = device
        try:
            ok = await owner.transact(driver.id, write)
        except BusError as exc:
            self.emit("actuator.state", driver.id, {**detail, "confirmed": False, "error": str(exc)})
            return False
        self.emit("actuator.state", driver.id, {**detail, "confirmed": ok})
        return ok

    async def _write_sign(self, text: str, cause: str) -> bool:
        assert self.sign is not None
        driver = self.sign[0]
        ok = await self._actuate(
            self.sign, lambda io: driver.show(io, text), {"do": "show", "text": text, "cause": cause}
        )
        if ok:
            self.confirmed_text = text
            self.sign_state = SignState(text, self.sign_state.default_text if self.sign_state else None)
            self._track_warning(text)
        return ok

    async def _write_gate(self, closed: bool, cause: str) -> bool:
        assert self.gate is not None
        driver, owner = self.gate
        detail = {"do": "close" if closed else "open", "cause": cause}
        ok = await self._actuate(self.gate, lambda io: driver.set_closed(io, closed), detail)
        if ok:
            self.gate_commanded = closed
            self.gate_moving_since = self._time()
            owner.poll_soon(driver.id)
        return ok

    def _gate_close_due(self) -> float | None:
        """When the gate may close: the board must have warned for the minimum time."""
        if self.warning_since is None:
            return None
        return self.warning_since + self.resp.gate_min_warning_s

    async def step(self) -> float | None:
        """Bring board and gate to what the response wants; returns the next time to look again."""
        async with self._lock:
            if self.override:
                return None
            now = self._time()
            wake: list[float] = []
            cause = self.cause
            if self.sign is not None and self.sign_state is not None:
                want = self.desired_text()
                if self.sign_state.text != want:
                    # The board lost a message we had confirmed: it was power-cycled.
                    reason = "reassert" if self.confirmed_text == want else cause
                    if not await self._write_sign(want, reason):
                        wake.append(now + RETRY_S)
            if self.gate is not None and self.gate_state is not None:
                closed = self.desired_gate_closed()
                if closed and self.gate_commanded is not True:
                    due = self._gate_close_due()
                    if due is not None and now >= due:
                        if not await self._write_gate(True, cause):
                            wake.append(now + RETRY_S)
                    elif due is not None:
                        wake.append(due)
                elif (
                    not closed
                    and self.gate_commanded is not False
                    and not await self._write_gate(False, cause)
                ):
                    wake.append(now + RETRY_S)
                if self.gate_moving_since is not None:
                    limit = self.gate_moving_since + self.resp.gate_travel_s
                    target = "closed" if self.gate_commanded else "open"
                    if self.gate_state.position == target:
                        self.gate_moving_since = None
                    elif now >= limit:
                        self.emit(
                            "actuator.state",
                            self.gate[0].id,
                            {
                                "state": "fault",
                                "cause": cause,
                                "confirmed": False,
                                "error": f"did not reach {target} within {self.resp.gate_travel_s:g} s",
                            },
                        )
                        self.gate_moving_since = None
                    else:
                        wake.append(limit)
            return min(wake) if wake else None

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_at = await self.step()
            except Exception:  # a bug here must not silence the road: log and go on
                log.exception("actuation step failed", extra={"response": self.resp.id})
                next_at = self._time() + RETRY_S
            timeout = None if next_at is None else max(0.0, next_at - self._time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # --- commands from people ----------------------------------------------------------

    async def command(self, kind: str, args: dict[str, Any], cause: str) -> Outcome:
        if self.override:
            return Outcome("rejected", "override: the manual override switch is on at the site")
        if kind == "sign.show":
            if self.sign is None:
                return Outcome("rejected", "bad_command: this response has no sign")
            msg = args.get("message")
            if not isinstance(msg, str) or not msg:
                return Outcome("rejected", "bad_command: args.message must be a preset id or text")
            text = self.presets.get(msg, msg)
            async with self._lock:
                ok = await self._write_sign(text, cause)
                if ok:
                    self.manual_text = text
            return Outcome("done") if ok else Outcome("failed", "board did not confirm the message")
        if kind == "sign.clear":
            if self.sign is None:
                return Outcome("rejected", "bad_command: this response has no sign")
            if self.level != "clear":
                return Outcome("rejected", f"unsafe: water level is {self.level}; the board must warn")
            async with self._lock:
                self.manual_text = None
                ok = await self._write_sign(self.desired_text(), cause)
            return Outcome("done") if ok else Outcome("failed", "board did not confirm")
        if kind in ("gate.close", "gate.open"):
            if self.gate is None:
                return Outcome("rejected", "bad_command: this response has no gate")
            closing = kind == "gate.close"
            async with self._lock:
                if closing:
                    due = self._gate_close_due()
                    now = self._time()
                    if due is None or now < due:
                        shown = 0.0 if self.warning_since is None else now - self.warning_since
                        return Outcome(
                            "rejected",
                            (
                                f"unsafe: the board has warned for {shown:.0f} s, "
                                f"{self.resp.gate_min_warning_s:g} s needed; send sign.show first"
                            ),
                        )
                else:
                    if level_rank(self.level) >= level_rank(self.resp.close_gate_at):
                        return Outcome("rejected", f"unsafe: water level is {self.level}")
                    if self.faulted and self.level != "clear":
                        return Outcome("rejected", "unsafe: a sensor is faulted during a flood")
                ok = await self._write_gate(closing, cause)
                if ok:
                    self.manual_gate = closing
            return Outcome("done") if ok else Outcome("failed", "relay did not confirm")
        return Outcome("rejected", f"bad_command: {kind} is not an actuator command")

    def snapshot(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "faulted": sorted(self.faulted),
            "override": self.override,
            "sign": None if self.sign_state is None else self.sign_state.text,
            "gate": None if self.gate_state is None else self.gate_state.position,
        }
