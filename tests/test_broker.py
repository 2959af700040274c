"""Broker settings both sides share: the reconnect schedule."""

from __future__ import annotations

import itertools

from cloud.config import Broker as CollectorBroker
from edge.config.site import Broker as SiteBroker
from floodgate.broker import BrokerSettings, reconnect_delays


def test_reconnect_waits_double_up_to_a_low_cap_each_jittered() -> None:
    """Issue 14 §3: seconds, not 30 s; a fleet that lost the broker together does not return in one wave."""
    waits = list(itertools.islice(reconnect_delays(0.2, 5.0), 200))
    steps = [0.2, 0.4, 0.8, 1.6, 3.2] + [5.0] * 195
    assert all(step / 2 <= w <= step for w, step in zip(waits, steps, strict=True))
    capped = waits[5:]
    assert max(capped) <= 5.0 and len({round(w, 6) for w in capped}) > 100  # spread, not one value
    assert BrokerSettings(url="mqtt://h").reconnect_max_s == 5.0


def test_site_and_collector_configs_default_to_a_low_cap() -> None:
    assert SiteBroker().reconnect_max_s == 5.0
    assert CollectorBroker().reconnect_max_s == 2.0
