"""Floodgate: urban flood warning at the roadside.

The ``floodgate`` package holds what every part shares: the MQTT wire contract
(:mod:`floodgate.wire`), ids, the exception tree and the command-line entry
point. ``edge``, ``cloud`` and ``simulators`` are sibling packages.
"""

__version__ = "0.1.0"
