"""``floodgate sim fleet``: virtual nodes against a real mosquitto and a real collector (SQLite)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
from sqlalchemy import select

from cloud.db.schema import alert_transitions, alerts, messages, nodes
from cloud.db.store import Store
from simulators import city as citymap
from simulators.city import CitySite, StormCell
from simulators.cli import main as sim_main
from simulators.vfleet import Fleet, FleetOptions, _Msg
from tests.cloud.test_collector import collecting
from tests.helpers import Mosquitto, Recorder, wait_until

LAT0, LON0 = 23.13, 113.30
SPEED = 100.0  # storm seconds per real second
STORM_KMH = 72.0  # 2 km per real second at SPEED


def grid() -> list[CitySite]:
    """5 rows x 10 columns 2 km apart; rows 0 and +-2 km under the storm's track, +-4.5 km beside it."""
    out = []
    for r, dy in enumerate((-4.5, -2.0, 0.0, 2.0, 4.5)):
        for c in range(10):
            lat = LAT0 + dy / citymap.KM_PER_DEG_LAT
            lon = LON0 + 2.0 * c / citymap.km_per_deg_lon(LAT0)
            n = r * 10 + c + 1
            out.append(CitySite(f"t-{n:02d}", f"测试{n}号", f"Test {n}", "tianhe", "tianhe-1", lat, lon))
    return out


def eastward_storm() -> StormCell:
    """A cell 8 km west of the first column, moving east along row 0; radius 5 km, 400 mm at its centre."""
    lon = LON0 - 8.0 / citymap.km_per_deg_lon(LAT0)
    return StormCell(0.0, LAT0, lon, 90.0, STORM_KMH, 5.0, peak_mm=400.0, duration_s=10_000.0, ramp_s=0.0)


def first_warning_s(site: CitySite, cell: StormCell) -> float | None:
    """Real seconds after the start at which the model's water first reaches the warning threshold."""
    for step in range(0, 3400):
        t = step * 1.0
        if citymap.depth_mm(site, [cell], t) >= citymap.WARNING_ON:
            return t / SPEED
    return None


async def rows(db_url: str, q: object) -> list[tuple[object, ...]]:
    s = Store(db_url)
    try:
        async with s.read() as conn:
            return [tuple(r) for r in await conn.execute(q)]  # type: ignore[call-overload]
    finally:
        await s.close()


@contextlib.asynccontextmanager
async def running_fleet(fleet: Fleet) -> AsyncIterator[Fleet]:
    await fleet.start()
    try:
        yield fleet
    finally:
        await fleet.stop()


