"""The collector's own counters, gauges and histograms, written in the Prometheus text format.

Any part of the collector (an intake, the notifier, the live feed) takes the
collector's :class:`Metrics` and declares what it counts::

    lag = metrics.gauge("floodgate_intake_consumer_lag", "Messages the intake has not taken yet.")
    lag.set(1234)
    metrics.counter("floodgate_intake_redeliveries_total", "Messages delivered again.").inc()

Declaring the same name twice gives the same metric (of the same type), so
parts need not share objects. Every sample carries the ``collector`` label
(the collector's ``client_id``): with N collectors behind one scrape job,
their rates are told apart. ``GET /metrics`` writes the registry after the
API's own lines (``cloud.api.routes.ops``).

The names the intakes fill (MQTT today; the NATS JetStream intake fills the same
ones) are declared once in :class:`IntakeMetrics`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

Labels = tuple[tuple[str, str], ...]
# Upper bounds: a batch's message count, a commit's seconds.
BATCH_BUCKETS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
SECONDS_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _labels(labels: dict[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def _text(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, base: Labels) -> None:
        self.name = name
        self.help = help_
        self._base = base

    def _key(self, labels: dict[str, str]) -> Labels:
        return _labels({**dict(self._base), **labels})

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self.samples()]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_: str, base: Labels) -> None:
        super().__init__(name, help_, base)
        self._values: dict[Labels, float] = {}

    def inc(self, n: float = 1, **labels: str) -> None:
        if n < 0:
            raise ValueError(f"{self.name}: a counter only goes up (inc by {n})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + n

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0)

    def samples(self) -> Iterable[str]:
        if not self._values:
            yield f"{self.name}{_text(self._base)} 0"
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_text(key)} {_num(v)}"


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help_: str, base: Labels) -> None:
        super().__init__(name, help_, base)
        self._values: dict[Labels, float] = {}

    def set(self, v: float, **labels: str) -> None:
        self._values[self._key(labels)] = v

    def value(self, **labels: str) -> float | None:
        return self._values.get(self._key(labels))

    def samples(self) -> Iterable[str]:
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_text(key)} {_num(v)}"


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, base: Labels, buckets: Sequence[float]) -> None:
        super().__init__(name, help_, base)
        self.buckets = tuple(sorted(buckets))
        self._counts = [0] * (len(self.buckets) + 1)  # the last: above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self._counts[bisect.bisect_left(self.buckets, v)] += 1
        self.count += 1
        self.sum += v

    def samples(self) -> Iterable[str]:
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self._counts, strict=True):
            running += n
            yield f"{self.name}_bucket{_text(_labels({**dict(self._base), 'le': _num(bound)}))} {running}"
        yield f"{self.name}_sum{_text(self._base)} {_num(self.sum)}"
        yield f"{self.name}_count{_text(self._base)} {self.count}"


class Metrics:
    """A registry: metrics by name, each sample labelled with ``labels`` (e.g. the collector)."""

    def __init__(self, **labels: str) -> None:
        self.labels = _labels(labels)
        self._metrics: dict[str, _Metric] = {}

    def _get(self, name: str, kind: type[_Metric]) -> _Metric | None:
        m = self._metrics.get(name)
        if m is not None and type(m) is not kind:
            raise ValueError(f"metric {name} is a {m.kind}, not a {kind.kind}")
        return m

    def counter(self, name: str, help_: str) -> Counter:
        m = self._get(name, Counter)
        if m is None:
            m = self._metrics[name] = Counter(name, help_, self.labels)
        assert isinstance(m, Counter)
        return m

    def gauge(self, name: str, help_: str) -> Gauge:
        m = self._get(name, Gauge)
        if m is None:
            m = self._metrics[name] = Gauge(name, help_, self.labels)
        assert isinstance(m, Gauge)
        return m

    def histogram(self, name: str, help_: str, buckets: Sequence[float]) -> Histogram:
        m = self._get(name, Histogram)
        if m is None:
            m = self._metrics[name] = Histogram(name, help_, self.labels, buckets)
        assert isinstance(m, Histogram)
        return m

    def render(self) -> str:
        """Every metric in the text format, by name."""
        lines: list[str] = []
        for name in sorted(self._metrics):
            lines += self._metrics[name].render()
        return "\n".join(lines) + "\n" if lines else ""


class IntakeMetrics:
    """What an intake (MQTT, NATS JetStream) reports, under the same names whichever it is."""

    def __init__(self, metrics: Metrics) -> None:
        self.batch_size = metrics.histogram(
            "floodgate_intake_batch_messages", "Messages per committed batch.", BATCH_BUCKETS
        )
        self.commit_seconds = metrics.histogram(
            "floodgate_intake_commit_seconds",
            "Time to commit one batch (ingest and tickets).",
            SECONDS_BUCKETS,
        )
        self.batches = metrics.counter(
            "floodgate_intake_batches_total", "Batches committed by this collector."
        )
        self.redeliveries = metrics.counter(
            "floodgate_intake_redeliveries_total",
            "Messages the broker or stream delivered again (not yet acknowledged when a collector went).",
        )
        self.consumer_lag = metrics.gauge(
            "floodgate_intake_consumer_lag",
            "Messages the shared consumer still holds for the collectors (JetStream; asked every 5 s"
            " and after each fetch).",
        )
        self.connected = metrics.gauge("floodgate_intake_connected", "1 when the intake is connected.")
