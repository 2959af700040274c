"""Design storms (issue 17 §4): the Guangzhou storm formula as data, hyetographs, forecasts of them.

- ``idf``: q = 167·A/(t + b)^n per return period, from ``guangzhou.yaml`` with its source;
- ``hyetograph``: Chicago and multi-peak storms as rain per minute, and the bench's storm library;
- ``rain_forecast``: forecasts of a storm issued every few minutes, with errors that grow with lead
  time, ensemble members and quantiles, misses and false storms, seeded.
"""

from simulators.storms.hyetograph import Storm, chicago, dry, multi_peak, storm_library
from simulators.storms.idf import Idf, IdfTable, load_idf

__all__ = ["Idf", "IdfTable", "Storm", "chicago", "dry", "load_idf", "multi_peak", "storm_library"]
