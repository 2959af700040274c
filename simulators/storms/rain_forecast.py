"""Forecasts of a storm as a weather service would issue them, with errors that grow with lead time.

Every ``every_min`` minutes a forecast is issued for the next ``horizon_min`` minutes in steps of
``step_min``: the best estimate, ensemble ``members`` and ``quantiles`` taken from them. The truth
is one draw from the forecast's own spread: the best estimate is the truth displaced in time by
``timing_min_per_h`` × (lead in hours) × z and scaled by exp(``amplitude`` × √(lead in hours) × z')
(mean-preserving), with z, z' standard normal; each member draws its own displacement around the
best estimate the same way. Errors of successive issues are correlated (``persistence``), as a
forecast that was early stays early for a while.

A storm is **missed** with chance ``p_miss``: forecasts show it only at leads of
``see_lead_min`` or less (once radar sees it coming). A **false storm** (``phantom``) shows in
forecasts at leads beyond ``see_lead_min`` and never falls.

Seeded with :func:`seed_for` (a hash of the parts' text that is the same in every process;
Python's ``hash()`` of a string is not).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any


def seed_for(*parts: object) -> int:
    """A 64-bit seed from ``parts`` (their ``repr``), the same in every process."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class ForecastErrors:
    """How wrong the forecasts are. ``scale`` multiplies the timing and amplitude errors (a sweep)."""

    timing_min_per_h: float = 12.0
    amplitude: float = 0.35
    persistence: float = 0.7
    p_miss: float = 0.1
    see_lead_min: float = 20.0
    members: int = 12
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    scale: float = 1.0

    def scaled(self, scale: float) -> ForecastErrors:
        return replace(self, scale=scale)


@dataclass(frozen=True)
class RainForecast:
    """One issue: intensities (mm/h) per ``step_min`` step from ``issued_min`` (timeline minutes)."""

    issued_min: int
    step_min: int
    mm_h: tuple[float, ...]
    members: tuple[tuple[float, ...], ...] = ()
    quantiles: dict[float, tuple[float, ...]] = field(default_factory=dict)

    def to_document(self, node: str, start: datetime, source: str = "floodgate-sim") -> dict[str, Any]:
        """This forecast as a ``floodgate.rainfall/1`` document for ``node``; minute 0 of the
        timeline is ``start`` (an aware datetime)."""
        t0 = start + timedelta(minutes=self.issued_min)
        steps = [(t0 + timedelta(minutes=self.step_min * i)).isoformat() for i in range(len(self.mm_h) + 1)]
        series: dict[str, Any] = {"node": node, "mm_h": [round(v, 2) for v in self.mm_h]}
        if self.members:
            series["members"] = [[round(v, 2) for v in m] for m in self.members]
        if self.quantiles:
            series["quantiles"] = {f"{q:g}": [round(v, 2) for v in vs] for q, vs in self.quantiles.items()}
        return {
            "format": "floodgate.rainfall/1",
            "issued": t0.isoformat(),
            "source": source,
            "steps": steps,
            "sites": [series],
        }


def _at(series: Sequence[float], minute: float) -> float:
    """The intensity of the minute holding ``minute`` (0 outside the series)."""
    k = math.floor(minute)
    return series[k] if 0 <= k < len(series) else 0.0


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def issue_forecasts(
    truth_mm_h: Sequence[float],
    seed: int,
    errors: ForecastErrors = ForecastErrors(),
    every_min: int = 10,
    horizon_min: int = 180,
    step_min: int = 10,
    phantom_mm_h: Sequence[float] | None = None,
) -> list[RainForecast]:
    """The forecasts issued over a timeline whose rain per minute (mm/h) is ``truth_mm_h``.

    ``phantom_mm_h`` (same timeline) is a false storm: seen in forecasts, never falling.
    """
    rng = random.Random(seed)
    missed = rng.random() < errors.p_miss
    n_draws = 1 + errors.members
    z_t = [rng.gauss(0, 1) for _ in range(n_draws)]
    z_a = [rng.gauss(0, 1) for _ in range(n_draws)]
    rho = errors.persistence
    keep = math.sqrt(1 - rho * rho)
    out: list[RainForecast] = []
    for issued in range(0, len(truth_mm_h), every_min):
        if issued:
            z_t = [rho * z + keep * rng.gauss(0, 1) for z in z_t]
            z_a = [rho * z + keep * rng.gauss(0, 1) for z in z_a]
        draws: list[list[float]] = []
        for d in range(n_draws):
            steps: list[float] = []
            for s in range(horizon_min // step_min):
                acc = 0.0
                for m in range(step_min):
                    minute = issued + s * step_min + m
                    lead_h = (minute - issued + 0.5) / 60
                    # the best estimate (draw 0) is off the truth; each member is off the best estimate
                    z_time = z_t[0] + (z_t[d] if d else 0.0)
                    z_amp = z_a[0] + (z_a[d] if d else 0.0)
                    shift = errors.scale * errors.timing_min_per_h * lead_h * z_time
                    sig = errors.scale * errors.amplitude * math.sqrt(lead_h)
                    amp = math.exp(sig * z_amp - sig * sig * (2 if d else 1) / 2)  # mean-preserving
                    seen = (minute - issued) <= errors.see_lead_min
                    rain = 0.0 if (missed and not seen) else _at(truth_mm_h, minute + shift)
                    if phantom_mm_h is not None and not seen:
                        rain += _at(phantom_mm_h, minute + shift)
                    acc += rain * amp
                steps.append(acc / step_min)
            draws.append(steps)
        members = tuple(tuple(m) for m in draws[1:])
        quantiles = (
            {
                q: tuple(_quantile([m[i] for m in members], q) for i in range(len(draws[0])))
                for q in errors.quantiles
            }
            if members
            else {}
        )
        out.append(RainForecast(issued, step_min, tuple(draws[0]), members, quantiles))
    return out
