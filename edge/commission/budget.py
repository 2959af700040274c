"""The bus time budget as ``check-config --explain`` shows it (see ``edge.bus.budget``)."""

from __future__ import annotations

from typing import Any

from edge.bus.budget import BusBudget, bus_budget
from edge.config.site import LoadedSite
from edge.devices.drivers import make_driver
from edge.rules.alerts import Transition
from edge.rules.faults import FaultChange
from floodgate.wire import AlertKind, Quality


class _NoSink:
    """Drivers built only to ask what they read; nothing is ever polled."""

    def reading(self, dev: str, ts: int, metric: str, value: float, quality: Quality) -> None:
        pass

    def transition(
        self, dev: str, kind: AlertKind, t: Transition, unit: str | None, reason: str | None = None
    ) -> None:
        pass

    def fault(self, dev: str, change: FaultChange, detail: dict[str, Any]) -> None:
        pass


def site_budgets(site: LoadedSite) -> list[BusBudget]:
    c = site.config
    sink = _NoSink()
    out = []
    for bus in c.buses:
        devs = [make_driver(d, site.profiles[d.profile], sink) for d in c.devices if d.bus == bus.id]
        out.append(bus_budget(bus, devs))
    return out


def _rates(b: BusBudget, fast: list[str]) -> dict[str, Any]:
    return {
        "polls_per_s_needed": round(b.polls_needed(fast), 2),
        "polls_per_s_available": round(b.polls_available(fast), 2),
        "busy_pct": round(100 * b.busy(fast), 1),
        "fits": b.fits(fast),
    }


def budgets(site: LoadedSite) -> list[dict[str, Any]]:
    out = []
    for b in site_budgets(site):
        fast = b.adaptive_ids
        out.append(
            {
                "bus": b.bus_id,
                "line": b.line,
                "devices": [
                    {
                        "id": d.id,
                        "kind": d.kind,
                        "poll_ms": round(d.poll_time_s * 1000, 1),
                        "poll_s": d.poll_s,
                        "poll_fast_s": d.poll_fast_s,
                    }
                    for d in b.devices
                ],
                "write_ms": round(b.write_s * 1000, 1),
                "slow": _rates(b, []),
                "fast": _rates(b, fast),
                "adaptive": len(fast),
                "max_fast": b.max_fast(),
            }
        )
    return out


def as_lines(buses: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for b in buses:
        lines.append("")
        lines.append(f"Bus {b['bus']} ({b['line']}): time budget")
        for d in b["devices"]:
            rate = f"every {d['poll_s']:g} s"
            if d["poll_fast_s"] < d["poll_s"]:
                rate += f", {d['poll_fast_s']:g} s when wet, rising or near a threshold"
            lines.append(f"  {d['id']} ({d['kind']}): {d['poll_ms']:.0f} ms per poll, {rate}")
        if b["write_ms"]:
            lines.append(f"  a board or gate write with its read-back: {b['write_ms']:.0f} ms")
        for name, what in (("slow", "all dry and steady"), ("fast", "every sensor fast")):
            r = b[name]
            verdict = "fits" if r["fits"] else "OVER BUDGET"
            lines.append(
                f"  {what}: {r['polls_per_s_needed']:g} polls/s needed, "
                f"{r['polls_per_s_available']:g} available; bus busy {r['busy_pct']:g} % of each second "
                f"(plus a write): {verdict}"
            )
        if b["adaptive"] and not b["fast"]["fits"]:
            lines.append(
                f"  at most {b['max_fast']} of {b['adaptive']} sensors can be fast at once; "
                "beyond that the slow ones slip (urgent sensors are polled first)"
            )
    return lines
