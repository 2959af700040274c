"""The report the office sends: the month's unit ranking (一月一排名) and the flood season's
per-site report, as CSV and as a printable PDF with its charts, rendered here (fpdf2).

The numbers are the measures API's own (``cloud.measures``), unrounded in the
CSV so that a spreadsheet can recompute them; the PDF shows them rounded, with
their units. Units are ranked by on-time handling, then on-time acceptance,
then satisfaction (higher first, a unit with nothing to count last), then
fewer escalations, then more tickets; ties share a rank. A unit without an on-time
handling figure (no ticket handled) has no rank: it comes last, its rank
empty in the CSV and "–" in the PDF.

The PDF needs a font with Chinese glyphs: ``api.report_font`` in the
collector's config, or the first of the usual Debian fonts found
(fonts-noto-cjk, fonts-wqy-zenhei, fonts-arphic-uming). Building one takes a
second or two of CPU (the font is read and subset), so callers run it in a
thread.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

Lang = Literal["zh", "en"]
FONTS = (  # (file, face in a collection): Simplified Chinese first
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/arphic/uming.ttc", 0),
)
CHART_ROWS = 20  # a chart shows the first 20 (by its measure); the tables list everyone
TABLE_ROWS = 32  # table rows per page

TEXT: dict[Lang, dict[str, str]] = {
    "zh": {
        "units_title": "{month} 责任单位月度考核排名",
        "sites_title": "{season} 年汛期站点报告",
        "season_span": "汛期 {start} 至 {end}",
        "generated": "生成于 {at}（{tz}）",
        "rank": "排名",
        "unit": "责任单位",
        "unit_id": "单位编号",
        "month": "月份",
        "tickets": "工单数",
        "on_time_accept_rate": "按时签收率",
        "on_time_handle_rate": "按时处置率",
        "handling_hours_avg": "平均处置时长 (小时)",
        "handling_hours_p90": "P90 处置时长 (小时)",
        "satisfaction": "满意率",
        "evaluated": "评价数",
        "escalations": "督办次数",
        "site": "站点",
        "node": "节点",
        "season": "汛期",
        "warning": "预警次数",
        "danger": "危险次数",
        "faults": "故障次数",
        "peak_depth_mm": "最高水深 (毫米)",
        "hours_above_threshold": "超阈值时长 (小时)",
        "chart_handle": "按时处置率（按排名）",
        "chart_accept": "按时签收率",
        "chart_alerts": "预警 / 危险次数",
        "chart_peak": "最高水深 (毫米)",
        "chart_top": "（前 {n} 个）",
        "table": "明细",
        "none": "无数据",
        "page": "第 {n} 页",
    },
    "en": {
        "units_title": "Unit ranking, {month}",
        "sites_title": "Flood season {season}: sites",
        "season_span": "season {start} to {end}",
        "generated": "generated {at} ({tz})",
        "rank": "Rank",
        "unit": "Unit",
        "unit_id": "Unit id",
        "month": "Month",
        "tickets": "Tickets",
        "on_time_accept_rate": "On-time accept",
        "on_time_handle_rate": "On-time handling",
        "handling_hours_avg": "Handling avg (h)",
        "handling_hours_p90": "Handling p90 (h)",
        "satisfaction": "Satisfaction",
        "evaluated": "Evaluated",
        "escalations": "Escalations",
        "site": "Site",
        "node": "Node",
        "season": "Season",
        "warning": "Warnings",
        "danger": "Dangers",
        "faults": "Faults",
        "peak_depth_mm": "Peak depth (mm)",
        "hours_above_threshold": "Hours above threshold",
        "chart_handle": "On-time handling (by rank)",
        "chart_accept": "On-time acceptance",
        "chart_alerts": "Warnings / dangers",
        "chart_peak": "Peak depth (mm)",
        "chart_top": " (first {n})",
        "table": "Details",
        "none": "no data",
        "page": "page {n}",
    },
}
UNIT_COLUMNS = (
    "tickets",
    "on_time_accept_rate",
    "on_time_handle_rate",
    "handling_hours_avg",
    "handling_hours_p90",
    "satisfaction",
    "evaluated",
    "escalations",
)


class NoFont(RuntimeError):
    """No font with Chinese glyphs to draw the PDF with."""


@dataclass(frozen=True)
class Font:
    path: str
    index: int = 0


def find_font(configured: str | None = None) -> Font:
    """The configured font file, or the first usual one found; NoFont if none."""
    if configured:
        if not Path(configured).is_file():
            raise NoFont(f"api.report_font {configured!r} is not a file")
        return Font(configured, _simplified_face(configured))
    for path, index in FONTS:
        if Path(path).is_file():
            return Font(path, index)
    raise NoFont(
        "no font with Chinese glyphs for the PDF report: install fonts-noto-cjk or set api.report_font"
    )


def _simplified_face(path: str) -> int:
    """In a collection, the face for Simplified Chinese (by its name), else the first."""
    if not path.lower().endswith((".ttc", ".otc")):
        return 0
    from fontTools.ttLib import TTCollection  # noqa: PLC0415 - only for a configured collection

    with TTCollection(path, lazy=True) as fonts:
        for i, font in enumerate(fonts):
            name = str(font["name"].getBestFamilyName() or "")
            if name.endswith((" SC", " GB")) or "简" in name:
                return i
    return 0


def ranked(units: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The month's units in ranking order, each with its ``rank`` (ties share one); a unit
    without an on-time handling figure comes after every ranked one, its ``rank`` None."""

    def key(u: dict[str, Any]) -> tuple[Any, ...]:
        def high(v: float | None) -> float:
            return -v if v is not None else math.inf

        return (
            high(u["on_time_handle_rate"]),
            high(u["on_time_accept_rate"]),
            high(u["satisfaction"]),
            u["escalations"],
            -u["tickets"],
        )

    out: list[dict[str, Any]] = []
    for i, u in enumerate(sorted(units, key=lambda u: (key(u), u["unit"]))):
        if u["on_time_handle_rate"] is None:  # nothing to rank it by: last, unranked
            out.append({"rank": None, **u})
            continue
        tied = out and key(out[-1]) == key(u)
        out.append({"rank": out[-1]["rank"] if tied else i + 1, **u})
    return out