async def test_a_storm_crossing_a_small_fleet(broker: Mosquitto, tmp_path: Path) -> None:
    """Births, alerts in the order the storm reaches the sites, a flapping node's Will, and every
    message the fleet recorded as confirmed stored by the collector."""
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    sites = grid()
    cell = eastward_storm()
    opts = FleetOptions(
        urls=(broker.url,),
        nodes=len(sites),
        seed=3,
        speed=SPEED,
        telemetry_s=0.25,
        heartbeat_s=2.0,
        flapping=0.1,
        silent=0.04,
        flap_up_s=(2.0, 3.0),
        flap_down_s=(2.5, 3.0),
        connect_rate=1000.0,
        prefix="t",
    )
    fleet = Fleet(opts, sites=sites, cells=[cell])
    flapping = [n.node for n in fleet.nodes if n.role == "flapping"]
    silent = [n.node for n in fleet.nodes if n.role == "silent"]
    assert len(flapping) == 5 and len(silent) == 2
    recorder = await Recorder(broker.port, client_id="rec-fleet").start()
    try:
        async with collecting(db_url, broker, "col-fleet"), running_fleet(fleet):

            async def born() -> bool:
                got = await rows(db_url, select(nodes.c.node).where(nodes.c.birth_ms.is_not(None)))
                return len(got) == len(sites)

            await wait_until(born, 20, "a birth of every node stored")

            async def a_flapper_offline() -> bool:
                q = select(nodes.c.node).where(nodes.c.online.is_(False), nodes.c.node.in_(flapping))
                return bool(await rows(db_url, q))

            await wait_until(a_flapper_offline, 20, "a flapping node marked offline by its Will", every=0.05)
            expected = {
                s.node: w
                for s in sites
                if s.node not in silent and (w := first_warning_s(s, cell)) is not None
            }
            assert 20 <= len(expected) <= 30  # rows 0 and +-2 km; not the rows 4.5 km off the track

            async def all_cleared() -> bool:
                got = await rows(db_url, select(alerts.c.node, alerts.c.level))
                return {n for n, _ in got} == set(expected) and all(level == "clear" for _, level in got)

            await wait_until(all_cleared, 60, "the storm passing: every site under it alerted and cleared")

            # A loaded collector confirms seconds behind the fleet, which goes on sending: the
            # target is most of what had been sent by now, not a share of a count still growing.
            target = 0.8 * fleet.stats().sent

            def most_confirmed() -> bool:
                return fleet.stats().confirmed >= target

            try:
                await wait_until(
                    most_confirmed, 60, "the collector confirming most of what the fleet had sent"
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {fleet.stats()} (target {target:.0f})") from None
            stats = fleet.stats()
            assert stats.flaps >= 5 and stats.confirmed > 0
            # The Wills: offline states for the flapping nodes only (the steady ones never dropped).
            # Only this fleet's nodes: the session's broker keeps other tests' retained states.
            ours = {s.node for s in sites}
            offline = {
                node
                for m in recorder.of("state")
                if m.payload.get("online") is False and (node := m.topic.split("/")[2]) in ours
            }
            assert set(flapping) <= offline
            assert not offline - set(flapping)

        # In order: a site the storm reaches a second (2 km) later alerted later.
        got = await rows(db_url, select(alerts.c.node, alerts.c.first_ts, alerts.c.max_level))
        first_ts = {str(n): int(ts) for n, ts, _ in got}  # type: ignore[call-overload]
        for a, wa in expected.items():
            for b, wb in expected.items():
                # Not reversed: a loop stalled for a second (a loaded machine) ticks every node
                # once with one stamp, so two sites a second apart may share it.
                if wa + 1.0 < wb:
                    assert first_ts[a] <= first_ts[b], (
                        f"{a} (at {wa:.1f} s) alerted after {b} (at {wb:.1f} s)"
                    )
        assert {str(n) for n, _, lvl in got if lvl == "danger"} == set(expected)  # all of them reach 270 mm
        # Each episode rises from clear and falls back to it, each step from where the last ended.
        # (A loop stalled on a loaded machine may see the water pass both thresholds between two
        # ticks: clear -> danger is a true record of what that node decided.)
        trans = await rows(
            db_url,
            select(alerts.c.node, alert_transitions.c.prev, alert_transitions.c.level)
            .join(alerts, alerts.c.id == alert_transitions.c.alert_id)
            .order_by(alert_transitions.c.ts),
        )
        for node in expected:
            steps = [(p, lvl) for n, p, lvl in trans if n == node]
            assert steps[0][0] == "clear" and steps[0][1] != "clear", (node, steps)
            assert steps[-1][1] == "clear", (node, steps)
            assert all(steps[i][1] == steps[i + 1][0] for i in range(len(steps) - 1)), (node, steps)

        # Every message the fleet recorded as confirmed by the collector is stored.
        ledger = fleet.ledger()
        stored = await rows(db_url, select(messages.c.node, messages.c.boot, messages.c.seq))
        have = {(str(n), int(b), int(s)) for n, b, s in stored}  # type: ignore[call-overload]
        confirmed = 0
        for node, entry in ledger.items():
            for lo, hi in entry["confirmed"]:
                for seq in range(lo, hi + 1):
                    confirmed += 1
                    assert (node, entry["boot"], seq) in have, f"{node} seq {seq} confirmed but not stored"
        assert confirmed == fleet.stats().confirmed > 0
    finally:
        await recorder.stop()


def test_the_city_and_its_storms_come_from_the_seed() -> None:
    a, b, c = citymap.city(300, 1), citymap.city(300, 1), citymap.city(300, 2)
    assert a == b and a != c
    assert len({s.node for s in a}) == 300 and len({s.name_zh for s in a}) == 300
    assert citymap.storms(a, 4, 1) == citymap.storms(b, 4, 1) != citymap.storms(a, 4, 2)
    south, west, north, east = citymap.bounds(a)
    assert 22.6 < south < north < 23.7 and 113.0 < west < east < 113.9
    # Each storm crosses the map: at some time of its life its centre is within the map.
    for cell in citymap.storms(a, 4, 1):
        inside = [
            south <= lat <= north and west <= lon <= east
            for lat, lon in (cell.centre(cell.start_s + cell.duration_s * k / 20) for k in range(21))
        ]
        assert any(inside) and not inside[0] and not inside[-1]
    roles = [
        n.role
        for n in Fleet(FleetOptions(urls=("mqtt://127.0.0.1:1",), nodes=300, seed=1, flapping=0.1)).nodes
    ]
    again = [
        n.role
        for n in Fleet(FleetOptions(urls=("mqtt://127.0.0.1:1",), nodes=300, seed=1, flapping=0.1)).nodes
    ]
    assert roles == again and roles.count("flapping") == 30


def test_the_registry_fits_the_collector(tmp_path: Path) -> None:
    from cloud.registry import load_registry

    sites = citymap.city(200, 5)
    path = tmp_path / "registry.yaml"
    path.write_text(citymap.registry_yaml(sites), encoding="utf-8")
    reg = load_registry(path)
    assert set(reg.sites) == {s.node for s in sites}
    for s in sites:
        assert reg.area_chain(s.node) == [s.street, s.district]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--broker", "http://127.0.0.1:1"], "expected mqtt://host:port"),
        (["--broker", "mqtt://127.0.0.1:99999"], "port is not a number"),
        (["--broker", "mqtt://127.0.0.1:1", "--nodes", "0"], "--nodes must be at least 1"),
        (["--broker", "mqtt://127.0.0.1:1", "--flapping", "1.5"], "--flapping is a fraction"),
        (["--broker", "mqtt://127.0.0.1:1", "--flapping", "0.6", "--silent", "0.6"], "more than every node"),
        (["--broker", "mqtt://127.0.0.1:1", "--telemetry-s", "0"], "--telemetry-s must be more than 0"),
        (["--broker", "mqtt://127.0.0.1:1", "--per-connection", "0"], "--per-connection must be at least 1"),
        (["--broker", "mqtt://127.0.0.1:1", "--sub-qos", "2"], "--sub-qos is 0 or 1"),
        (["--broker", "mqtt://127.0.0.1:1", "--handshakes", "0"], "--handshakes must be at least 1"),
    ],
)
def test_the_cli_refuses_bad_arguments(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sim_main(["fleet", *args]) == 2
    assert says in capsys.readouterr().err


def test_the_cli_refuses_a_bad_range(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        sim_main(["fleet", "--broker", "mqtt://127.0.0.1:1", "--flap-up-s", "60-20"])
    assert exc.value.code == 2
    assert "a range of seconds more than 0, low to high" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sim_main(["fleet", "--nodes", "5"])  # no broker
    assert "--broker" in capsys.readouterr().err


def test_storm_strength_rises_and_falls_at_a_site() -> None:
    cell = eastward_storm()
    site = grid()[20]  # row 0, first column: on the track
    depths = [citymap.depth_mm(site, [cell], t) for t in range(0, 1400, 20)]
    peak = depths.index(max(depths))
    assert 0 < peak < len(depths) - 1 and depths[0] == 0 and depths[-1] == 0
    assert all(depths[i] <= depths[i + 1] for i in range(peak)) and math.isclose(
        max(depths), 400, rel_tol=0.02
    )


async def host_state(port: int, **state: object) -> None:
    """The collector's retained state on the broker, as a collector would publish it."""
    async with aiomqtt.Client("127.0.0.1", port) as c:
        await c.publish("floodgate/v1/_host/state", json.dumps(state).encode(), qos=1, retain=True)


async def test_a_gap_below_a_report_is_sent_again_and_a_report_forgets(own_broker: Mosquitto) -> None:
    """The e2e ack contract with a report made by hand: what it covers is confirmed, a hole below
    it (acknowledged by the broker before a confirmed message was sent, >= 1 s ago) goes again."""
    await host_state(own_broker.port, online=True, boot=1, ts=1, acks=True)
    recorder = await Recorder(own_broker.port, client_id="rec-ack").start()
    opts = FleetOptions(
        urls=(own_broker.url,), nodes=1, telemetry_s=0.2, confirm_timeout_s=30.0, prefix="ack"
    )
    fleet = Fleet(opts, sites=grid()[:1])
    node = fleet.nodes[0]
    try:
        async with running_fleet(fleet):
            await wait_until(lambda: fleet.host_acks is True, 10, "the collector's state seen")
            await wait_until(lambda: len(node.awaiting) >= 8, 10, "eight messages acknowledged by the broker")
            await wait_until(
                lambda: fleet.loop.time() - node.awaiting[5].puback_at >= 1.0,
                10,
                "seq 5 acknowledged 1 s ago",
            )
            report = {
                "v": 1,
                "node": node.node,
                "ts": 1,
                "boots": [{"boot": node.boot, "ranges": [[0, 4], [6, 7]]}],
            }
            async with aiomqtt.Client("127.0.0.1", own_broker.port) as c:
                await c.publish(f"floodgate/v1/{node.node}/ack", json.dumps(report).encode(), qos=1)

                def seq5_twice() -> bool:
                    return sum(1 for m in recorder.of("telemetry") if m.payload["seq"] == 5) == 2

                await wait_until(seq5_twice, 10, "seq 5 sent again")
                assert fleet.resent == 1
                assert not {0, 1, 2, 3, 4, 6, 7} & (set(node.awaiting) | set(node.pending))
                again = [m.raw for m in recorder.of("telemetry") if m.payload["seq"] == 5]
                assert again[0] == again[1]  # the same bytes, the same msg_id
                report["boots"] = [{"boot": node.boot, "ranges": [[0, 7]]}]
                await c.publish(f"floodgate/v1/{node.node}/ack", json.dumps(report).encode(), qos=1)
                await wait_until(
                    lambda: 5 not in node.awaiting and 5 not in node.pending, 10, "seq 5 confirmed"
                )
            ledger = fleet.ledger()[node.node]
            assert ledger["confirmed"][0] == [0, 7]
            assert fleet.resent == 1
    finally:
        await recorder.stop()


async def test_deadlines_resend_and_an_older_collector_means_the_puback(own_broker: Mosquitto) -> None:
    """Unconfirmed past the deadline: sent again, the next deadline twice as long. A collector
    online without ``acks``: the nodes forget at the broker's PUBACK, as before the contract."""
    await host_state(own_broker.port, online=True, boot=1, ts=1, acks=True)
    opts = FleetOptions(
        urls=(own_broker.url,), nodes=1, telemetry_s=0.5, confirm_timeout_s=1.0, prefix="dl", heartbeat_s=600
    )
    fleet = Fleet(opts, sites=grid()[:1])
    node = fleet.nodes[0]
    async with running_fleet(fleet):
        await wait_until(lambda: fleet.resent > 0, 10, "a resend at the deadline")
        await wait_until(
            lambda: any(m.timeout == 2.0 for m in node.awaiting.values()), 10, "a doubled deadline"
        )
        assert node.awaiting  # kept until confirmed
        await host_state(own_broker.port, online=True, boot=2, ts=2)  # an older collector: no acks
        await wait_until(lambda: fleet.host_acks is False, 10, "the older collector's state seen")
        sent = fleet.sent
        await wait_until(lambda: fleet.sent >= sent + 3, 10, "more telemetry")
        await wait_until(lambda: fleet.pubacked >= fleet.sent, 10, "every message acknowledged by the broker")
        assert not node.awaiting  # forgotten at the PUBACK


async def test_nodes_sharing_a_connection_have_one_will(broker: Mosquitto) -> None:
    """``per_connection``: every node's birth goes out, but a dropped connection's Will marks only
    its first node offline (the documented difference)."""
    recorder = await Recorder(broker.port, client_id="rec-mx").start()
    opts = FleetOptions(urls=(broker.url,), nodes=6, per_connection=3, telemetry_s=0.5, prefix="mx")
    sites = [replace(s, node=f"mx-{i}") for i, s in enumerate(grid()[:6])]
    fleet = Fleet(opts, sites=sites)
    assert len(fleet.links) == 2
    try:
        await fleet.start()
        await wait_until(
            lambda: {m.topic.split("/")[2] for m in recorder.of("birth")} == {s.node for s in sites}
        )
        await fleet.stop(goodbye=False)  # both connections dropped without DISCONNECT

        def offline() -> set[str]:
            nodes = [(m.topic.split("/")[2], m.payload.get("online")) for m in recorder.of("state")]
            return {n for n, online in nodes if n.startswith("mx-") and online is False}

        await wait_until(lambda: offline() == {"mx-0", "mx-3"}, 10, "the two Wills")
    finally:
        await fleet.stop()
        await recorder.stop()


async def test_a_node_resends_on_its_deadline_only_when_the_collector_shows_no_progress(
    own_broker: Mosquitto,
) -> None:
    """The fleet keeps the edge's rule: a report that confirms something new holds every deadline
    a timeout on (a slow collector, not a losing one); with no progress for a timeout, resends."""
    await host_state(own_broker.port, online=True, boot=1, ts=1, acks=True)
    opts = FleetOptions(
        urls=(own_broker.url,), nodes=1, telemetry_s=0.1, confirm_timeout_s=1.0, prefix="slow"
    )
    fleet = Fleet(opts, sites=grid()[:1])
    node = fleet.nodes[0]
    async with running_fleet(fleet), aiomqtt.Client("127.0.0.1", own_broker.port) as c:
        await wait_until(lambda: fleet.host_acks is True, 10, "the collector's state seen")
        await wait_until(lambda: node.seq >= 5, 10, "five messages")
        # The collector (by hand) confirms all but the last 25 seqs, over and over: 2.5 s behind.
        confirmed_to = -1
        first_resent: int | None = None
        while fleet.confirmed < 60:
            top = node.seq - 25
            if top > confirmed_to:
                report = {
                    "v": 1,
                    "node": node.node,
                    "ts": 1,
                    "boots": [{"boot": node.boot, "ranges": [[0, top]]}],
                }
                before = fleet.confirmed
                await c.publish(f"floodgate/v1/{node.node}/ack", json.dumps(report).encode(), qos=1)
                await wait_until(lambda b=before: fleet.confirmed > b, 10, "the report taken in")
                confirmed_to = top
                if first_resent is None:
                    first_resent = fleet.resent  # before the first report: no progress yet
            await wait_until(lambda to=confirmed_to: node.seq - 25 > to, 10, "more sent")
        held = fleet.resent
        assert held == first_resent, "a collector still confirming is slow, not losing"
        assert len(node.awaiting) >= 10
        # Now silent: the deadline resends come.
        await wait_until(lambda: fleet.resent > held, 10, "resends once the collector went silent")


@pytest.mark.parametrize("engine", ["mosquitto", "nats"])
async def test_one_collector_stopping_of_several_leaves_the_nodes_awaiting_confirmation(
    engine: str, request: pytest.FixtureRequest
) -> None:
    """Two collectors confirm; one stops (its offline state, without ``acks``), the other goes on.
    The nodes keep what awaits confirmation and keep what the broker acknowledges from then on
    until it is confirmed, as the edge does (CI, the chaos suite on the NATS cluster: the
    nodes forgot it, and messages the broker acknowledged while the collectors were restarted
    and then lost were never sent again)."""
    url = (
        request.getfixturevalue("own_broker").url
        if engine == "mosquitto"
        else request.getfixturevalue("nats_cluster").mqtt_urls[0]
    )
    port = int(url.rsplit(":", 1)[1])

    async def collector_state(client_id: str, **state: object) -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"state-{client_id}") as c:
            topic = f"floodgate/v1/_host/{client_id}/state"
            await c.publish(topic, json.dumps(state).encode(), qos=1, retain=True)

    for cid in ("c1", "c2"):
        await collector_state(cid, online=True, boot=0, ts=1, acks=True)
    opts = FleetOptions(urls=(url,), nodes=1, telemetry_s=0.2, confirm_timeout_s=600.0, prefix="two")
    fleet = Fleet(opts, sites=grid()[:1])
    node = fleet.nodes[0]
    async with running_fleet(fleet):
        await wait_until(lambda: fleet.host_acks is True, 20, "the collectors' states seen")
        await wait_until(lambda: len(node.awaiting) >= 3, 20, "messages acknowledged by the broker")
        before = set(node.awaiting)
        await collector_state("c1", online=False, boot=0)  # c1 stops; c2 is still online
        await wait_until(lambda: fleet._collectors.get("c1") is False, 20, "c1's offline state seen")
        assert fleet.host_online is True
        assert fleet.host_acks is True  # the other collector confirms
        sent = node.seq
        await wait_until(lambda: fleet.pubacked >= sent + 3, 20, "more acknowledged by the broker")
        # Nothing confirmed them (no collector here reports): every one still awaits it.
        assert before <= set(node.awaiting)
        assert set(range(sent, sent + 3)) <= set(node.awaiting) | set(node.pending)
        ledger = fleet.ledger()[node.node]
        assert ledger["confirmed"] == []


async def test_a_collectors_ack_wait_widens_the_nodes_gap_check_while_it_is_online() -> None:
    """As the edge: a hole acknowledged less than an online collector's ``ack_wait_s`` before a
    confirmed message was sent is that collector's, not reported yet, not a gap, however long
    ago, while two or more collectors are online; an offline or cleared one counts no more."""
    fleet = Fleet(FleetOptions(urls=("mqtt://127.0.0.1:1",), nodes=1, prefix="aw"), sites=grid()[:1])
    state = {"online": True, "boot": 0, "ts": 1, "acks": True}
    fleet.on_host_state(json.dumps({**state, "ack_wait_s": 15.5}).encode(), "c1")
    fleet.on_host_state(json.dumps(state).encode(), "c2")
    assert fleet.ack_wait == {"c1": 15.5, "c2": 0.0}  # c2 older: holds nothing back, one more
    node = fleet.nodes[0]
    node.boot = 1
    now = fleet.loop.time()
    for seq in range(3):  # sent and acknowledged by the broker 1,000 s ago, 10 s apart
        m = _Msg(f"floodgate/v1/{node.node}/telemetry", b"{}", True, 60.0)
        m.sent_at = m.puback_at = now - 1000.0 + seq * 10
        node.awaiting[seq] = m
        node.ledger.append(0)
    node.on_ack({"boots": [{"boot": 1, "ranges": [[1, 1]]}]})
    assert fleet.resent == 0, "0 was acknowledged 10 s before 1 was sent: within 15.5 s"
    fleet.on_host_state(json.dumps({"online": False, "boot": 0}).encode(), "c1")
    assert fleet.ack_wait == {"c2": 0.0}  # one collector alone: a hole in its report is a gap
    node.on_ack({"boots": [{"boot": 1, "ranges": [[2, 2]]}]})
    assert fleet.resent == 1 and 0 in node.pending
