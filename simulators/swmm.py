"""Ground truth from EPA SWMM (issue 17 §4): underpass catchments built as .inp text, run by pyswmm.

Each :class:`Catchment` is a subcatchment draining into the sewer's wet well (a storage node below
the road), which a pump (or a gravity pipe) empties with a limited capacity into an outfall. The
road's low point, the **sag**, is a storage node whose invert is the road surface and whose
area–depth curve is the pond's shape (a road of ``road_width_m`` falling at ``grade`` to it from
both sides). Water reaches the road only when the wet well backs up above it, through a two-way
gully (an orifice without a flap gate), and drains back the same way: the sag's depth is exactly 0
while the road is dry, as a sensor reads it.

SWMM allows one simulation per process: :func:`simulate` runs one in this process;
:func:`simulate_many` runs each in a child process of its own. pyswmm is the optional extra ``swmm``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from simulators.scenarios import Scenario

ROAD_ELEV_M = 10.0
START = datetime(2026, 6, 1)
STEP_S = 60  # reporting and sampling step: one value a minute
ROUTING_STEP_S = 2  # dynamic wave at a fixed 2 s (a longer or variable step moves pump cycles)


@dataclass(frozen=True)
class Catchment:
    """One underpass and the area that drains to it."""

    name: str
    area_ha: float
    imperv_pct: float
    flow_length_m: float
    slope_pct: float
    well_area_m2: float  # wet well and sewer storage below the road, per m of depth
    well_depth_m: float  # wet well invert below the road
    outlet: Literal["pump", "gravity"]
    capacity_m3_s: float  # the pump's capacity, or (gravity) the pipe's diameter is sized from it
    road_width_m: float = 14.0
    grade: float = 0.04  # the road's slope down into the sag
    gully_area_m2: float = 0.5

    def sag_curve(self, max_depth_m: float = 1.5) -> list[tuple[float, float]]:
        """(depth m, surface area m²) of the pond: the wetted length grows as 2·depth/grade."""
        pts = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, max_depth_m]
        return [(d, max(2.0, self.road_width_m * 2 * d / self.grade)) for d in pts]


# A few underpasses, each unlike the others.
CATCHMENTS: dict[str, Catchment] = {
    c.name: c
    for c in (
        Catchment("tunnel-a", 6.0, 85.0, 120.0, 1.0, 150.0, 3.0, "pump", 1.3, road_width_m=24.0, grade=0.02),
        Catchment(
            "underpass-b", 12.0, 70.0, 200.0, 0.5, 300.0, 3.5, "pump", 2.0, road_width_m=30.0, grade=0.02
        ),
        Catchment("bridge-c", 3.0, 90.0, 80.0, 2.0, 60.0, 2.5, "gravity", 0.6, road_width_m=16.0, grade=0.03),
        Catchment(
            "underpass-d", 8.0, 60.0, 250.0, 0.3, 200.0, 3.0, "pump", 1.0, road_width_m=20.0, grade=0.015
        ),
    )
}


@dataclass(frozen=True)
class Truth:
    """What SWMM says happened, one value a minute from minute 0 of the rain series.

    ``depth_mm[k]`` is the sag's depth at the end of minute k − 1 (``depth_mm[0]`` = 0 at the
    start); ``rain_mm_h[k]`` the rain during minute k. Continuity errors are SWMM's, in percent.
    """

    catchment: str
    depth_mm: tuple[float, ...]
    rain_mm_h: tuple[float, ...]
    runoff_error_pct: float
    routing_error_pct: float

    @property
    def peak_mm(self) -> float:
        return max(self.depth_mm)


def _hhmm(minute: int) -> str:
    return f"{minute // 60}:{minute % 60:02d}"


def build_inp(c: Catchment, rain_mm_h: Sequence[float]) -> str:
    """The SWMM input text for ``c`` under ``rain_mm_h`` (one intensity per minute)."""
    minutes = len(rain_mm_h)
    end = minutes + 1  # step_advance drops the last sample: one step more
    well_max = c.well_depth_m + 1.5
    width = c.area_ha * 10000 / c.flow_length_m
    series = "\n".join(f"RAIN  {_hhmm(k)}  {v:.4f}" for k, v in enumerate(rain_mm_h))
    series += f"\nRAIN  {_hhmm(minutes)}  0"
    curve = "\n".join(
        f"SAGCURVE  {'Storage' if i == 0 else '       '}  {d:.3f}  {a:.2f}"
        for i, (d, a) in enumerate(c.sag_curve())
    )
    well_inv = ROAD_ELEV_M - c.well_depth_m
    gully_w = c.gully_area_m2 / 0.25
    xsections = [f"G1  RECT_CLOSED  0.25  {gully_w:.3f}  0  0"]
    curves = [curve]
    if c.outlet == "pump":
        outfall_elev = ROAD_ELEV_M + 1.0
        links = "[PUMPS]\n;;Name From To Curve Status Startup Shutoff\nP1  WELL  OUT  PCURVE  ON  0  0\n"
        q = c.capacity_m3_s
        curves.insert(0, f"PCURVE  Pump4  0  0\nPCURVE  0.3  {q:.3f}\nPCURVE  20  {q:.3f}")
    else:
        outfall_elev = well_inv - 1.0
        # a circular pipe that carries about ``capacity`` full at a 1 % slope (Manning, n = 0.013)
        diameter = (c.capacity_m3_s * 0.013 / (0.312 * 0.1)) ** (3 / 8)
        links = "[CONDUITS]\n;;Name From To Length Roughness InOffset OutOffset InitFlow MaxFlow\n"
        links += "C1  WELL  OUT  100  0.013  0  0  0  0\n"
        xsections.append(f"C1  CIRCULAR  {diameter:.3f}  0  0  0  1")
    stop = START + timedelta(minutes=end)
    xs = "\n".join(xsections)
    cv = "\n".join(curves)
    return f"""[TITLE]
{c.name}

