"""A city of flood sites and the storms that cross it, for ``floodgate sim fleet``.

``city(n, seed)`` places ``n`` sites (tunnels, underpasses, low roads) over
the map of Guangzhou's eleven districts, three streets each, with made-up
names, each with a ``sensitivity`` (how much water the same rain makes
there). ``storms(...)`` draws storm cells that move in a straight line across
the map: a cell has a centre, a radius and a peak depth; a site under it
sees the water rise as the cell comes and fall as it goes. Everything is
drawn from the seed: the same seed gives the same city and the same storms.

``registry_yaml`` gives the collector the matching site registry: the city's
districts and streets as areas, a drainage station per street, a maintenance
team per district, the emergency office as fallback.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulators.fleet import dispatch_rules

# id, name (zh), name (en), centre lat, lon, half-size in degrees (lat, lon)
DISTRICTS: list[tuple[str, str, str, float, float, float, float]] = [
    ("yuexiu", "越秀区", "Yuexiu", 23.129, 113.267, 0.02, 0.02),
    ("haizhu", "海珠区", "Haizhu", 23.096, 113.317, 0.025, 0.05),
    ("liwan", "荔湾区", "Liwan", 23.106, 113.230, 0.03, 0.025),
    ("tianhe", "天河区", "Tianhe", 23.150, 113.360, 0.04, 0.045),
    ("baiyun", "白云区", "Baiyun", 23.230, 113.280, 0.07, 0.05),
    ("huangpu", "黄埔区", "Huangpu", 23.150, 113.470, 0.06, 0.05),
    ("panyu", "番禺区", "Panyu", 22.960, 113.380, 0.06, 0.07),
    ("huadu", "花都区", "Huadu", 23.400, 113.220, 0.07, 0.08),
    ("nansha", "南沙区", "Nansha", 22.780, 113.530, 0.09, 0.07),
    ("conghua", "从化区", "Conghua", 23.550, 113.590, 0.09, 0.09),
    ("zengcheng", "增城区", "Zengcheng", 23.270, 113.720, 0.09, 0.08),
]
STREET_NAMES = [("东", "East"), ("西", "West"), ("中", "Central")]
ROADS = [
    ("中山", "Zhongshan"),
    ("解放", "Jiefang"),
    ("环市", "Huanshi"),
    ("黄埔", "Huangpu"),
    ("广州", "Guangzhou"),
    ("天河", "Tianhe"),
    ("新港", "Xingang"),
    ("江南", "Jiangnan"),
    ("沙河", "Shahe"),
    ("体育", "Tiyu"),
    ("科学", "Kexue"),
    ("开创", "Kaichuang"),
    ("广园", "Guangyuan"),
    ("华南", "Huanan"),
    ("机场", "Jichang"),
    ("迎宾", "Yingbin"),
]
KINDS = [("隧道", "tunnel"), ("下穿", "underpass"), ("低洼路段", "low road")]
KM_PER_DEG_LAT = 111.2
# The depth thresholds every virtual site uses (mm; the demo sites' ``lvl-1``).
WARNING_ON, WARNING_CLEAR, DANGER_ON, DANGER_CLEAR = 150.0, 120.0, 270.0, 240.0


def km_per_deg_lon(lat: float) -> float:
    return KM_PER_DEG_LAT * math.cos(math.radians(lat))


@dataclass(frozen=True)
class CitySite:
    node: str
    name_zh: str
    name_en: str
    district: str
    street: str  # the area id: ``{district}-{n}``
    lat: float
    lon: float
    sensitivity: float = 1.0  # water per unit of storm: a low underpass floods first


def city(n: int, seed: int = 0, prefix: str = "gz") -> list[CitySite]:
    """``n`` sites spread over the districts (more in the central ones), names and places from ``seed``."""
    rng = random.Random(seed)
    weights = [1.0 / (hlat * hlon) ** 0.5 for _, _, _, _, _, hlat, hlon in DISTRICTS]  # denser downtown
    width = max(5, len(str(n)))
    out = []
    for i in range(n):
        d_id, d_zh, _d_en, clat, clon, hlat, hlon = rng.choices(DISTRICTS, weights)[0]
        s = rng.randrange(len(STREET_NAMES))
        road_zh, road_en = rng.choice(ROADS)
        kind_zh, kind_en = rng.choice(KINDS)
        num = i + 1
        out.append(
            CitySite(
                node=f"{prefix}-{num:0{width}d}",
                name_zh=f"{d_zh}{road_zh}路{kind_zh}{num}号",
                name_en=f"{road_en} Rd {kind_en} {num}",
                district=d_id,
                street=f"{d_id}-{s + 1}",
                lat=round(clat + rng.uniform(-hlat, hlat), 5),
                lon=round(clon + rng.uniform(-hlon, hlon), 5),
                sensitivity=round(rng.uniform(0.7, 1.3), 3),
            )
        )
    return out


def bounds(sites: list[CitySite]) -> tuple[float, float, float, float]:
    """(south, west, north, east) of the sites."""
    lats = [s.lat for s in sites]
    lons = [s.lon for s in sites]
    return min(lats), min(lons), max(lats), max(lons)


@dataclass(frozen=True)
class StormCell:
    """A storm cell moving in a straight line: the water it makes at a place, over time.

    Times are scenario seconds. The cell appears at ``start_s`` at
    (``lat``, ``lon``), moves ``speed_kmh`` towards ``heading_deg`` (0 north,
    90 east) for ``duration_s``; it grows to full strength over ``ramp_s`` and
    fades over the last ``ramp_s``. The depth under it is ``peak_mm`` at its
    centre, falling to 0 at ``radius_km`` (1 - (d/r)^2): a site under its
    track rises to its crest as the centre passes and drains after.
    """

    start_s: float
    lat: float
    lon: float
    heading_deg: float
    speed_kmh: float
    radius_km: float
    peak_mm: float = 400.0
    duration_s: float = 3600.0
    ramp_s: float = 300.0
    rain_mm_h: float = 80.0  # intensity at its centre

    def centre(self, t: float) -> tuple[float, float]:
        dist = self.speed_kmh * max(0.0, t - self.start_s) / 3600
        h = math.radians(self.heading_deg)
        lat = self.lat + dist * math.cos(h) / KM_PER_DEG_LAT
        return lat, self.lon + dist * math.sin(h) / km_per_deg_lon(self.lat)

    def strength(self, lat: float, lon: float, t: float) -> float:
        """0..1: how far under the cell the place is at ``t`` (0 outside it, or before or after it)."""
        age = t - self.start_s
        if age < 0 or age > self.duration_s:
            return 0.0
        clat, clon = self.centre(t)
        dy = (lat - clat) * KM_PER_DEG_LAT
        dx = (lon - clon) * km_per_deg_lon(clat)
        d2 = (dx * dx + dy * dy) / (self.radius_km * self.radius_km)
        if d2 >= 1.0:
            return 0.0
        ramp = min(1.0, age / self.ramp_s, (self.duration_s - age) / self.ramp_s) if self.ramp_s > 0 else 1.0
        return (1.0 - d2) * ramp

    def along_track_km(self, lat: float, lon: float) -> float:
        """How far along the track the point nearest the place is, from the start (km)."""
        dy = (lat - self.lat) * KM_PER_DEG_LAT
        dx = (lon - self.lon) * km_per_deg_lon(self.lat)
        h = math.radians(self.heading_deg)
        return dx * math.sin(h) + dy * math.cos(h)


def depth_mm(site: CitySite, cells: list[StormCell], t: float) -> float:
    """The water at a site at scenario time ``t``: the deepest any cell makes there."""
    best = 0.0
    for c in cells:
        s = c.strength(site.lat, site.lon, t)
        if s > 0:
            best = max(best, c.peak_mm * s * site.sensitivity)
    return best


def rain_mm_h(site: CitySite, cells: list[StormCell], t: float) -> float:
    best = 0.0
    for c in cells:
        s = c.strength(site.lat, site.lon, t)
        if s > 0:
            best = max(best, c.rain_mm_h * s)
    return min(best, 1000.0)


def storms(
    sites: list[CitySite],
    count: int,
    seed: int = 0,
    every_s: float = 1800.0,
    speed_kmh: tuple[float, float] = (20.0, 45.0),
    radius_km: tuple[float, float] = (3.0, 9.0),
) -> list[StormCell]:
    """``count`` cells, one every ``every_s``, each entering the map at an edge and crossing it."""
    if not sites or count <= 0:
        return []
    rng = random.Random(seed ^ 0x5EED)
    south, west, north, east = bounds(sites)
    mid_lat = (south + north) / 2
    height_km = (north - south) * KM_PER_DEG_LAT
    width_km = (east - west) * km_per_deg_lon(mid_lat)
    cells = []
    for k in range(count):
        heading = rng.uniform(0, 360)
        speed = rng.uniform(*speed_kmh)
        radius = rng.uniform(*radius_km)
        # aimed at a point of the map's middle half, starting outside the map upwind of it
        qlat, qlon = (north - south) / 4, (east - west) / 4
        tlat, tlon = rng.uniform(south + qlat, north - qlat), rng.uniform(west + qlon, east - qlon)
        back = math.hypot(height_km, width_km) * 0.75 + radius
        h = math.radians(heading)
        lat = tlat - back * math.cos(h) / KM_PER_DEG_LAT
        lon = tlon - back * math.sin(h) / km_per_deg_lon(mid_lat)
        duration = 2 * back / speed * 3600
        cells.append(
            StormCell(
                start_s=k * every_s,
                lat=round(lat, 5),
                lon=round(lon, 5),
                heading_deg=round(heading, 1),
                speed_kmh=round(speed, 1),
                radius_km=round(radius, 2),
                peak_mm=round(rng.uniform(320, 450)),
                duration_s=round(duration),
                ramp_s=min(300.0, duration / 4),
            )
        )
    return cells


def registry_yaml(sites: list[CitySite], accept_min: float = 15.0) -> str:
    """The collector's site registry for ``sites``: districts and streets as areas, a unit each."""
    names = {d[0]: d for d in DISTRICTS}
    used = sorted({s.district for s in sites})
    streets = sorted({s.street for s in sites})
    lines = [
        "# generated by simulators.city for floodgate sim fleet",
        "fallback_unit: emergency-office",
        "supervision_unit: supervision-office",
        "units:",
        "  emergency-office: {name: 广州市应急管理局值班室, name_en: City emergency office}",
        "  supervision-office: {name: 市督查督办室, name_en: Supervision office}",
    ]
    for d in used:
        lines.append(
            f"  maint-{d}: {{name: {names[d][1]}物联设备维护班, name_en: {names[d][2]} IoT maintenance}}"
        )
    for st in streets:
        d, _, num = st.rpartition("-")
        zh, en = STREET_NAMES[int(num) - 1]
        lines.append(
            f"  drainage-{st}: {{name: {names[d][1]}{zh}街排水所, name_en: {names[d][2]} {en} drainage}}"
        )
    lines.append("areas:")
    for d in used:
        lines.append(f"  {d}: {{level: district, name: {names[d][1]}, units: {{maintenance: maint-{d}}}}}")
    for st in streets:
        d, _, num = st.rpartition("-")
        zh, _en = STREET_NAMES[int(num) - 1]
        units = f"{{drainage: drainage-{st}}}"
        lines.append(f"  {st}: {{level: street, name: {names[d][1]}{zh}街, parent: {d}, units: {units}}}")
    lines.append("sites:")
    for s in sites:
        lines.append(f'  {s.node}: {{area: {s.street}, name: "{s.name_zh}", name_en: "{s.name_en}"}}')
    lines += dispatch_rules(accept_min)
    return "\n".join(lines) + "\n"
