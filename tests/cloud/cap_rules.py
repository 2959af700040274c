"""CAP 1.2 conformance, written from the OASIS standard (CAP-v1.2-os, section 3).

No schema file ships with Debian, so the tests check what the XML schema
and the standard's prose require: each block's elements in the standard's
order with their cardinality, the enumerated values, dateTime with a
numeric zone offset (the standard forbids "Z"), identifiers without spaces,
commas or the reserved characters, ``references`` as "sender,identifier,sent"
triples, and ``circle`` as "lat,lon radius".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

NS = "urn:oasis:names:tc:emergency:cap:1.2"

# (element, min, max) in schema order; max None = unbounded.
ALERT = [
    ("identifier", 1, 1),
    ("sender", 1, 1),
    ("sent", 1, 1),
    ("status", 1, 1),
    ("msgType", 1, 1),
    ("source", 0, 1),
    ("scope", 1, 1),
    ("restriction", 0, 1),
    ("addresses", 0, 1),
    ("code", 0, None),
    ("note", 0, 1),
    ("references", 0, 1),
    ("incidents", 0, 1),
    ("info", 0, None),
]
INFO = [
    ("language", 0, 1),
    ("category", 1, None),
    ("event", 1, 1),
    ("responseType", 0, None),
    ("urgency", 1, 1),
    ("severity", 1, 1),
    ("certainty", 1, 1),
    ("audience", 0, 1),
    ("eventCode", 0, None),
    ("effective", 0, 1),
    ("onset", 0, 1),
    ("expires", 0, 1),
    ("senderName", 0, 1),
    ("headline", 0, 1),
    ("description", 0, 1),
    ("instruction", 0, 1),
    ("web", 0, 1),
    ("contact", 0, 1),
    ("parameter", 0, None),
    ("resource", 0, None),
    ("area", 0, None),
]
AREA = [
    ("areaDesc", 1, 1),
    ("polygon", 0, None),
    ("circle", 0, None),
    ("geocode", 0, None),
    ("altitude", 0, 1),
    ("ceiling", 0, 1),
]
ENUMS = {
    "status": {"Actual", "Exercise", "System", "Test", "Draft"},
    "msgType": {"Alert", "Update", "Cancel", "Ack", "Error"},
    "scope": {"Public", "Restricted", "Private"},
    "category": {
        *("Geo", "Met", "Safety", "Security", "Rescue", "Fire"),
        *("Health", "Env", "Transport", "Infra", "CBRNE", "Other"),
    },
    "responseType": {
        *("Shelter", "Evacuate", "Prepare", "Execute", "Avoid"),
        *("Monitor", "Assess", "AllClear", "None"),
    },
    "urgency": {"Immediate", "Expected", "Future", "Past", "Unknown"},
    "severity": {"Extreme", "Severe", "Moderate", "Minor", "Unknown"},
    "certainty": {"Observed", "Likely", "Possible", "Unlikely", "Unknown"},
}
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")
IDENT = re.compile(r"^[^\s,<&]+$")
NUMBER = r"-?\d+(\.\d+)?"
CIRCLE = re.compile(rf"^{NUMBER},{NUMBER} {NUMBER}$")


def problems(alert: ET.Element) -> list[str]:
    """What in one ``alert`` element breaks CAP 1.2; empty when it conforms."""
    out: list[str] = []
    if alert.tag != f"{{{NS}}}alert":
        return [f"root is {alert.tag}, not the CAP 1.2 alert"]
    _sequence(alert, ALERT, "alert", out)
    for name in ("identifier", "sender"):
        if not IDENT.match(_text(alert, name)):
            out.append(f"alert/{name} {_text(alert, name)!r} has a space, comma, < or &")
    for sent in [_text(alert, "sent"), *(e.text or "" for e in alert.iter(f"{{{NS}}}expires"))]:
        if not DATETIME.match(sent):
            out.append(f"dateTime {sent!r} needs seconds and a numeric zone offset")
    refs = alert.findtext(f"{{{NS}}}references")
    for ref in (refs or "").split():
        parts = ref.split(",")
        if len(parts) != 3 or not DATETIME.match(parts[2]):
            out.append(f"reference {ref!r} is not sender,identifier,sent")
    if _text(alert, "msgType") in {"Update", "Cancel", "Ack", "Error"} and not refs:
        out.append(f"a {_text(alert, 'msgType')} names the messages it refers to")
    for i, info in enumerate(alert.findall(f"{{{NS}}}info")):
        _sequence(info, INFO, f"info[{i}]", out)
        for j, area in enumerate(info.findall(f"{{{NS}}}area")):
            _sequence(area, AREA, f"info[{i}]/area[{j}]", out)
            for c in area.findall(f"{{{NS}}}circle"):
                if not CIRCLE.match(c.text or ""):
                    out.append(f"circle {c.text!r} is not 'lat,lon radius'")
    for el in alert.iter():
        name = el.tag.removeprefix(f"{{{NS}}}")
        if name in ENUMS and el.text not in ENUMS[name]:
            out.append(f"{name} {el.text!r} is not one of {sorted(ENUMS[name])}")
    return out


def _text(el: ET.Element, name: str) -> str:
    return el.findtext(f"{{{NS}}}{name}") or ""


def _sequence(el: ET.Element, spec: list[tuple[str, int, int | None]], where: str, out: list[str]) -> None:
    names = [c.tag.removeprefix(f"{{{NS}}}") for c in el]
    order = {name: i for i, (name, _, _) in enumerate(spec)}
    unknown = [n for n in names if n not in order]
    if unknown:
        out.append(f"{where} has elements CAP does not define: {unknown}")
        return
    ranks = [order[n] for n in names]
    if ranks != sorted(ranks):
        out.append(f"{where} is out of the standard's order: {names}")
    for name, lo, hi in spec:
        n = names.count(name)
        if n < lo or (hi is not None and n > hi):
            out.append(f"{where} has {n} {name} (allowed {lo}..{hi if hi is not None else 'n'})")


CJK = re.compile(r"[\u3400-\u9fff]")
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
LATIN_OK_IN_ZH = {"mm"}  # a unit


def mixed_languages(alert: ET.Element) -> list[str]:
    """Texts of an ``info`` block that are not in the block's ``language`` (one language per block:
    CAP carries several blocks for several languages, not one text running them together)."""
    out: list[str] = []
    for i, info in enumerate(alert.findall(f"{{{NS}}}info")):
        lang = _text(info, "language")
        texts = [
            e
            for e in info.iter()
            if e.tag.removeprefix(f"{{{NS}}}")
            in {"event", "headline", "description", "instruction", "areaDesc"}
        ]
        for e in texts:
            words = set(LATIN_WORD.findall(e.text or ""))
            if lang.startswith("zh") and words - LATIN_OK_IN_ZH:
                out.append(f"info[{i}] ({lang}) {e.tag.removeprefix(f'{{{NS}}}')}: {e.text!r}")
            if lang.startswith("en") and CJK.search(e.text or ""):
                out.append(f"info[{i}] ({lang}) {e.tag.removeprefix(f'{{{NS}}}')}: {e.text!r}")
    return out
