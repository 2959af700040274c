"""The words of the CAP feed: the threshold of the level reported, wet or dry for a contact,
Exercise for what a drill or a simulator raised."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from cloud.interop import Interop, cap_bytes, cjk_join
from cloud.registry import Area, Registry, Unit
from cloud.registry import Site as RegSite
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud import cap_rules
from tests.cloud.test_ingest import msg

CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"
T0 = 1_780_000_000_000


def birth(exercise: bool) -> dict[str, Any]:
    site: dict[str, Any] = {"name": "科翔路隧道", "lat": 23.17, "lon": 113.46}
    if exercise:
        site["exercise"] = True
    return {"agent_version": "0.1.0", "config_hash": "abc", "site": site, "devices": []}


def alert(
    seq: Sequencer, aid: str, kind: str, level: str, prev: str, value: float, th: float | None, ts: int
) -> Received:
    body: dict[str, Any] = {
        "id": aid,
        "dev": "lvl-1",
        "kind": kind,
        "level": level,
        "prev": prev,
        "value": value,
        "ts": ts,
    }
    if th is not None:
        body.update(threshold=th, unit="mm")
    return msg(seq, "alert", {"alert": body})


async def feed(interop: Interop) -> list[ET.Element]:
    return [ET.fromstring(cap_bytes(m)) for m in await interop.cap_messages()]


def texts(m: Any, tag: str) -> dict[str, str]:
    return {
        i.findtext(f"{CAP}language") or "": i.findtext(f"{CAP}{tag}") or "" for i in m.findall(f"{CAP}info")
    }


async def test_the_danger_update_names_the_danger_threshold_and_a_contact_says_wet_or_dry(
    store: Store,
) -> None:
    clock = ManualClock(start_ms=T0)
    ing = Ingestor(store, None)
    interop = Interop(store, clock)
    real, drill = Sequencer("hp-1", boot=1), Sequencer("hp-2", boot=1)
    await ing.ingest([msg(real, "birth", birth(False)), msg(drill, "birth", birth(True))])
    flood, wet, sim = new_ulid(), new_ulid(), new_ulid()
    await ing.ingest(
        [
            alert(real, flood, "flood", "warning", "clear", 152.0, 150.0, T0),
            alert(real, flood, "flood", "danger", "warning", 273.0, 270.0, T0 + 60_000),
            alert(real, wet, "immersion", "warning", "clear", 1.0, None, T0),
            alert(drill, sim, "flood", "danger", "clear", 281.0, 270.0, T0),
        ]
    )
    by_incident = {m.findtext(f"{CAP}incidents"): m for m in await feed(interop)}
    assert [cap_rules.problems(m) for m in by_incident.values()] == [[], [], []]

    danger = by_incident[flood]
    assert danger.findtext(f"{CAP}msgType") == "Update"
    assert texts(danger, "description") == {
        "zh-CN": "传感器实测水深 273 mm（阈值 270 mm）。",
        "en-US": "Measured water depth 273 mm (threshold 270 mm).",
    }
    assert danger.findtext(f"{CAP}status") == "Actual"
    assert by_incident[sim].findtext(f"{CAP}status") == "Exercise", "a simulated site's storm is not real"

    assert texts(by_incident[wet], "description") == {
        "zh-CN": "浸水传感器检测到路面积水。",
        "en-US": "The immersion sensor is wet: water on the road.",
    }
    await ing.ingest([alert(real, wet, "immersion", "clear", "warning", 0.0, None, T0 + 120_000)])
    [cleared] = [m for m in await feed(interop) if m.findtext(f"{CAP}incidents") == wet]
    assert cleared.findtext(f"{CAP}msgType") == "Cancel"
    assert texts(cleared, "description")["zh-CN"] == "浸水传感器已恢复干燥。"
    assert all(" mm" not in d and "水深" not in d for d in texts(cleared, "description").values())


async def test_each_info_block_is_in_its_own_language_with_the_registrys_names(store: Store) -> None:
    """The demo's sites call themselves "科翔路隧道 Kexiang Rd tunnel": the Chinese block takes the
    registry's ``name`` and ``address``, the English one its ``name_en`` and ``address_en``."""
    registry = Registry(
        fallback_unit="office",
        units={"office": Unit(name="值班室", name_en="Duty office")},
        areas={"dasha": Area(level="street", name="大沙街", units={"drainage": "office"})},
        sites={
            "hp-1": RegSite(
                area="dasha",
                name="科翔路隧道",
                name_en="Kexiang Rd tunnel",
                address="广州市黄埔区大沙街",
                address_en="Dasha St, Huangpu District, Guangzhou",
            ),
            "hp-2": RegSite(area="dasha", name="开创大道下穿"),  # no English: the Chinese name
        },
    )
    clock = ManualClock(start_ms=T0)
    ing = Ingestor(store, None)
    interop = Interop(store, clock, registry=registry)
    both = {**birth(True), "site": {**birth(True)["site"], "name": "科翔路隧道 Kexiang Rd tunnel"}}
    one, two = Sequencer("hp-1", boot=1), Sequencer("hp-2", boot=1)
    await ing.ingest([msg(one, "birth", both), msg(two, "birth", birth(False))])
    await ing.ingest([alert(one, new_ulid(), "flood", "danger", "clear", 290.0, 270.0, T0)])
    [m] = await feed(interop)
    assert cap_rules.problems(m) == [] and cap_rules.mixed_languages(m) == []
    assert texts(m, "headline") == {
        "zh-CN": "科翔路隧道积水严重，禁止通行",
        "en-US": "Danger: water at Kexiang Rd tunnel",
    }
    areas = {
        i.findtext(f"{CAP}language"): i.findtext(f"{CAP}area/{CAP}areaDesc") for i in m.findall(f"{CAP}info")
    }
    assert areas == {"zh-CN": "广州市黄埔区大沙街", "en-US": "Dasha St, Huangpu District, Guangzhou"}
    # Without the registry the site's own bilingual name ran both languages together in each block.
    [plain] = await feed(Interop(store, clock))
    assert cap_rules.mixed_languages(plain) != []


async def test_a_latin_site_name_is_spaced_from_the_chinese_headline(store: Store) -> None:
    """A site that names itself in Latin letters (or is known only by its node id) ran straight
    into the Chinese headline ("Test underpass积水严重"): a space between them."""
    clock = ManualClock(start_ms=T0)
    ing = Ingestor(store, None)
    seq = Sequencer("hp-9", boot=1)
    latin = {**birth(False), "site": {**birth(False)["site"], "name": "Test underpass 2"}}
    await ing.ingest([msg(seq, "birth", latin)])
    await ing.ingest([alert(seq, new_ulid(), "flood", "danger", "clear", 290.0, 270.0, T0)])
    [m] = await feed(Interop(store, clock))
    assert texts(m, "headline")["zh-CN"] == "Test underpass 2 积水严重，禁止通行"
    assert cjk_join("科翔路隧道", "积水") == "科翔路隧道积水"  # no space between Chinese parts
    assert cjk_join("hp-01", "积水已退", "lvl-1", "，", "x") == "hp-01 积水已退 lvl-1，x"
