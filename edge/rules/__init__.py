"""Deciding: noise filters, the alert state machine and sensor fault tracking.

Everything here is pure: it takes timestamps as arguments and never reads a
clock, so tests drive time directly.
"""