[OPTIONS]
FLOW_UNITS CMS
INFILTRATION HORTON
FLOW_ROUTING DYNWAVE
LINK_OFFSETS DEPTH
ALLOW_PONDING NO
START_DATE 06/01/2026
START_TIME 00:00:00
REPORT_START_DATE 06/01/2026
REPORT_START_TIME 00:00:00
END_DATE {stop:%m/%d/%Y}
END_TIME {stop:%H:%M:%S}
REPORT_STEP 00:01:00
WET_STEP 00:01:00
DRY_STEP 00:01:00
ROUTING_STEP {ROUTING_STEP_S}
VARIABLE_STEP 0
MIN_SURFAREA 1.0

[RAINGAGES]
RG1  INTENSITY  0:01  1.0  TIMESERIES  RAIN

[SUBCATCHMENTS]
S1  RG1  WELL  {c.area_ha:.3f}  {c.imperv_pct:.1f}  {width:.2f}  {c.slope_pct:.2f}  0

[SUBAREAS]
S1  0.015  0.15  2.0  6.0  25  OUTLET

[INFILTRATION]
S1  75  6  4  7  0

[OUTFALLS]
OUT  {outfall_elev:.3f}  FREE  NO

[STORAGE]
;;Name Elev MaxDepth InitDepth Shape Curve/Params SurDepth Fevap
WELL  {well_inv:.3f}  {well_max:.3f}  0  FUNCTIONAL  0  0  {c.well_area_m2:.2f}  0  0
SAG   {ROAD_ELEV_M:.3f}  1.500  0  TABULAR  SAGCURVE  0  0

[ORIFICES]
;;Name From To Type Offset Qcoeff Gated CloseTime
G1  WELL  SAG  SIDE  {c.well_depth_m:.3f}  0.65  NO  0

{links}
[XSECTIONS]
{xs}

