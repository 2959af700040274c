"""The process settings a service runs with."""

from __future__ import annotations

import gc
import sys

from floodgate.runner import SERVICE_GC_THRESHOLDS, SERVICE_SWITCH_INTERVAL_S, tune_for_service


def test_tune_for_service_freezes_start_up_and_sets_the_gc_and_gil() -> None:
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_for_service()
        assert gc.get_threshold() == SERVICE_GC_THRESHOLDS
        assert sys.getswitchinterval() == SERVICE_SWITCH_INTERVAL_S
        assert gc.get_freeze_count() > 0, "what start-up built is out of the collector's way"
        young = gc.get_count()[0]
        garbage = [[] for _ in range(1000)]  # fewer new objects than the threshold: no collection yet
        assert gc.get_count()[0] >= young + 1000
        del garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        sys.setswitchinterval(interval)
