"""The gate and board policy of a response: one pure function, used by everything that decides.

The agent's actuation (:mod:`edge.actuation`), the alert's ``actions``, remote
commands, ``floodgate edge test-gate`` and ``check-config --explain`` all ask
:func:`decide` (what board and gate should do now) or :func:`judge` (may a
person's command go ahead), so they cannot disagree. Nothing here reads a
clock or a bus: the caller passes a :class:`Situation` with the time in it.

The rule, in order of precedence:

1. **Override.** While the manual key switch is on, nothing is driven and
   every command for the board or gate is refused.
2. **Board.** A person's message, else the message of the response's level
   (the highest of its sensors), else the ``fault`` message while a sensor is
   faulted, else the ``forecast`` message (where set) while a sensor's
   rise-rate forecast expects water, else the ``clear`` message (or the
   board's own default). A forecast moves nothing else: it never closes,
   opens or holds the gate. While
   the gate is closed the board keeps saying so: it shows the message of
   ``close_gate_at`` until the gate is open again.
3. **Closing.** At ``close_gate_at`` or above, the gate closes once the board
   has shown a warning, confirmed by read-back, for ``gate_min_warning_s``.
   No command and no force skips that.
4. **Reopening.** A closed gate opens by itself only when every sensor of the
   response has been read, is clear, dry (an immersion contact not wet, a
   level sensor's depth below ``gate_reopen_below_mm`` where set) and not
   faulted, and has stayed so for ``gate_reopen_hold_s``. Anything else keeps
   it closed: a sensor that is faulted or still detects water never lets it
   open automatically.
5. **People.** ``gate.close`` needs the board to have warned for the minimum
   time; ``gate.open`` is refused while anything of rule 4 speaks against it
   (a person who opens a clear, dry road does not wait for the hold). An
   ``open`` against the policy needs an explicit force, with a reason, by a
   role in :data:`FORCE_ROLES`; it is recorded as such in the event. A
   person's target holds until the response's level changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edge.config.site import Response
from floodgate.wire import Level, level_rank

GateTarget = Literal["open", "closed"]
# Who may open a gate against the policy: office roles (stamped into a signed
# command by the collector) and a person at the box running ``test-gate``.
FORCE_ROLES = frozenset({"admin", "dispatcher", "installer"})


@dataclass(frozen=True)
class SensorState:
    """What one sensor of the response says now."""

    level: Level = "clear"
    wet: bool = False  # an immersion contact that is wet, or a depth at or above the reopen level
    fault: str | None = None  # the reason while faulted
    known: bool = False  # read at least once since the agent started
    forecast: bool = False  # its rise-rate forecast expects water (never drives the gate)


@dataclass(frozen=True)
class Situation:
    """Everything the policy needs, at one moment."""

    sensors: Mapping[str, SensorState]
    now_ms: int
    override: bool = False
    gate_closed: bool | None = None  # the relay as last commanded or read; None: not known yet
    warning_since_ms: int | None = None  # the board has shown a warning (read back) since
    settled_since_ms: int | None = None  # every sensor clear, dry and healthy since
    manual_text: str | None = None  # a person's board message, held until the level changes
    manual_gate: bool | None = None  # a person's gate target (True: closed), held likewise
    board_default: str | None = None  # the board's own default text, as read from it


@dataclass(frozen=True)
class Decision:
    board: str | None  # the text the board should show; None: do not drive it
    gate: GateTarget | None  # where the gate should be; None: do not drive it
    move_gate: bool  # the gate may be moved to ``gate`` now
    rule: str  # the rule that applies, in words (events, --explain)
    why: str = ""  # the circumstances that make it apply
    wake_ms: int | None = None  # when the decision changes by itself if nothing else does


@dataclass(frozen=True)
class Force:
    """A person's explicit decision to open against the policy."""

    by: str
    role: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""  # why not, or what a force overrode
    forced: bool = False


def response_level(sensors: Mapping[str, SensorState]) -> Level:
    """The response takes the highest level of its sensors."""
    level: Level = "clear"
    for s in sensors.values():
        if level_rank(s.level) > level_rank(level):
            level = s.level
    return level


def blockers(sensors: Mapping[str, SensorState]) -> list[str]:
    """What speaks against opening the gate, one phrase per sensor; empty when nothing does."""
    level = response_level(sensors)
    out = [f"water level is {level}"] if level != "clear" else []
    for dev, s in sorted(sensors.items()):
        if s.fault is not None:
            out.append(f"{dev} is faulted ({s.fault})")
        elif not s.known:
            out.append(f"{dev} has not been read yet")
        elif s.level != "clear":
            out.append(f"{dev} reads {s.level}")
        elif s.wet:
            out.append(f"{dev} still detects water")
    return out


def settled_since(prev_ms: int | None, sensors: Mapping[str, SensorState], now_ms: int) -> int | None:
    """Since when every sensor has been clear, dry and healthy (None while one is not)."""
    if blockers(sensors):
        return None
    return now_ms if prev_ms is None else prev_ms


def warning_texts(resp: Response, manual_text: str | None = None) -> set[str]:
    """Texts that count as the board warning: the warning and danger messages, or a person's."""
    texts = {resp.messages[k] for k in ("warning", "danger") if resp.messages.get(k)}
    return texts | ({manual_text} if manual_text else set())