[CURVES]
{cv}

[TIMESERIES]
{series}
"""


def simulate(c: Catchment, rain_mm_h: Sequence[float], workdir: Path | None = None) -> Truth:
    """Run SWMM for ``c`` under ``rain_mm_h`` in this process (SWMM allows one at a time per process)."""
    from pyswmm import Nodes, Simulation  # noqa: PLC0415 (the optional extra ``swmm``)

    with tempfile.TemporaryDirectory(dir=workdir, prefix=f"swmm-{c.name}-") as tmp:
        inp = Path(tmp) / f"{c.name}.inp"
        inp.write_text(build_inp(c, rain_mm_h), encoding="utf-8")
        errors: dict[str, float] = {}
        depth = [0.0]
        with Simulation(str(inp)) as sim:
            sag = Nodes(sim)["SAG"]  # Nodes() is a one-shot iterator: index it once

            def _after_end() -> None:  # continuity reads 0.0 inside and after the `with` block
                errors["runoff"] = float(sim.runoff_error)
                errors["routing"] = float(sim.flow_routing_error)

            sim.add_after_end(_after_end)
            sim.step_advance(STEP_S)
            for _ in sim:
                depth.append(max(0.0, float(sag.depth)) * 1000.0)
    n = len(rain_mm_h)
    return Truth(
        c.name,
        tuple(depth[: n + 1]),
        tuple(float(v) for v in rain_mm_h),
        errors.get("runoff", float("nan")),
        errors.get("routing", float("nan")),
    )


def _run_child(c: Catchment, rain_mm_h: Sequence[float]) -> Truth:
    job = json.dumps({"catchment": asdict(c), "rain_mm_h": list(rain_mm_h)})
    done = subprocess.run(
        [sys.executable, "-m", "simulators.swmm"], input=job, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"SWMM run of {c.name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    out = json.loads(done.stdout)
    return Truth(
        out["catchment"],
        tuple(out["depth_mm"]),
        tuple(out["rain_mm_h"]),
        out["runoff_error_pct"],
        out["routing_error_pct"],
    )


def simulate_many(jobs: Sequence[tuple[Catchment, Sequence[float]]], processes: int = 2) -> list[Truth]:
    """Run each job in a child process of its own (``python -m simulators.swmm``: one SWMM simulation
    per process), ``processes`` at a time; the results in the jobs' order. Blocking: from async code
    call it through ``asyncio.to_thread``."""
    with ThreadPoolExecutor(max(1, processes)) as pool:
        return list(pool.map(lambda job: _run_child(*job), jobs))


def simulate_isolated(c: Catchment, rain_mm_h: Sequence[float]) -> Truth:
    """One run in a fresh process, so the caller's process may ask for any number of them."""
    return _run_child(c, rain_mm_h)


def _main() -> int:
    """A child run: a job as JSON on stdin, its :class:`Truth` as JSON on stdout."""
    job = json.loads(sys.stdin.read())
    truth = simulate(Catchment(**job["catchment"]), job["rain_mm_h"])
    sys.stdout.write(json.dumps(asdict(truth)))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())


def scenario_from(truth: Truth, noise_mm: float = 2.0, seed: int = 0, delay_s: float = 0.0) -> Scenario:
    """A site scenario that plays ``truth``: scenario second 60·k is minute k of the SWMM run.

    The depth goes linearly from one minute's value to the next; the rain is a step per minute
    (each minute's intensity holds through it), so a rain gauge counts exactly SWMM's rain.
    """
    depth = [(60.0, d) for d in truth.depth_mm[1:]]
    rain: list[tuple[float, float]] = []
    for v in truth.rain_mm_h:
        rain += [(0.0, v), (60.0, v)]
    rain.append((0.0, 0.0))
    return Scenario(
        f"swmm:{truth.catchment}", depth, noise_mm=noise_mm, seed=seed, delay_s=delay_s, rain=rain
    )
