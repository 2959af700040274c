"""The process settings a service runs with."""

from __future__ import annotations

import gc

from floodgate.runner import SERVICE_GC_THRESHOLDS, tune_gc


def test_tune_gc_freezes_start_up_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == SERVICE_GC_THRESHOLDS
        assert gc.get_freeze_count() > 0, "what start-up built is out of the collector's way"
        young = gc.get_count()[0]
        garbage = [[] for _ in range(1000)]  # fewer new objects than the threshold: no collection yet
        assert gc.get_count()[0] >= young + 1000
        del garbage
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
