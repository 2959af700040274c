"""The edge agent: one box per site.

Rooms: ``config`` (profiles and site configs), ``bus`` (the field-bus owners),
``devices`` (register codecs and device drivers), ``rules`` (filters, alert and
fault state machines), ``actuation`` (board and gate control), ``outbox``
(durable store-and-forward), ``uplink`` (MQTT), ``commands`` (signed cloud
commands) and ``agent`` (wires the rooms together).
"""
