"""Simulated field devices: real Modbus slaves built from firmware-config profiles.

``slave`` frames RTU and TCP, ``devices`` gives each profile kind its
behaviour, ``scenarios`` moves the water, ``pty`` makes socat serial pairs and
``site`` runs every device of a site config at once.
"""
