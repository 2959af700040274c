"""Storm intensity formulas (IDF) as data: q = 167·A / (t + b)^n, per return period, with their source.

The parameters live in ``guangzhou.yaml`` beside this module, each return period marked
``confirmed``, ``unconfirmed`` or ``derived`` (computed here from a confirmed one, not taken from
the source): see that file. ``load_idf()`` reads and checks it; a bad file is a ``ConfigError``
naming the file, the line and the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML

from floodgate.errors import ConfigError, ConfigIssue

GUANGZHOU = Path(__file__).with_name("guangzhou.yaml")
Status = Literal["confirmed", "unconfirmed", "derived"]


@dataclass(frozen=True)
class Idf:
    """One return period's formula: ``A`` in mm/min·min^n (167·A in L/(s·ha)), ``b`` in min, ``n``."""

    p: float
    a: float
    b: float
    n: float
    status: Status
    note: str = ""

    def intensity_mm_min(self, t_min: float) -> float:
        """The mean intensity (mm/min) of a rain lasting ``t_min`` minutes: q/167."""
        return self.a / float((t_min + self.b) ** self.n)

    def q(self, t_min: float) -> float:
        """The design intensity in L/(s·ha)."""
        return 167.0 * self.intensity_mm_min(t_min)

    def depth_mm(self, t_min: float) -> float:
        """The depth (mm) of the heaviest ``t_min`` minutes: H(t) = A·t / (t + b)^n (0 for t ≤ 0)."""
        return 0.0 if t_min <= 0 else self.a * t_min / (t_min + self.b) ** self.n


@dataclass(frozen=True)
class IdfTable:
    source: str
    correction: str
    peak_ratio: float
    periods: dict[float, Idf]
    n_interval_i: tuple[float, float, float]  # (a, b, offset) of n = a + b·ln(P − offset)

    def __getitem__(self, p: float) -> Idf:
        if p not in self.periods:
            raise KeyError(f"no formula for return period {p} y; known: {sorted(self.periods)}")
        return self.periods[p]

    def interval_i_n(self, p: float) -> float:
        """The corrected interval-I exponent n = 0.856 − 0.057·ln(P − 0.120) (穗水规字〔2018〕5号 附录Ⅰ)."""
        a, b, offset = self.n_interval_i
        return a + b * math.log(p - offset)


def _line(node: Any, key: str | int | None = None) -> int | None:
    """The 1-based line of ``node`` (or of its ``key``) in a round-trip-loaded YAML file."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return None
    try:
        return (
            int(lc.key(key)[0] if isinstance(key, str) else lc.item(key)[0] if key is not None else lc.line)
            + 1
        )
    except (KeyError, IndexError, TypeError):
        return int(lc.line) + 1


def _fail(path: Path, node: Any, key: str, message: str, sub: str | int | None = None) -> ConfigError:
    return ConfigError([ConfigIssue(str(path), _line(node, sub), key, message)])


def _num(path: Path, raw: Any, key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, raw, f"{where}{key}", f"must be a number (got {value!r})", key)
    return float(value)


def load_idf(path: Path = GUANGZHOU) -> IdfTable:
    """The formulas of ``path``; derived periods are computed from their ``derived_from`` period."""
    data = YAML(typ="rt").load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("periods"), list):
        raise _fail(path, data, "periods", "needs a list of return periods")
    c = _num(path, data, "derived_c", "")
    given: dict[float, Idf] = {}
    derived: list[tuple[float, float, str, int]] = []
    for i, raw in enumerate(data["periods"]):
        where = f"periods.{i}."
        if not isinstance(raw, dict):
            raise _fail(path, data["periods"], where[:-1], "must be a mapping", i)
        p = _num(path, raw, "p", where)
        status = raw.get("status")
        if status not in ("confirmed", "unconfirmed", "derived"):
            raise _fail(
                path,
                raw,
                f"{where}status",
                f"must be confirmed, unconfirmed or derived (got {status!r})",
                "status",
            )
        if p in given or any(p == d[0] for d in derived):
            raise _fail(path, raw, f"{where}p", f"return period {p:g} given twice", "p")
        note = str(raw.get("note", ""))
        if status == "derived":
            derived.append((p, _num(path, raw, "derived_from", where), note, i))
            continue
        a167, b, n = (_num(path, raw, k, where) for k in ("a167", "b", "n"))
        given[p] = Idf(p, a167 / 167.0, b, n, status, note)
    periods = dict(given)
    for p, base_p, note, i in derived:
        base = given.get(base_p)
        if base is None or base.status != "confirmed":
            raw = data["periods"][i]
            raise _fail(
                path,
                raw,
                f"periods.{i}.derived_from",
                f"P = {base_p:g} is not a confirmed period",
                "derived_from",
            )
        factor = (1 + c * math.log10(p)) / (1 + c * math.log10(base_p))
        periods[p] = Idf(p, base.a * factor, base.b, base.n, "derived", note)
    ratio = _num(path, data, "chicago_peak_ratio", "")
    if not 0 < ratio < 1:
        raise _fail(
            path, data, "chicago_peak_ratio", f"must be between 0 and 1 (got {ratio:g})", "chicago_peak_ratio"
        )
    corr = data.get("interval_I_n")
    if not isinstance(corr, dict):
        raise _fail(path, data, "interval_I_n", "needs a mapping (a, b, p_offset)")
    n_i = (
        _num(path, corr, "a", "interval_I_n."),
        _num(path, corr, "b", "interval_I_n."),
        _num(path, corr, "p_offset", "interval_I_n."),
    )
    return IdfTable(
        str(data.get("source", "")),
        str(data.get("correction", "")),
        ratio,
        dict(sorted(periods.items())),
        n_i,
    )
