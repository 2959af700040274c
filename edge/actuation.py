"""Local actuation: the board warns and the gate stops traffic, with no cloud involved.

One :class:`ResponseController` per configured response (sensors -> board,
gate). It keeps what the response's sensors, board and gate say, asks the
policy (:mod:`edge.rules.gate`) what to do, and does it: targets are absolute
(a message, closed or open), written, then read back; a board that forgot its
message (power cut) is written again; the board is read once more right
before the gate closes. Time comes from an injected clock, so tests drive it.

Every write is an ``actuator.state`` event naming its cause: the alert or
command that set the target (``alert:…``, ``cmd:… by …``), ``reassert`` for a
board written again after it lost its message. The gate's position events
(moving, closed, open) name the cause of the write that moved it.

Between the board's warning and the gate's close the road is still open and
about to close: the controller says so before it happens, in an
``actuator.state`` event of the gate with ``closing: pending`` and the time it
will close (``closes_at``, once the board's warning is confirmed), and
``closing: called_off`` when it no longer will (the water fell, a person
opened it, the override key). The office shows it from that, not from a guess.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from edge.bus.owner import BusOwner, DeviceIO
from edge.config.site import Response
from edge.devices.drivers import GateDevice, GateState, SignDevice, SignState
from edge.rules.gate import (
    Decision,
    Force,
    SensorState,
    Situation,
    decide,
    judge,
    response_level,
    settled_since,
    warning_texts,
)
from floodgate.clock import Clock, SystemClock, sleep_until_or
from floodgate.errors import BusError
from floodgate.wire import Level

log = logging.getLogger("floodgate.edge.actuation")
EmitEvent = Callable[[str, str | None, dict[str, Any]], None]
RETRY_MS = 1000


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
        clock: Clock | None = None,
    ) -> None:
        self.resp = resp
        self.sign = sign
        self.gate = gate
        self.emit = emit
        self.presets = presets or {}
        self.clock = clock or SystemClock()
        self.sensors: dict[str, SensorState] = {s: SensorState() for s in resp.sensors}
        self.settled_since_ms: int | None = None
        self.override: bool | None = None
        self.cause = "startup"  # what last changed the response's level: the trigger of automatic moves
        self.gate_cause: str | None = None  # the cause of the last gate write
        self.manual_text: str | None = None
        self.manual_gate: bool | None = None
        self.sign_state: SignState | None = None
        self.gate_state: GateState | None = None
        self.warning_since_ms: int | None = None
        self.gate_moving_since_ms: int | None = None
        self.gate_commanded: bool | None = None
        self.confirmed_text: str | None = None
        self.closing_told = False  # a close by the policy is announced, not yet done or called off
        self.closing_at: int | None = None  # when it closes, as announced (None: the board does not warn yet)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        if sign is not None:
            sign[0].listener = self._sign_read
        if gate is not None:
            gate[0].listener = self._gate_read

    # --- inputs ------------------------------------------------------------------

    @property
    def level(self) -> Level:
        return response_level(self.sensors)

    @property
    def faulted(self) -> set[str]:
        return {d for d, s in self.sensors.items() if s.fault is not None}

    def _sensor(self, dev: str, **change: Any) -> None:
        s = self.sensors[dev]
        self.sensors[dev] = SensorState(
            level=change.get("level", s.level),
            wet=change.get("wet", s.wet),
            fault=change.get("fault", s.fault),
            known=True,
            forecast=change.get("forecast", s.forecast),
        )
        self.settled_since_ms = settled_since(self.settled_since_ms, self.sensors, self.clock.now_ms())
        self._wake.set()

    def sensor_level(self, dev: str, level: Level, cause: str) -> None:
        before = self.level
        self._sensor(dev, level=level)
        if self.level != before:
            self.manual_text = None
            self.manual_gate = None
            self.cause = cause

    def sensor_forecast(self, dev: str, expected: bool, cause: str) -> None:
        """A sensor's rise-rate forecast expects water (or no longer): the board's pre-warning only."""
        if self.sensors[dev].forecast == expected:
            return
        before = any(s.forecast for s in self.sensors.values())
        self._sensor(dev, forecast=expected)
        if any(s.forecast for s in self.sensors.values()) != before and self.level == "clear":
            self.cause = cause  # what the board shows changes because of it (nothing else does)

    def sensor_value(self, dev: str, metric: str, value: float) -> None:
        """A good reading: an immersion contact's ``wet``, or a level sensor's depth."""
        if metric == "wet":
            wet = value > 0
        else:
            reopen = self.resp.gate_reopen_below_mm
            wet = reopen is not None and value >= reopen
        if wet != self.sensors[dev].wet or not self.sensors[dev].known:
            self._sensor(dev, wet=wet)

    def sensor_fault(self, dev: str, faulted: bool, reason: str = "fault") -> None:
        self._sensor(dev, fault=reason if faulted else None)

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
            detail = {"state": state.position, "cause": self._position_cause(state), "confirmed": True}
            self.emit("actuator.state", dev, {**detail, **self._closing_detail()})
            if state.position in ("open", "closed"):
                self.gate_moving_since_ms = None
        self._wake.set()

    def _position_cause(self, state: GateState) -> str:
        """Why the gate moved: the write that moved it, else the key switch, else nobody knows."""
        target = "closed" if self.gate_commanded else "open"
        if self.gate_cause is not None and state.position in (target, "moving"):
            return self.gate_cause
        if state.override:
            return "override: moved by hand"
        return f"unexpected: reads {state.position} while the relay says {target}"

    # --- what the response wants ----------------------------------------------------

    def _track_warning(self, shown: str) -> None:
        if shown in warning_texts(self.resp, self.manual_text):
            if self.warning_since_ms is None:
                self.warning_since_ms = self.clock.now_ms()
        else:
            self.warning_since_ms = None

    def situation(self) -> Situation:
        return Situation(
            sensors=dict(self.sensors),
            now_ms=self.clock.now_ms(),
            override=bool(self.override),
            gate_closed=None if self.gate_state is None else self.gate_commanded,
            warning_since_ms=self.warning_since_ms,
            settled_since_ms=self.settled_since_ms,
            manual_text=self.manual_text,
            manual_gate=self.manual_gate,
            board_default=None if self.sign_state is None else self.sign_state.default_text,
        )

    def decision(self) -> Decision:
        return decide(self.situation(), self.resp)

    def desired_text(self) -> str:
        return self.decision().board or ""

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

    async def _write_gate(self, closed: bool, cause: str, **extra: Any) -> bool:
        assert self.gate is not None
        driver, owner = self.gate
        detail = {"do": "close" if closed else "open", "cause": cause}
        detail.update((k, v) for k, v in extra.items() if v != "")
        ok = await self._actuate(self.gate, lambda io: driver.set_closed(io, closed), detail)
        if ok:
            self.gate_cause = cause  # what the gate's moves will name from now on
            self.gate_commanded = closed
            self.gate_moving_since_ms = self.clock.now_ms()
            owner.poll_soon(driver.id)
        return ok

    async def _reread_sign(self) -> None:
        """Read the board back right before the gate closes: a power cut since the last poll counts.

        A board that does not answer cannot confirm its warning: the minimum
        warning time starts again once it does.
        """
        if self.sign is None:
            return
        driver, owner = self.sign
        try:
            await owner.transact(driver.id, driver.poll)
        except BusError:
            self.warning_since_ms = None

    async def step(self) -> int | None:
        """Bring board and gate to what the policy wants; returns when to look again (ms)."""
        async with self._lock:
            if self.override:
                self._tell_closing(self.decision(), self.cause)  # nothing closes under the key
                return None
            now = self.clock.now_ms()
            wake: list[int] = []
            if not await self._bring_board(self.decision()):
                wake.append(now + RETRY_MS)
            d = self.decision()
            if self.gate is not None and self.gate_state is not None and d.gate is not None:
                if not await self._bring_gate(d):
                    wake.append(now + RETRY_MS)
                if d.wake_ms is not None:
                    wake.append(d.wake_ms)
                self._check_travel(now, wake)
            self._tell_closing(self.decision(), self.cause)
            return min(wake) if wake else None

    async def _bring_board(self, d: Decision) -> bool:
        """Write the board when it shows something else; False when that failed."""
        if self.sign is None or self.sign_state is None or d.board is None:
            return True
        if self.sign_state.text == d.board:
            return True
        # The board lost a message we had confirmed: it was power-cycled.
        reason = "reassert" if self.confirmed_text == d.board else self.cause
        return await self._write_sign(d.board, reason)

    async def _bring_gate(self, d: Decision) -> bool:
        """Move the gate when the policy says so; False when that failed or must wait."""
        closed = d.gate == "closed"
        if not d.move_gate or self.gate_commanded is closed:
            return True
        if closed:
            await self._reread_sign()
            d = self.decision()
            if not (d.move_gate and d.gate == "closed"):
                return False
        return await self._write_gate(closed, self.cause, rule=d.rule, why=d.why)

    def _closing_detail(self) -> dict[str, Any]:
        """What a gate event says of a close the policy has announced (nothing when none is)."""
        if not self.closing_told or self.gate_commanded:
            return {}
        detail: dict[str, Any] = {"closing": "pending", "min_warning_s": self.resp.gate_min_warning_s}
        if self.closing_at is not None:
            detail["closes_at"] = self.closing_at
        return detail

    def _tell_closing(self, d: Decision, cause: str) -> None:
        """Announce a close the policy will make once the board has warned long enough, or call it off.

        One event when a close becomes due (``closing: pending``; ``closes_at`` the
        time the board's warning will have lasted ``gate_min_warning_s``, absent
        while the board does not warn yet), again when that time moves, and one
        when it no longer will (``closing: called_off``). A close that is done says
        so itself (its ``do: close`` event).
        """
        if self.gate is None or self.gate_state is None:
            return
        pending = d.gate == "closed" and self.gate_commanded is False
        at = None
        if pending and self.warning_since_ms is not None:
            at = self.warning_since_ms + round(self.resp.gate_min_warning_s * 1000)
        told, was_at = self.closing_told, self.closing_at
        self.closing_told, self.closing_at = pending, at
        why = {"why": d.why} if d.why else {}
        base = {"state": self.gate_state.position, "cause": cause, "rule": d.rule, **why}
        if pending and (not told or at != was_at):
            self.emit("actuator.state", self.gate[0].id, {**base, **self._closing_detail()})
        elif told and not pending and not self.gate_commanded:
            self.emit("actuator.state", self.gate[0].id, {**base, "closing": "called_off"})

    def _check_travel(self, now: int, wake: list[int]) -> None:
        assert self.gate is not None
        assert self.gate_state is not None
        if self.gate_moving_since_ms is None:
            return
        limit = self.gate_moving_since_ms + round(self.resp.gate_travel_s * 1000)
        target = "closed" if self.gate_commanded else "open"
        if self.gate_state.position == target:
            self.gate_moving_since_ms = None
        elif now >= limit:
            self.emit(
                "actuator.state",
                self.gate[0].id,
                {
                    "state": "fault",
                    "cause": self.gate_cause or self.cause,
                    "confirmed": False,
                    "error": f"did not reach {target} within {self.resp.gate_travel_s:g} s",
                },
            )
            self.gate_moving_since_ms = None
        else:
            wake.append(limit)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                next_at = await self.step()
            except Exception:  # a bug here must not silence the road: log and go on
                log.exception("actuation step failed", extra={"response": self.resp.id})
                next_at = self.clock.now_ms() + RETRY_MS
            if next_at is None:
                await self._wake.wait()
            else:
                await sleep_until_or(self.clock, next_at, self._wake)

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
                    self._track_warning(text)
            return Outcome("done") if ok else Outcome("failed", "board did not confirm the message")
        if kind == "sign.clear":
            if self.sign is None:
                return Outcome("rejected", "bad_command: this response has no sign")
            async with self._lock:
                verdict = judge(kind, self.situation(), self.resp)
                if not verdict.ok:
                    return Outcome("rejected", verdict.reason)
                self.manual_text = None
                ok = await self._write_sign(self.desired_text(), cause)
            return Outcome("done") if ok else Outcome("failed", "board did not confirm")
        if kind in ("gate.close", "gate.open"):
            if self.gate is None:
                return Outcome("rejected", "bad_command: this response has no gate")
            force = _force(args, cause)
            if isinstance(force, Outcome):
                return force
            closing = kind == "gate.close"
            async with self._lock:
                if closing:
                    await self._reread_sign()  # judge the board as it is now, not as last polled
                verdict = judge(kind, self.situation(), self.resp, force)
                if not verdict.ok:
                    return Outcome("rejected", verdict.reason)
                extra: dict[str, Any] = {}
                if verdict.forced and force is not None:
                    extra = {
                        "forced": True,
                        "reason": force.reason,
                        "role": force.role,
                        "against": verdict.reason,
                    }
                ok = await self._write_gate(closing, cause, **extra)
                if ok:
                    self.manual_gate = closing
                    self._tell_closing(self.decision(), cause)  # a person's open calls a coming close off
            return Outcome("done") if ok else Outcome("failed", "relay did not confirm")
        return Outcome("rejected", f"bad_command: {kind} is not an actuator command")

    def snapshot(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "faulted": sorted(self.faulted),
            "override": self.override,
            "sign": None if self.sign_state is None else self.sign_state.text,
            "gate": None if self.gate_state is None else self.gate_state.position,
            # A close the policy has announced: when (ms), or None while the board does not warn yet.
            **({"gate_closes_at": self.closing_at} if self._closing_detail() else {}),
        }


def _force(args: dict[str, Any], cause: str) -> Force | Outcome | None:
    """``args.force`` with ``args.reason`` and ``args.role`` (stamped by the office), or None."""
    if not args.get("force"):
        return None
    reason, role = args.get("reason"), args.get("role")
    if not isinstance(reason, str) or not reason.strip():
        return Outcome("rejected", "bad_command: args.force needs args.reason, why the policy is overruled")
    if not isinstance(role, str):
        return Outcome("rejected", "bad_command: args.force needs args.role, the issuer's role")
    return Force(by=cause, role=role, reason=reason)