def _rank(u: dict[str, Any]) -> str:
    return "–" if u["rank"] is None else str(u["rank"])


def _text(name: str) -> str:
    """A name as a CSV cell a spreadsheet shows, never runs: one that starts like a formula is quoted."""
    return "'" + name if name.startswith(("=", "+", "-", "@", "\t", "\r")) else name


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return "\ufeff" + buf.getvalue()  # with a BOM, so that a spreadsheet reads it as UTF-8


def units_csv(units: list[dict[str, Any]], unit_name: Callable[[str], str], lang: Lang) -> str:
    """The ranking as CSV: rank, unit id and name, month, then the measures API's numbers."""
    t = TEXT[lang]
    head = [t["rank"], t["unit_id"], t["unit"], t["month"], *(t[c] for c in UNIT_COLUMNS)]
    return _csv(
        head,
        (
            [u["rank"], u["unit"], _text(unit_name(u["unit"])), u["month"], *(u[c] for c in UNIT_COLUMNS)]
            for u in units
        ),
    )


def sites_csv(sites: list[dict[str, Any]], site_name: Callable[[str], str], lang: Lang) -> str:
    """The season per site as CSV, with the measures API's numbers."""
    t = TEXT[lang]
    head = [
        t["node"],
        t["site"],
        t["season"],
        t["warning"],
        t["danger"],
        t["faults"],
        t["peak_depth_mm"],
        t["hours_above_threshold"],
    ]
    return _csv(
        head,
        (
            [
                s["node"],
                _text(site_name(s["node"])),
                s["season"],
                s["alerts"]["warning"],
                s["alerts"]["danger"],
                s["faults"],
                s["peak_depth_mm"],
                s["hours_above_threshold"],
            ]
            for s in sites
        ),
    )


