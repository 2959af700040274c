"""Broker connection settings both sides share: URL, credentials, TLS.

Kept free of any MQTT library import so the contract package stays small;
``edge.uplink`` and the collector turn these into a client.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from msgspec import Struct


class Tls(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``broker.tls`` block of a site config and of the collector's config."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False  # skip certificate checks: for a lab, never for a city


@dataclass(frozen=True)
class BrokerSettings:
    url: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    protocol: str = "3.1.1"
    reconnect_max_s: float = 5.0
    # Every broker to try, in order (``url`` is the one in use); empty: ``url`` alone.
    urls: tuple[str, ...] = ()

    @property
    def candidates(self) -> tuple[str, ...]:
        return self.urls or (self.url,)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlsplit(self.url)
        return u.port or (8883 if self.tls else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        if self.tls_insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def url_problem(url: str) -> str | None:
    """What is wrong with an MQTT broker URL, or None."""
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        return "url must look like mqtt://host:1883 or mqtts://host:8883"
    return None


def urls_problems(urls: list[str]) -> list[tuple[int | None, str]]:
    """What is wrong with a ``urls`` list of brokers: (index or None for the list, problem)."""
    out: list[tuple[int | None, str]] = []
    if not urls:
        out.append((None, "names no broker: give one URL or more, or leave it out for url"))
    for i, url in enumerate(urls):
        problem = url_problem(url)
        if problem:
            out.append((i, problem.replace("url must", "each of urls must")))
    if len(set(urls)) < len(urls):
        out.append((None, "names a broker twice"))
    return out


def reconnect_delays(first_s: float, max_s: float) -> Iterator[float]:
    """Waits before each reconnect: doubling from ``first_s`` up to ``max_s``, each jittered.

    Each wait is drawn between half and all of its step ("equal jitter"), so a
    fleet that lost the broker together does not come back in one wave, and
    the cap keeps recovery within seconds of the broker's return.
    """
    step = max(first_s, 0.01)
    while True:
        capped = min(step, max_s)
        yield capped * random.uniform(0.5, 1.0)  # noqa: S311 - spreading load, not a secret
        step = capped * 2
