"""Read-only views for other systems: Open311 GeoReport v2 and a CAP 1.2 feed.

Open311: every ticket is a service request; every state but ``closed`` and
``duplicate`` maps to ``open``. The service codes are the ticket kinds. Open311
is in English (its services, notes): a request's description and address take
the registry's ``name_en``/``address_en`` where it has them (the Chinese ones,
else what the site sent, where not).

CAP: each public warning episode (flood, immersion, forecast) is a chain of
CAP messages, one per transition: the first is an ``Alert``, later ones are
``Update``, and the return to clear is a ``Cancel``; each lists every earlier
message of its episode in ``references``. Sensor-triggered warnings have
certainty ``Observed``, forecasts ``Likely``. The feed holds the latest
message of every episode that is active or ended within ``recent_h`` hours.
Each language has its own ``info`` block, all of it in that language: the
site's name and address from the registry (``name``/``address`` in Chinese,
``name_en``/``address_en`` in English, the Chinese ones where it has no
English), else what the site calls itself.
A forecast's message is ``Expected`` (not ``Immediate``) with its ``onset`` the time the water
is expected to reach the level (the transition's time plus its ``eta_s``), and says how
likely and how deep where the collector's own rainfall forecast made it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cloud.db import feeds
from cloud.db.store import Store
from cloud.registry import Registry
from floodgate.clock import Clock
from floodgate.vocab import ALERT_KINDS, TICKET_KINDS, kinds

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
PUBLIC_KINDS = kinds(public=True)
SERVICES = [
    {
        "service_code": "flood",
        "service_name": "Road or tunnel waterlogging",
        "description": "Water on a road, in a tunnel or underpass, from a roadside sensor or a report.",
        "metadata": False,
        "type": "realtime",
        "keywords": "flood,waterlogging,tunnel,underpass",
        "group": TICKET_KINDS["flood"].department,
    },
    {
        "service_code": "sensor_fault",
        "service_name": "Roadside flood sensor fault",
        "description": "A water-level or immersion sensor that reports a fault.",
        "metadata": False,
        "type": "realtime",
        "keywords": "sensor,fault,maintenance",
        "group": TICKET_KINDS["sensor_fault"].department,
    },
    {
        "service_code": "comms_lost",
        "service_name": "Roadside flood warning site silent",
        "description": "A site that stopped reporting.",
        "metadata": False,
        "type": "realtime",
        "keywords": "communication,maintenance",
        "group": TICKET_KINDS["comms_lost"].department,
    },
]


def iso(ms: int | None, tz: ZoneInfo) -> str | None:
    """ISO 8601 with a numeric offset (CAP forbids 'Z')."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz).replace(microsecond=0).isoformat()


