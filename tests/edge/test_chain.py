"""The whole chain with real parts: simulated slaves on a socat pty (RTU) or TCP,
the real agent, a real mosquitto. Water rises -> board warns -> gate closes
after the warning time -> alerts on the broker follow the contract."""

from __future__ import annotations

import jsonschema
import pytest

from edge.agent import Agent
from floodgate.wire import json_schemas
from simulators.devices import SimGate, SimSign
from tests.conftest import SiteFactory, running
from tests.helpers import Mosquitto, Recorder, wait_until

WARN = "前方积水 减速慢行"
DANGER = "隧道积水 禁止通行"


@pytest.mark.parametrize("bus", ["rtu", "tcp"])
async def test_rising_water_warns_then_closes_gate(
    bus: str, broker: Mosquitto, sim_site: SiteFactory, node_id: str
) -> None:
    min_warning = 1.0
    sim, site = await sim_site(bus=bus, broker_url=broker.url, gate_min_warning_s=min_warning)
    sign, gate = sim["sign-1"], sim["gate-1"]
    assert isinstance(sign, SimSign) and isinstance(gate, SimGate)
    rec = await Recorder(broker.port, node=node_id, client_id=f"rec-{node_id}").start()
    try:
        async with running(Agent(site)):
            await rec.wait_for(lambda m: m.kind == "birth", what="birth")

            sim.source.manual = 200.0  # above warning (150), below danger (270)
            await wait_until(lambda: sign.text == WARN, 10, "board shows the warning")
            await rec.wait_for(
                lambda m: m.kind == "alert" and m.payload["alert"]["dev"] == "lvl-1",
                what="level warning alert",
            )
            assert gate.state == "open", "a warning alone must not close the gate"

            sim.source.manual = 320.0
            await wait_until(lambda: gate.state == "closed", 15, "gate closed")
            assert sign.text == DANGER
            first_warning = next(t for t, text in sign.shown if text == WARN)
            close_at = next(t for t, closed in gate.relay_writes if closed)
            assert close_at - first_warning >= min_warning

            await rec.wait_for(
                lambda m: (
                    m.kind == "alert"
                    and m.payload["alert"]["level"] == "danger"
                    and m.payload["alert"]["dev"] == "lvl-1"
                ),
                what="danger alert",
            )
            await rec.wait_for(
                lambda m: (
                    m.kind == "event"
                    and m.payload["event"]["dev"] == "gate-1"
                    and m.payload["event"]["detail"].get("state") == "closed"
                ),
                what="gate closed event",
            )

            sim.source.manual = 0.0
            await wait_until(lambda: gate.state == "open", 15, "gate reopened after the water went")
            await rec.wait_for(
                lambda m: (
                    m.kind == "alert"
                    and m.payload["alert"]["dev"] == "lvl-1"
                    and m.payload["alert"]["level"] == "clear"
                ),
                what="clear alert",
            )
            await wait_until(lambda: sign.text == "黄埔区 安全出行", 10, "board back to its default")
            await rec.wait_for(lambda m: m.kind == "telemetry", what="telemetry")

        level_alerts = [a for a in rec.alerts() if a["dev"] == "lvl-1"]
        assert [a["level"] for a in level_alerts] == ["warning", "danger", "clear"]
        assert len({a["id"] for a in level_alerts}) == 1, "one episode id from first rise to clear"
        danger = level_alerts[1]
        assert danger["prev"] == "warning" and danger["threshold"] == 270.0
        assert {"dev": "gate-1", "do": "close"} in danger["actions"]

        schemas = json_schemas()
        for m in rec.messages:
            jsonschema.validate(m.payload, schemas[m.kind])
            if m.kind != "state":
                assert m.payload["node"] == node_id
        causes = [e["detail"]["cause"] for e in rec.events("actuator.state") if "do" in e["detail"]]
        assert all(c.startswith("alert:") for c in causes), causes
    finally:
        await rec.stop()
