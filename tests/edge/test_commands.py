"""Signed commands over the real broker: refused with a reason, or done and read back."""

from __future__ import annotations

import json
from typing import Any

import aiomqtt

from edge.agent import Agent
from floodgate.ids import new_ulid, now_ms
from floodgate.wire import sign_command
from tests.conftest import KEY, SiteFactory, running
from tests.helpers import Mosquitto, Recorder, wait_until


def command(
    node: str,
    type_: str,
    dev: str | None,
    args: dict[str, Any] | None = None,
    *,
    key: str = KEY,
    ttl_ms: int = 60_000,
    sign: bool = True,
    **over: Any,
) -> dict[str, Any]:
    now = now_ms()
    body: dict[str, Any] = {
        "v": 1,
        "cmd_id": new_ulid(),
        "type": type_,
        "args": args or {},
        "issued_by": "user:chen",
        "issued_at": now,
        "expires_at": now + ttl_ms,
    }
    if dev is not None:
        body["dev"] = dev
    body.update(over)
    return sign_command(body, key.encode()) if sign else body


async def send(broker: Mosquitto, node: str, cmd: dict[str, Any] | bytes) -> None:
    payload = cmd if isinstance(cmd, bytes) else json.dumps(cmd).encode()
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.publish(f"floodgate/v1/{node}/cmd", payload, qos=1)


async def result(rec: Recorder, cmd_id: str, after: int = 0) -> dict[str, Any]:
    """The first cmd-result for ``cmd_id`` among the messages received after index ``after``."""

    def found() -> dict[str, Any] | None:
        for m in rec.messages[after:]:
            if m.kind == "cmd-result" and m.payload["cmd_id"] == cmd_id:
                return m.payload
        return None

    payload: dict[str, Any] = await wait_until(found, 10, f"cmd-result for {cmd_id}")
    return payload