def _board(sit: Situation, resp: Response, level: Level, gate_closed: bool) -> str | None:
    if resp.sign is None or sit.override:
        return None
    if sit.manual_text is not None:
        return sit.manual_text
    closed_text = resp.messages.get(resp.close_gate_at)
    if gate_closed and closed_text and level_rank(level) < level_rank(resp.close_gate_at):
        return closed_text  # the road is still closed: the board says so
    if level != "clear":
        return resp.messages[level]
    if any(s.fault for s in sit.sensors.values()) and "fault" in resp.messages:
        return resp.messages["fault"]
    if any(s.forecast for s in sit.sensors.values()) and resp.messages.get("forecast"):
        return resp.messages["forecast"]  # a pre-warning: water is expected, none is measured yet
    text = resp.messages.get("clear", "")
    if not text and sit.board_default is not None:
        return sit.board_default
    return text


def _closing(sit: Situation, resp: Response, why: str) -> Decision:
    """The gate should be closed: close it once the board has warned for the minimum time."""
    board = _board(sit, resp, response_level(sit.sensors), True)
    if sit.gate_closed:
        return Decision(board, "closed", False, "stays closed", why)
    rule = f"closes once the board has shown a warning for {resp.gate_min_warning_s:g} s"
    if sit.warning_since_ms is None:
        return Decision(board, "closed", False, rule, f"{why}; the board does not warn yet")
    due = sit.warning_since_ms + round(resp.gate_min_warning_s * 1000)
    if sit.now_ms >= due:
        return Decision(board, "closed", True, rule, why)
    return Decision(board, "closed", False, rule, why, wake_ms=due)


KEPT_CLOSED = "stays closed: never opened automatically while a sensor is faulted or detects water"


def decide(sit: Situation, resp: Response) -> Decision:
    """What the board and the gate of ``resp`` should do in ``sit``."""
    if sit.override:
        return Decision(None, None, False, "override: the manual key switch is on; nothing is driven")
    level = response_level(sit.sensors)
    if resp.gate is None or sit.gate_closed is None:
        board = _board(sit, resp, level, bool(sit.gate_closed))
        return Decision(board, None, False, "no gate" if resp.gate is None else "gate not read yet")
    if sit.manual_gate is True:
        return _closing(sit, resp, "closed by a person")
    if sit.manual_gate is False:
        return Decision(_board(sit, resp, level, False), "open", sit.gate_closed, "opened by a person")
    if level_rank(level) >= level_rank(resp.close_gate_at):
        return _closing(sit, resp, f"water level is {level}")
    if not sit.gate_closed:
        return Decision(_board(sit, resp, level, False), "open", False, "stays open")
    board = _board(sit, resp, level, True)
    against = blockers(sit.sensors)
    if against:
        return Decision(board, "closed", False, KEPT_CLOSED, "; ".join(against))
    hold_s = resp.gate_reopen_hold_s
    rule = f"opens once every sensor has been clear and dry for {hold_s:g} s"
    since = sit.now_ms if sit.settled_since_ms is None else sit.settled_since_ms
    due = since + round(hold_s * 1000)
    if sit.now_ms >= due:
        return Decision(_board(sit, resp, level, False), "open", True, rule)
    return Decision(board, "closed", False, rule, "not yet", wake_ms=due)


def too_early(sit: Situation, resp: Response) -> str:
    """Why a person may not close the gate yet, in an operator's words ("" when they may).

    Drivers must have been warned by the board for ``gate_min_warning_s`` before
    the barrier comes down: the words say what to do (put a warning on the
    board, or wait), and how long. The ``unsafe:`` code is what machines read.
    """
    min_s = resp.gate_min_warning_s
    since = sit.warning_since_ms
    if since is None:
        if min_s <= 0:
            return "unsafe: the board shows no warning; put a warning on the board first, then close the gate"
        return (
            f"unsafe: the board shows no warning; drivers must be warned for {min_s:g} s before the gate"
            f" closes: put a warning on the board first, then close the gate {min_s:g} s later"
        )
    shown_ms = sit.now_ms - since
    need_ms = round(min_s * 1000)
    if shown_ms >= need_ms:
        return ""
    left_s = math.ceil((need_ms - shown_ms) / 1000)
    return (
        f"unsafe: the board has warned drivers for {shown_ms // 1000} s of the {min_s:g} s needed before"
        f" the gate closes: close the gate again in {left_s} s"
    )


def judge(kind: str, sit: Situation, resp: Response, force: Force | None = None) -> Verdict:
    """May a person's ``gate.close``, ``gate.open`` or ``sign.clear`` go ahead now?"""
    if sit.override:
        return Verdict(False, "override: the manual override switch is on at the site")
    if kind == "gate.close":
        reason = too_early(sit, resp)
        return Verdict(False, reason) if reason else Verdict(True)
    if kind == "gate.open":
        against = blockers(sit.sensors)
        if not against:
            return Verdict(True)
        why = "; ".join(against)
        if force is None:
            return Verdict(False, f"unsafe: {why}; opening anyway needs a force with a reason")
        if force.role not in FORCE_ROLES:
            return Verdict(False, f"forbidden: role {force.role!r} may not force a gate open ({why})")
        if not force.reason.strip():
            return Verdict(False, f"bad_command: a forced open needs a reason ({why})")
        return Verdict(True, why, forced=True)
    if kind == "sign.clear":
        level = response_level(sit.sensors)
        if level != "clear":
            return Verdict(False, f"unsafe: water level is {level}; the board must warn")
        if sit.gate_closed:
            return Verdict(False, "unsafe: the gate is closed; the board must say so")
        return Verdict(True)
    return Verdict(True)
