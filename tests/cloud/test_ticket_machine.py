"""The ticket machine alone: no database, no clock, just its functions."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cloud.tickets import machine
from cloud.tickets.machine import TicketError
from floodgate import vocab
from tests.cloud.test_tickets import registry

MIN = 60_000


def tr(
    msg_id: str,
    prev: str,
    level: str,
    ts: int,
    ticketed: bool = False,
    ep: str = "e1",
    held_ms: int | None = None,
) -> Any:
    return SimpleNamespace(
        msg_id=msg_id,
        alert_id=ep,
        prev=prev,
        level=level,
        ts=ts,
        ticketed=ticketed,
        boot=1,
        seq=ts,
        held_ms=held_ms,
    )


def ids(rows: list[Any]) -> list[str]:
    return [r.msg_id for r in rows]


def test_an_episode_applies_in_its_own_order_and_holds_after_a_gap() -> None:
    w = machine.in_order([tr("c", "warning", "clear", 3), tr("a", "clear", "warning", 1)])
    assert ids(w.ready) == ["a", "c"], "a clear stored first applies after its warning"
    w = machine.in_order([tr("c", "danger", "clear", 3), tr("a", "clear", "warning", 1, ticketed=True)])
    assert ids(w.ready) == [], "the danger between them is still in flight: the clear waits"
    w = machine.in_order(
        [
            tr("a", "clear", "warning", 1, ticketed=True),
            tr("b", "warning", "danger", 2),
            tr("c", "danger", "clear", 3),
        ]
    )
    assert ids(w.ready) == ["b", "c"]
    w = machine.in_order(
        [
            tr("a", "clear", "warning", 1, ticketed=True),
            tr("b", "warning", "danger", 2),
            tr("c", "danger", "clear", 3, True),
        ]
    )
    assert ids(w.late) == ["b"] and ids(w.ready) == []
    w = machine.in_order([tr("a", "clear", "warning", 1, ticketed=True), tr("a2", "clear", "warning", 1)])
    assert ids(w.copies) == ["a2"] and ids(w.ready) == []


def test_a_transition_held_long_enough_is_released_and_the_chain_goes_on_from_it() -> None:
    rows = [
        tr("a", "clear", "warning", 1, ticketed=True),
        tr("c", "danger", "warning", 3, held_ms=500),  # its danger never came
        tr("d", "warning", "clear", 4, held_ms=900),
    ]
    w = machine.in_order(rows, release_before=499)
    assert ids(w.ready) == [] and ids(w.held) == ["c", "d"], "not yet: both wait"
    w = machine.in_order(rows, release_before=500)
    assert ids(w.ready) == ["c", "d"] and ids(w.released) == ["c"], "the next one follows it in order"
    w = machine.in_order(
        [tr("a", "clear", "warning", 1, ticketed=True), tr("c", "danger", "clear", 3)], 10**9
    )
    assert ids(w.held) == ["c"] and ids(w.ready) == [], "never found held before: held from now"


def test_ready_transitions_of_several_episodes_come_in_time_order() -> None:
    w = machine.in_order([tr("x", "clear", "warning", 5, ep="e2"), tr("a", "clear", "danger", 2, ep="e1")])
    assert ids(w.ready) == ["a", "x"]


def test_deadlines_and_the_ladder(tmp_path: Path) -> None:
    reg = registry(tmp_path)
    acc, han = machine.dues(reg, "danger", 0)
    assert (acc, han) == (15 * MIN, 120 * MIN)
    t = {"state": "dispatched", "dispatched_ms": 0, "accept_due_ms": acc, "handle_due_ms": han}
    assert machine.next_check(t, 0, 0) == acc
    assert machine.passed(t, acc) == (1, "accept", acc)
    assert machine.passed(t, 2 * acc) == (2, "accept", acc)
    assert machine.next_check(t, 1, acc) == 2 * acc, "level 2 of the accept deadline comes first"
    assert machine.next_check(t, 2, 2 * acc) is None, "nothing is above level 2"
    assert machine.is_overdue(t, acc + 1) and not machine.is_overdue(t, acc)
    assert machine.ladder({**t, "state": "handled"}) == []


def test_an_action_from_the_wrong_state_or_unknown_is_refused() -> None:
    machine.check("dispatch", "open")
    with pytest.raises(TicketError) as err:
        machine.check("accept", "open")
    assert err.value.code == "conflict" and "dispatched" in str(err.value)
    with pytest.raises(TicketError) as err:
        machine.check("fly", "open")
    assert err.value.code == "invalid"


def test_the_vocabulary_says_which_actions_need_a_note() -> None:
    for name, a in vocab.ACTIONS.items():
        state = a.from_states[0]
        if a.note:
            with pytest.raises(TicketError, match="note") as err:
                machine.check(name, state, None)
            assert err.value.code == "invalid"
        else:
            machine.check(name, state, None)
        machine.check(name, state, "why")