async def test_commands_refused_with_reasons_and_done_when_safe(
    broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    sim, site = await sim_site(broker_url=broker.url, gate_min_warning_s=0.5)
    rec = await Recorder(broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    agent = Agent(site)
    try:
        async with running(agent):
            await rec.wait_for(lambda m: m.kind == "birth", what="birth")

            async def check(cmd: dict[str, Any] | bytes, status: str, reason: str, cmd_id: str) -> None:
                n = len(rec.messages)
                await send(broker, node_id, cmd)
                r = await result(rec, cmd_id, after=n)
                assert r["status"] == status and r["reason"].startswith(reason), r

            unsigned = command(node_id, "gate.close", "gate-1", sign=False)
            await check(unsigned, "rejected", "unsigned", unsigned["cmd_id"])
            wrong = command(node_id, "gate.close", "gate-1", key="another-key-entirely-0000")
            await check(wrong, "rejected", "bad_signature", wrong["cmd_id"])
            tampered = {
                **command(node_id, "sign.show", "sign-1", {"message": "x"}),
                "dev": "gate-1",
            }
            await check(tampered, "rejected", "bad_signature", tampered["cmd_id"])
            expired = command(node_id, "sign.show", "sign-1", {"message": "x"}, ttl_ms=-1000)
            await check(expired, "rejected", "expired", expired["cmd_id"])
            await check(b"{nope", "rejected", "bad_json", "unknown")
            bad_type = command(node_id, "gate.explode", "gate-1")
            await check(bad_type, "rejected", "bad_command", bad_type["cmd_id"])

            # Unsafe: closing the gate before the board has warned for the minimum time.
            close = command(node_id, "gate.close", "gate-1")
            await check(close, "rejected", "unsafe", close["cmd_id"])
            assert sim["gate-1"].status()["gate"] == "open"

            show = command(node_id, "sign.show", "sign-1", {"message": "road-closed"})
            await check(show, "done", "", show["cmd_id"])
            assert sim["sign-1"].status()["text"] == "隧道积水 禁止通行"
            replay_of = dict(show)
            await check(replay_of, "rejected", "replayed", show["cmd_id"])

            ctl = agent.responses()[0]
            await wait_until(lambda: ctl.warning_since_ms is not None, 5, "warning tracked")
            await wait_until(
                lambda: agent.clock.now_ms() - (ctl.warning_since_ms or 0) > 600, 5, "minimum warning time"
            )
            close2 = command(node_id, "gate.close", "gate-1")
            await check(close2, "done", "", close2["cmd_id"])
            await wait_until(lambda: sim["gate-1"].status()["gate"] == "closed", 10, "gate closed")

            # Unsafe: opening the gate during a flood.
            sim.source.manual = 400.0
            await wait_until(lambda: ctl.level == "danger", 10, "danger")
            opened = command(node_id, "gate.open", "gate-1")
            await check(opened, "rejected", "unsafe: water level is danger", opened["cmd_id"])
            # Forcing it open needs a reason and an office role that may force.
            no_reason = command(node_id, "gate.open", "gate-1", {"force": True, "role": "admin"})
            await check(
                no_reason, "rejected", "bad_command: args.force needs args.reason", no_reason["cmd_id"]
            )
            weak = command(node_id, "gate.open", "gate-1", {"force": True, "role": "operator", "reason": "x"})
            await check(weak, "rejected", "forbidden: role 'operator'", weak["cmd_id"])
            assert sim["gate-1"].status()["gate"] == "closed"
            clear = command(node_id, "sign.clear", "sign-1")
            await check(clear, "rejected", "unsafe", clear["cmd_id"])

            th = command(
                node_id,
                "thresholds.set",
                "lvl-1",
                {"warning": {"on": 100, "clear": 80}, "danger": {"on": 500, "clear": 450}},
            )
            await check(th, "done", "", th["cmd_id"])
            bad_th = command(
                node_id,
                "thresholds.set",
                "lvl-1",
                {"warning": {"on": 100, "clear": 120}, "danger": {"on": 500, "clear": 450}},
            )
            await check(bad_th, "rejected", "bad_command", bad_th["cmd_id"])
            await rec.wait_for(
                lambda m: m.kind == "event" and m.payload["event"]["type"] == "config.applied",
                what="config.applied",
            )
            births = len(rec.of("birth"))
            reb = command(node_id, "rebirth", None)
            await check(reb, "done", "", reb["cmd_id"])
            await wait_until(lambda: len(rec.of("birth")) > births, 10, "a new birth")

        # A replay after the agent restarts is still refused: seen ids are on disk.
        births = len(rec.of("birth"))
        async with running(Agent(site)):
            await wait_until(lambda: len(rec.of("birth")) > births, 10, "birth after restart")
            n = len(rec.messages)
            await send(broker, node_id, show)
            r = await result(rec, show["cmd_id"], after=n)
            assert r["reason"].startswith("replayed")
    finally:
        await rec.stop()


async def test_an_open_against_the_policy_needs_a_force_and_is_recorded_with_its_cause(
    broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    sim, site = await sim_site(broker_url=broker.url, gate_min_warning_s=0.3)
    rec = await Recorder(broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    agent = Agent(site)
    try:
        async with running(agent):
            await rec.wait_for(lambda m: m.kind == "birth", what="birth")
            ctl = agent.responses()[0]
            sim.source.manual = 400.0
            await wait_until(lambda: sim["gate-1"].status()["gate"] == "closed", 15, "gate closed")
            # Danger -> warning: the level sensor reads 200 mm and the contact is still wet.
            sim.source.manual = 200.0
            await wait_until(lambda: ctl.level == "warning", 10, "warning")
            d = ctl.decision()
            assert (d.gate, d.move_gate) == ("closed", False), d
            assert "imm-1 reads warning" in d.why and "lvl-1 reads warning" in d.why

            async def answer(cmd: dict[str, Any]) -> dict[str, Any]:
                n = len(rec.messages)
                await send(broker, node_id, cmd)
                return await result(rec, cmd["cmd_id"], after=n)

            r = await answer(command(node_id, "gate.open", "gate-1"))
            assert r["status"] == "rejected" and r["reason"].startswith("unsafe: water level is warning")
            assert sim["gate-1"].status()["gate"] == "closed"

            why = "tanker blocking the exit; police on site"
            forced = command(
                node_id, "gate.open", "gate-1", {"force": True, "role": "dispatcher", "reason": why}
            )
            r = await answer(forced)
            assert r["status"] == "done", r
            await wait_until(lambda: sim["gate-1"].status()["gate"] == "open", 10, "gate open")
            cause = f"cmd:{forced['cmd_id']} by user:chen"

            def gate_events() -> list[dict[str, Any]]:
                return [e["detail"] for e in rec.events("actuator.state") if e["dev"] == "gate-1"]

            await wait_until(lambda: any(e.get("state") == "open" for e in gate_events()), 10, "open event")
        events = gate_events()
        [do_open] = [e for e in events if e.get("do") == "open"]
        assert do_open["cause"] == cause and do_open["forced"] is True and do_open["reason"] == why
        assert do_open["role"] == "dispatcher" and do_open["against"].startswith("water level is warning")
        # The gate's own moves (moving, closed, open: as polls happen to see them) name the
        # write that moved it: the danger alert's close, then the command, never a stale one.
        [do_close] = [e for e in events if e.get("do") == "close"]
        assert do_close["cause"].startswith("alert:") and do_close["cause"].endswith("danger")
        at = events.index(do_open)
        before = [e for e in events[:at] if "state" in e]
        after = [e for e in events[at:] if "state" in e]
        assert before[-1]["state"] == "closed" and after[-1]["state"] == "open", events
        assert {e["cause"] for e in before} == {do_close["cause"]}, before
        assert {e["cause"] for e in after} == {cause}, after
    finally:
        await rec.stop()
