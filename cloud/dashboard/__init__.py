"""The alert dashboard: static files the collector serves at ``/`` (no CDN: works offline)."""

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