# ----------------------------------------------------------------------------- PDF


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def _num(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


@dataclass(frozen=True)
class Bar:
    label: str
    parts: tuple[tuple[float, tuple[int, int, int]], ...]  # stacked (value, colour)
    text: str


BLUE, AMBER, RED, GREY = (44, 110, 180), (230, 160, 20), (200, 40, 40), (120, 120, 120)


class _Doc:
    """An A4 page layout on fpdf2 with one font, a header line and page numbers."""

    def __init__(self, font: Font, lang: Lang, title: str, subtitle: str) -> None:
        from fpdf import FPDF  # noqa: PLC0415 - a second to import: only when a PDF is made

        self.t = TEXT[lang]
        self.pdf = FPDF(orientation="portrait", unit="mm", format="A4")
        self.pdf.set_auto_page_break(False)
        self.pdf.set_margins(15, 15, 15)
        self.pdf.add_font("cjk", "", font.path, collection_font_number=font.index)
        self.font = font
        self.pdf.set_title(title)
        self.pdf.set_creator("Floodgate")
        self.title = title
        self.subtitle = subtitle
        self.pages = 0

    def page(self) -> None:
        self.pdf.add_page()
        self.pages += 1
        self.pdf.set_text_color(0, 0, 0)
        self.pdf.set_font("cjk", size=16 if self.pages == 1 else 11)
        self.pdf.set_xy(15, 12)
        self.pdf.cell(180, 9, self.title)
        if self.pages == 1:
            self.pdf.set_font("cjk", size=9)
            self.pdf.set_text_color(*GREY)
            self.pdf.set_xy(15, 21)
            self.pdf.cell(180, 5, self.subtitle)
        self.pdf.set_font("cjk", size=8)
        self.pdf.set_text_color(*GREY)
        self.pdf.set_xy(15, 285)
        self.pdf.cell(180, 5, self.t["page"].format(n=self.pages), align="C")
        self.pdf.set_text_color(0, 0, 0)

    def chart(self, y: float, height: float, title: str, bars: list[Bar]) -> None:
        """Horizontal bars from ``y``, in ``height`` mm: a label, the stacked parts, their text."""
        pdf = self.pdf
        pdf.set_font("cjk", size=11)
        pdf.set_xy(15, y)
        pdf.cell(180, 6, title)
        if not bars:
            pdf.set_font("cjk", size=9)
            pdf.set_xy(15, y + 8)
            pdf.cell(180, 5, self.t["none"])
            return
        top = y + 8
        row = min(7.0, (height - 8) / len(bars))
        label_w, bar_w = 55.0, 100.0
        biggest = max(sum(v for v, _ in b.parts) for b in bars) or 1.0
        pdf.set_font("cjk", size=min(9.0, row * 2.2))
        pdf.set_draw_color(*GREY)
        pdf.line(15 + label_w, top, 15 + label_w, top + row * len(bars))
        for i, b in enumerate(bars):
            ry = top + i * row
            pdf.set_xy(15, ry)
            pdf.cell(label_w - 2, row, b.label, align="R")
            x = 15 + label_w
            for value, colour in b.parts:
                w = bar_w * value / biggest
                if w > 0:
                    pdf.set_fill_color(*colour)
                    pdf.rect(x, ry + row * 0.15, w, row * 0.7, style="F")
                    x += w
            pdf.set_xy(x + 1.5, ry)
            pdf.cell(30, row, b.text)

    def table(self, header: Sequence[str], widths: Sequence[float], rows: list[list[str]]) -> None:
        """Rows on as many pages as they need (a new page for each ``TABLE_ROWS``)."""
        pdf = self.pdf
        chunks = [rows[i : i + TABLE_ROWS] for i in range(0, len(rows), TABLE_ROWS)] or [[]]
        for chunk in chunks:
            self.page()
            pdf.set_font("cjk", size=11)
            pdf.set_xy(15, 24)
            pdf.cell(180, 6, self.t["table"])
            pdf.set_font("cjk", size=7.5)
            pdf.set_fill_color(230, 236, 244)
            x = 15.0
            for text, w in zip(header, widths, strict=True):  # two lines where one is too narrow
                pdf.rect(x, 32, w, 8, style="DF")
                pdf.set_xy(x, 32)
                pdf.multi_cell(w, 4 if pdf.get_string_width(text) > w - 2 else 8, text, align="C")
                x += w
            y = 40.0
            for i, cells in enumerate(chunk or [[self.t["none"], *[""] * (len(header) - 1)]]):
                pdf.set_xy(15, y)
                if i % 2:
                    pdf.set_fill_color(246, 246, 246)
                for j, (text, w) in enumerate(zip(cells, widths, strict=True)):
                    pdf.cell(w, 7, text, border=1, fill=bool(i % 2), align="L" if j < 2 else "R")
                y += 7

    def output(self) -> bytes:
        """The PDF; NoFont if the font lacks a glyph of its text (a box would stand in its place)."""
        missing = getattr(self.pdf.fonts["cjk"], "missing_glyphs", [])  # a TTF's (ours is one)
        if missing:
            shown = "".join(sorted({chr(c) for c in missing}))[:40]
            raise NoFont(f"the report font {self.font.path} has no glyph for {shown!r}: set api.report_font")
        return bytes(self.pdf.output())


def _stamp(now_ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(now_ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def units_pdf(
    units: list[dict[str, Any]],
    unit_name: Callable[[str], str],
    month: str,
    lang: Lang,
    font: Font,
    now_ms: int,
    tz: ZoneInfo,
) -> bytes:
    """The ranking: a page of charts (on-time handling, on-time acceptance), then the table."""
    t = TEXT[lang]
    doc = _Doc(
        font,
        lang,
        t["units_title"].format(month=month),
        t["generated"].format(at=_stamp(now_ms, tz), tz=tz.key),
    )
    doc.page()
    top = units[:CHART_ROWS]
    more = t["chart_top"].format(n=CHART_ROWS) if len(units) > CHART_ROWS else ""

    def bars(field: str) -> list[Bar]:
        return [
            Bar(
                f"{u['rank']}. {unit_name(u['unit'])}" if u["rank"] else f"– {unit_name(u['unit'])}",
                ((u[field] or 0.0, BLUE),),
                _pct(u[field]),
            )
            for u in top
        ]

    doc.chart(30, 120, t["chart_handle"] + more, bars("on_time_handle_rate"))
    doc.chart(155, 120, t["chart_accept"] + more, bars("on_time_accept_rate"))
    header = [t["rank"], t["unit"], *(t[c] for c in UNIT_COLUMNS)]
    widths = [12, 40, 14, 16, 16, 20, 20, 15, 13, 14]
    rows = [
        [
            _rank(u),
            unit_name(u["unit"]),
            str(u["tickets"]),
            _pct(u["on_time_accept_rate"]),
            _pct(u["on_time_handle_rate"]),
            _num(u["handling_hours_avg"]),
            _num(u["handling_hours_p90"]),
            _pct(u["satisfaction"]),
            str(u["evaluated"]),
            str(u["escalations"]),
        ]
        for u in units
    ]
    doc.table(header, widths, rows)
    return doc.output()


def sites_pdf(
    sites: list[dict[str, Any]],
    site_name: Callable[[str], str],
    season: int,
    span: tuple[str, str],
    lang: Lang,
    font: Font,
    now_ms: int,
    tz: ZoneInfo,
) -> bytes:
    """The season per site: a page of charts (peak depth, warnings and dangers), then the table."""
    t = TEXT[lang]
    sub = t["season_span"].format(start=f"{season}-{span[0]}", end=f"{season}-{span[1]}")
    doc = _Doc(
        font,
        lang,
        t["sites_title"].format(season=season),
        sub + " · " + t["generated"].format(at=_stamp(now_ms, tz), tz=tz.key),
    )
    doc.page()
    more = t["chart_top"].format(n=CHART_ROWS) if len(sites) > CHART_ROWS else ""
    by_peak = sorted(sites, key=lambda s: -(s["peak_depth_mm"] or 0.0))[:CHART_ROWS]
    peaks = [
        Bar(site_name(s["node"]), ((s["peak_depth_mm"] or 0.0, RED),), _num(s["peak_depth_mm"], 0))
        for s in by_peak
    ]
    by_alerts = sorted(sites, key=lambda s: -(s["alerts"]["warning"] + s["alerts"]["danger"]))[:CHART_ROWS]
    alerts = [
        Bar(
            site_name(s["node"]),
            ((s["alerts"]["warning"], AMBER), (s["alerts"]["danger"], RED)),
            f"{s['alerts']['warning']} / {s['alerts']['danger']}",
        )
        for s in by_alerts
    ]
    doc.chart(30, 120, t["chart_peak"] + more, peaks)
    doc.chart(155, 120, t["chart_alerts"] + more, alerts)
    header = [
        t["site"],
        t["node"],
        t["warning"],
        t["danger"],
        t["faults"],
        t["peak_depth_mm"],
        t["hours_above_threshold"],
    ]
    widths = [50, 30, 16, 16, 16, 26, 26]
    rows = [
        [
            site_name(s["node"]),
            s["node"],
            str(s["alerts"]["warning"]),
            str(s["alerts"]["danger"]),
            str(s["faults"]),
            _num(s["peak_depth_mm"], 0),
            _num(s["hours_above_threshold"], 2),
        ]
        for s in sites
    ]
    doc.table(header, widths, rows)
    return doc.output()