class Interop:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        sender: str = "floodgate@localhost",
        timezone: str = "Asia/Shanghai",
        recent_h: float = 24.0,
        base_url: str = "",
        registry: Registry | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.sender = sender
        self.tz = ZoneInfo(timezone)
        self.recent_ms = int(recent_h * 3_600_000)
        self.base_url = base_url.rstrip("/")

    # ---------------------------------------------------------------- Open311

    def _description(self, t: Any) -> str:
        """The ticket's title ("Water at <site>") with the site's English name where the registry
        has one: the title is stored with the name of the ticket's day (the Chinese one)."""
        title = str(t["title"])
        reg = self.registry.sites.get(t["node"]) if self.registry is not None else None
        if reg is not None and reg.name_en and reg.name and title.endswith(reg.name):
            return title[: -len(reg.name)] + reg.name_en
        return title

    def _request(self, t: Any, sites: dict[str, Any]) -> dict[str, Any]:
        site = sites.get(t["node"]) or {}
        closed = t["state"] in ("closed", "duplicate")
        notes = {"duplicate": f"duplicate of {t['duplicate_of']}"}.get(t["state"], t["state"])
        return {
            "service_request_id": t["id"],
            "status": "closed" if closed else "open",
            "status_notes": notes,
            "service_name": next(s["service_name"] for s in SERVICES if s["service_code"] == t["kind"]),
            "service_code": t["kind"],
            "description": self._description(t),
            "agency_responsible": t["unit"],
            "service_notice": f"priority {t['priority']}",
            "requested_datetime": iso(t["created_ms"], self.tz),
            "updated_datetime": iso(t["updated_ms"], self.tz),
            "expected_datetime": iso(t["handle_due_ms"], self.tz),
            "address": self._place("en", t["node"], sites.get(t["node"]))[1],
            "lat": t["lat"] if t["lat"] is not None else site.get("lat"),
            "long": t["lon"] if t["lon"] is not None else site.get("lon"),
            "media_url": None,
        }

    async def requests(
        self,
        *,
        service_code: str | None = None,
        status: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        ids: list[str] | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        rows, sites = await feeds.service_requests(
            self.store,
            kind=service_code,
            closed={"open": False, "closed": True}.get(status or ""),
            closed_states=("closed", "duplicate"),
            start_ms=start_ms,
            end_ms=end_ms,
            ids=ids,
            limit=limit,
            offset=offset,
        )
        return [self._request(t, sites) for t in rows]

    # -------------------------------------------------------------------- CAP

    async def cap_messages(self, limit: int = 1000, offset: int = 0) -> list[ET.Element]:
        """The latest CAP message of each current or recently ended public warning, the most
        recently changed first; ``limit`` episodes from ``offset``."""
        since = self.clock.now_ms() - self.recent_ms
        eps, sites, chains = await feeds.public_episodes(self.store, PUBLIC_KINDS, since, limit, offset)
        return [
            self.cap_message(e, chains.get(e["id"], []), sites.get(e["node"]))
            for e in eps
            if chains.get(e["id"])
        ]

    async def cap_message_by_id(self, identifier: str) -> ET.Element | None:
        found = await feeds.transition_with_chain(self.store, identifier, PUBLIC_KINDS)
        if found is None:
            return None
        tr, ep, chain, site = found
        upto = [c for c in chain if (c["ts"], c["msg_id"]) <= (tr["ts"], tr["msg_id"])]
        return self.cap_message(ep, upto, site)

    def _ref(self, tr: Any) -> str:
        return f"{self.sender},{tr['msg_id']},{iso(tr['ts'], self.tz)}"

    def cap_message(self, ep: Any, chain: list[Any], site: Any) -> ET.Element:
        """The CAP message for the last transition in ``chain`` (one episode's, in order)."""
        last = chain[-1]
        earlier = chain[:-1]
        if last["level"] == "clear":
            msg_type = "Cancel"
        elif not earlier:
            msg_type = "Alert"
        else:
            msg_type = "Update"
        alert = ET.Element("alert", xmlns=CAP_NS)
        sub(alert, "identifier", last["msg_id"])
        sub(alert, "sender", self.sender)
        sub(alert, "sent", iso(last["ts"], self.tz))
        # A drill's or a simulator's warnings (its birth said site.exercise) are not real.
        sub(alert, "status", "Exercise" if site is not None and site["exercise"] else "Actual")
        sub(alert, "msgType", msg_type)
        sub(alert, "scope", "Public")
        if earlier:
            sub(alert, "references", " ".join(self._ref(c) for c in earlier))
        sub(alert, "incidents", ep["id"])
        level = last["level"] if last["level"] != "clear" else ep["max_level"]
        # The threshold of the level this message reports (each transition carries its own;
        # transitions stored before it was kept fall back to the episode's first).
        threshold = last["threshold"] if last["threshold"] is not None else ep["threshold"]
        for lang in ("zh-CN", "en-US"):
            name, address = self._place(lang, ep["node"], site)
            info = ET.SubElement(alert, "info")
            sub(info, "language", lang)
            sub(info, "category", "Met")
            sub(info, "category", "Transport")
            sub(info, "event", "道路积水" if lang == "zh-CN" else "Road waterlogging")
            sub(info, "responseType", "AllClear" if msg_type == "Cancel" else "Avoid")
            observed = ALERT_KINDS[ep["kind"]].observed
            sub(info, "urgency", "Past" if msg_type == "Cancel" else "Immediate" if observed else "Expected")
            sub(info, "severity", "Severe" if level == "danger" else "Moderate")
            sub(info, "certainty", "Observed" if observed else "Likely")
            eta = last.get("eta_s")
            if not observed and msg_type != "Cancel" and eta is not None:
                sub(info, "onset", iso(last["ts"] + int(eta * 1000), self.tz))
            sub(info, "senderName", "Floodgate")
            sub(info, "headline", headline(lang, msg_type, level, name, observed))
            sub(info, "description", describe(lang, msg_type, ep, last, threshold))
            if msg_type != "Cancel":
                sub(
                    info,
                    "instruction",
                    "请勿驶入，绕道行驶。" if lang == "zh-CN" else "Do not drive in; take another road.",
                )
            area = ET.SubElement(info, "area")
            sub(area, "areaDesc", address)
            if site is not None and site["lat"] is not None and site["lon"] is not None:
                sub(area, "circle", f"{site['lat']:.6f},{site['lon']:.6f} 0.2")
        return alert

    def _place(self, lang: str, node: str, site: Any) -> tuple[str, str]:
        """The site's name and address in ``lang``: the registry's, else what the site sent."""
        reg = self.registry.sites.get(node) if self.registry is not None else None
        given = (site["site_name"] if site is not None else None) or node
        sent = site["address"] if site is not None and site["address"] else None
        if reg is None:
            return given, sent or given
        en = lang.startswith("en")
        name = (reg.name_en if en else None) or reg.name or given
        address = (reg.address_en if en else None) or reg.address or sent or name
        return name, address

    def atom_feed(self, messages: list[ET.Element], next_page: int | None = None) -> bytes:
        """The feed; with ``next_page``, a ``rel="next"`` link to it (RFC 5005 paging)."""
        feed = ET.Element("feed", xmlns=ATOM_NS)
        sub(feed, "id", f"{self.base_url}/cap/v1.2/feed.atom" if self.base_url else "urn:floodgate:cap:feed")
        sub(feed, "title", "Floodgate public flood warnings (CAP 1.2)")
        sub(feed, "updated", iso(self.clock.now_ms(), self.tz))
        ET.SubElement(ET.SubElement(feed, "author"), "name").text = self.sender
        if next_page is not None:
            href = f"{self.base_url}/cap/v1.2/feed.atom?page={next_page}"
            ET.SubElement(feed, "link", rel="next", href=href, type="application/atom+xml")
        for m in messages:
            ident = m.findtext("identifier") or ""
            entry = ET.SubElement(feed, "entry")
            sub(entry, "id", f"urn:floodgate:cap:{ident}")
            sub(entry, "title", m.findtext("info/headline") or ident)
            sub(entry, "updated", m.findtext("sent") or "")
            ET.SubElement(
                entry,
                "link",
                rel="alternate",
                type="application/cap+xml",
                href=f"{self.base_url}/cap/v1.2/alerts/{ident}.xml",
            )
            content = ET.SubElement(entry, "content", type="text/xml")
            content.append(m)
        return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(ET.tostring(feed, encoding="utf-8"))


def sub(parent: ET.Element, tag: str, text: str | None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    el.text = text
    return el


# A Chinese character, and a Latin letter or digit: where they meet in a Chinese text, a space.
CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN_CHAR = re.compile(r"[A-Za-z0-9]")


def cjk_join(*parts: str) -> str:
    """Chinese text put together from parts, a space where a Latin name or id meets Chinese
    ("Test underpass 积水", "hp-01 积水", not "hp-01积水"); none between Chinese parts."""
    out = ""
    for part in parts:
        if out and part:
            a, b = out[-1], part[0]
            if (CJK_CHAR.match(a) and LATIN_CHAR.match(b)) or (LATIN_CHAR.match(a) and CJK_CHAR.match(b)):
                out += " "
        out += part
    return out


def headline(lang: str, msg_type: str, level: str, name: str, observed: bool = True) -> str:
    if lang == "zh-CN":
        if msg_type == "Cancel":
            return cjk_join(name, "积水已退，预警解除" if observed else "积水风险解除")
        if not observed:
            # A forecast never moves a gate: no closure promised (as the en "water expected").
            return cjk_join(name, f"预计积水{'严重' if level == 'danger' else ''}，请提前绕行")
        return cjk_join(name, f"积水{'严重，禁止通行' if level == 'danger' else '，注意绕行'}")
    if msg_type == "Cancel":
        return (
            f"All clear at {name}: the water is gone"
            if observed
            else f"All clear at {name}: no water expected"
        )
    word = "Danger" if level == "danger" else "Warning"
    return f"{word}: water at {name}" if observed else f"{word}: water expected at {name}"


def describe(lang: str, msg_type: str, ep: Any, last: Any, threshold: float | None) -> str:
    """What was measured: a depth with the threshold of the level reported, or, for a contact
    that only knows wet or dry (immersion), which of the two."""
    zh = lang == "zh-CN"
    if not ALERT_KINDS[ep["kind"]].observed:
        return forecast_text(zh, msg_type, last, threshold)
    if ep["kind"] == "immersion":
        if msg_type == "Cancel" or last["level"] == "clear":
            return "浸水传感器已恢复干燥。" if zh else "The immersion sensor is dry again."
        return "浸水传感器检测到路面积水。" if zh else "The immersion sensor is wet: water on the road."
    depth = f"{last['value']:g} {ep['unit'] or 'mm'}" if last["value"] is not None else ""
    th = f"{threshold:g} {ep['unit'] or 'mm'}" if threshold is not None and msg_type != "Cancel" else ""
    if zh:
        return f"传感器实测水深 {depth}" + (f"（阈值 {th}）" if th else "") + "。"
    return f"Measured water depth {depth}" + (f" (threshold {th})" if th else "") + "."


def forecast_text(zh: bool, msg_type: str, last: Any, threshold: float | None) -> str:
    """A forecast's description: the level's depth, in how long, how likely, how deep at most."""
    if msg_type == "Cancel" or last["level"] == "clear":
        return "预报积水风险已解除。" if zh else "The water forecast for this road has passed."
    eta = last.get("eta_s")
    minutes = f"{round(eta / 60)}" if eta is not None else "?"
    th = f"{threshold:g} mm" if threshold is not None else ""
    prob = last.get("probability")
    if zh:
        text = f"预计约 {minutes} 分钟后水深达到 {th}"
        if prob is not None:
            text += f"（可能性 {prob:.0%}，预计最深 {last['value']:g} mm，依据降雨预报）"
        elif last["value"] is not None:
            text += f"（当前水深 {last['value']:g} mm，依据水位上涨速度）"
        return text + "。"
    text = f"Water expected to reach {th} in about {minutes} min"
    if prob is not None:
        text += f" ({prob:.0%} likely, up to {last['value']:g} mm, from the rainfall forecast)"
    elif last["value"] is not None:
        text += f" ({last['value']:g} mm now, from the rise rate)"
    return text + "."


def cap_bytes(m: ET.Element) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(ET.tostring(m, encoding="utf-8"))
