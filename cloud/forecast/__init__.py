"""Each site's depth forecast from rainfall (issue 17 §2-3).

``model``: the per-site storage model (pure functions: fit, forward run, band).
"""

FORECAST_DEV = "rain-model"  # the device id of the collector's own forecast episodes
