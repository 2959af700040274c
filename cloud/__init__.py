"""The cloud collector (issue 3): MQTT ingest, storage, alerts, tickets, API, dashboard.

Not built yet; the wire contract it will speak is :mod:`floodgate.wire`.
"""
