"""The REST API over real HTTP (uvicorn on a free port), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from cloud.api import ApiContext, create_app
from cloud.api.routes import interop as interop_routes
from cloud.auth import TOKEN_MAX_S, Auth, AuthError
from cloud.commands import Commands, Keys
from cloud.db import auth as db_auth
from cloud.db.schema import api_tokens, audit
from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.interop import Interop
from cloud.measures import Measures
from cloud.retention import Retention
from cloud.server import ApiServer
from cloud.tickets import Tickets
from floodgate import vocab
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from tests.cloud import cap_rules
from tests.cloud.test_ingest import birth, msg
from tests.cloud.test_tickets import REGISTRY, Site, registry
from tests.helpers import free_port, wait_until

PASSWORD = "correct horse battery"


@dataclass
class Api:
    url: str
    store: Store
    tickets: Tickets
    ingestor: Ingestor
    clock: ManualClock
    app: Any
    tokens: dict[str, str]

    def client(self, who: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)


@contextlib.asynccontextmanager
async def serving(store: Store, clock: ManualClock, tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """One collector's API over HTTP on a free port, on ``store``: its URL and app."""
    tickets = Tickets(store, registry(tmp_path, REGISTRY), clock)
    ingestor = Ingestor(store, tickets)
    auth = Auth(store, clock, PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))
    ctx = ApiContext(
        store=store,
        tickets=tickets,
        commands=Commands(store, Keys(), clock),
        auth=auth,
        clock=clock,
        ingestor=ingestor,
        broker_connected=lambda: False,
        measures=Measures(store, clock),
        interop=Interop(store, clock, sender="test@floodgate"),
        retention=Retention(store, clock, raw_days=1),
    )
    app = create_app(ctx)
    server = ApiServer(app, "127.0.0.1", free_port())
    task = asyncio.create_task(server.run_until_cancelled())
    try:
        await wait_until(lambda: server.started, 10, "the API server")
        yield f"http://127.0.0.1:{server.port}", app
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def api(store: Store, tmp_path: Path) -> AsyncIterator[Api]:
    async with an_api(store, tmp_path) as a:
        yield a


@contextlib.asynccontextmanager
async def an_api(store: Store, tmp_path: Path, clock: ManualClock | None = None) -> AsyncIterator[Api]:
    """The API on ``store`` with a user of each role and a token for each."""
    clock = clock or ManualClock()
    async with serving(store, clock, tmp_path) as (url, app):
        ctx: ApiContext = app.state.ctx
        tokens: dict[str, str] = {}
        for name, role, unit in [
            ("admin", "admin", None),
            ("viewer", "viewer", None),
            ("operator", "operator", None),
            ("chen", "dispatcher", None),
            ("wang", "unit", "drainage-dasha"),
            ("li", "unit", "maint-huangpu"),
        ]:
            await ctx.auth.add_user(name, role, PASSWORD, unit)
            tokens[name] = await ctx.auth.issue_token(name)
        yield Api(url, store, ctx.tickets, ctx.ingestor, clock, app, tokens)


class CountingHasher(PasswordHasher):
    """A cheap argon2 that counts the passwords it checks (``verified``)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8192, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified += 1
        return super().verify(hash, password)


@dataclass
class WriteRoute:
    path: str
    methods: set[str]


def write_routes(app: Any) -> list[WriteRoute]:
    """Every write under /api/, as the OpenAPI document lists them (routers included)."""
    out = []
    for path, ops in app.openapi()["paths"].items():
        methods = {m.upper() for m in ops} & {"POST", "PUT", "PATCH", "DELETE"}
        if path.startswith("/api/") and methods:
            out.append(WriteRoute(path, methods))
    return out


async def test_every_write_route_needs_a_token_and_the_right_role(api: Api) -> None:
    routes = write_routes(api.app)
    assert len(routes) >= 13, [r.path for r in routes]
    async with api.client() as anon, api.client("viewer") as viewer:
        for route, method in ((r, m) for r in routes for m in sorted(r.methods)):
            path = route.path.replace("{ticket_id}", new_ulid()).replace("{token_id}", "0123456789abcdef")
            if path == "/api/v1/auth/login":
                continue
            got = await anon.request(method, path, json={})
            assert got.status_code == 401, (path, got.text)
            bad = await anon.request(method, path, json={}, headers={"Authorization": "Bearer fgt_nope_nope"})
            assert bad.status_code == 401, (path, bad.text)
            if path.startswith("/api/v1/tokens"):
                continue  # anyone signed in may make (and revoke) a token of their own
            got = await viewer.request(method, path, json={})
            assert got.status_code == 403, (path, got.text)
            assert "viewer" in got.json()["detail"]
    async with api.client("wang") as unit:
        got = await unit.post("/api/v1/commands", json={"node": "hp-1", "type": "rebirth", "reason": "x"})
        assert got.status_code == 403
        got = await unit.post("/api/v1/tickets/" + new_ulid() + "/dispatch", json={})
        assert got.status_code == 403
    async with api.store.read() as conn:
        rows = (await conn.execute(select(audit.c.actor, audit.c.status))).all()
    assert ("anonymous", 401) in rows and ("user:viewer", 403) in rows, "refused writes are audited too"


async def test_login_and_tokens(api: Api) -> None:
    async with api.client() as anon:
        bad = await anon.post("/api/v1/auth/login", json={"username": "chen", "password": "wrong password"})
        assert bad.status_code == 401 and "wrong" in bad.json()["detail"]
        ok = await anon.post("/api/v1/auth/login", json={"username": "chen", "password": PASSWORD})
        assert ok.status_code == 200 and ok.json()["role"] == "dispatcher"
        me = await anon.get("/api/v1/me", headers={"Authorization": "Bearer " + ok.json()["token"]})
        assert me.json()["actor"] == "user:chen"
    async with api.client("chen") as chen, api.client("admin") as admin:
        other = await chen.post("/api/v1/tokens", json={"username": "wang"})
        assert other.status_code == 403
        made = await admin.post(
            "/api/v1/users", json={"username": "zhao", "role": "viewer", "password": "short"}
        )
        assert made.status_code == 422 and "password" in made.json()["detail"]
        made = await admin.post(
            "/api/v1/users", json={"username": "zhao", "role": "viewer", "password": PASSWORD}
        )
        assert made.status_code == 201
        again = await admin.post("/api/v1/users", json={"username": "zhao", "role": "viewer"})
        assert again.status_code == 409


async def test_the_closed_loop_over_http(api: Api) -> None:
    site = Site(api.ingestor)
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    async with api.client("chen") as chen, api.client("wang") as wang, api.client("li") as li:
        listed = (await chen.get("/api/v1/tickets", params={"state": "open"})).json()
        assert listed["total"] == 1
        tid = listed["items"][0]["id"]
        path = f"/api/v1/tickets/{tid}"
        assert (await wang.post(path + "/accept", json={})).status_code == 409, "not dispatched yet"
        assert (await chen.post(path + "/dispatch", json={"note": "go"})).json()["state"] == "dispatched"
        refused = await li.post(path + "/accept", json={})
        assert refused.status_code == 403 and "drainage-dasha" in refused.json()["detail"]
        assert (await wang.post(path + "/accept", json={})).status_code == 200
        assert (
            await wang.post(path + "/report", json={"note": "pumped", "photo_url": "ftp://x"})
        ).status_code == 422
        assert (await wang.post(path + "/report", json={"note": "pumped"})).status_code == 200
        wet = await chen.post(path + "/verify", json={})
        assert wet.status_code == 409 and wet.json()["code"] == "still_wet", "the site still reads water"
        assert "still reads water" in wet.json()["detail"]
        assert (await chen.post(path + "/verify", json={"confirm": True})).status_code == 200
        bad = await chen.post(path + "/evaluate", json={"score": 9})
        assert bad.status_code == 422 and "score" in bad.json()["detail"] and bad.json()["code"] == "invalid"
        done = await chen.post(path + "/evaluate", json={"score": 5, "note": "fast"})
        assert done.status_code == 200 and done.json()["state"] == "closed"
        detail = (await chen.get(path)).json()
        actors = [e["actor"] for e in detail["timeline"]]
        assert actors == [
            "system",
            "user:chen",
            "unit:drainage-dasha:wang",
            "unit:drainage-dasha:wang",
            "user:chen",
            "user:chen",
        ]
        missing = await chen.get(f"/api/v1/tickets/{new_ulid()}")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"  # the UI's to translate
        nobody = await chen.post(
            "/api/v1/tickets",
            json={"node": "hp-9", "kind": "flood", "priority": "warning", "note": "a caller"},
        )
        assert nobody.status_code == 404 and "no node 'hp-9'" in nobody.json()["detail"]
        nine = Site(api.ingestor, node="hp-9")
        await nine.send(birth(nine.seq))
        manual = await chen.post(
            "/api/v1/tickets",
            json={"node": "hp-9", "kind": "flood", "priority": "warning", "note": "a caller"},
        )
        assert manual.status_code == 201 and manual.json()["timeline"][0]["actor"] == "user:chen"
        dup = await chen.post(
            "/api/v1/tickets", json={"node": "hp-9", "kind": "flood", "priority": "warning", "note": "again"}
        )
        assert dup.status_code == 409


async def test_bad_bodies_and_parameters_get_a_4xx_that_says_why(api: Api) -> None:
    async with api.client("chen") as chen:
        r = await chen.post(
            "/api/v1/tickets", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422 and r.json()["detail"]
        r = await chen.post(
            "/api/v1/tickets",
            json={"node": "hp-1", "kind": "flood", "priority": "warning", "note": "x", "x": 1},
        )
        assert r.status_code == 422 and "x" in r.json()["detail"]
        r = await chen.post(
            "/api/v1/tickets", json={"node": "HP 1!", "kind": "lava", "priority": "warning", "note": "x"}
        )
        assert r.status_code == 422 and "node" in r.json()["detail"] and "kind" in r.json()["detail"]
        r = await chen.post("/api/v1/tickets/not-a-ulid/dispatch", json={})
        assert r.status_code == 422
        r = await chen.get("/api/v1/tickets", params={"state": "sleeping"})
        assert r.status_code == 422 and "sleeping" in r.json()["detail"]
        r = await chen.get("/api/v1/tickets", params={"limit": 100000})
        assert r.status_code == 422
        r = await chen.get("/api/v1/readings", params={"node": "hp-1", "dev": "lvl-1", "from": 10, "to": 5})
        assert r.status_code == 422
        r = await chen.post(
            "/api/v1/commands", json={"node": "hp-1", "type": "gate.close", "dev": "gate-1", "reason": "x"}
        )
        assert r.status_code == 422 and "no command key" in r.json()["detail"]
        r = await chen.post("/api/v1/commands", json={"node": "hp-1", "type": "self.destruct", "reason": "x"})
        assert r.status_code == 422


async def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(api: Api) -> None:
    limit = api.app.state.ctx.max_body_bytes
    big = b'{"username": "' + b"a" * limit + b'", "password": "x"}'

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    async with api.client() as anon, api.client("chen") as chen:
        r = await anon.post("/api/v1/auth/login", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and str(limit) in r.json()["detail"]
        r = await anon.post(
            "/api/v1/auth/login", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and "larger" in r.json()["detail"]
        r = await chen.post(
            "/api/v1/tickets", content=chunked(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413
        ok = await anon.post("/api/v1/auth/login", json={"username": "chen", "password": PASSWORD})
        assert ok.status_code == 200, "a body under the limit still goes through"
    async with api.store.read() as conn:
        rows = (await conn.execute(select(audit.c.path, audit.c.status))).all()
    assert ("/api/v1/auth/login", 413) in rows and ("/api/v1/tickets", 413) in rows


async def test_health_metrics_and_reads(api: Api) -> None:
    site = Site(api.ingestor)
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    async with api.client() as anon, api.client("viewer") as viewer:
        h = await anon.get("/health")
        assert h.status_code == 503 and h.json() == {"status": "degraded", "database": True, "broker": False}
        m = (await anon.get("/metrics")).text
        assert "floodgate_tickets_open 1" in m and "floodgate_messages_stored_total 1" in m
        assert (await anon.get("/openapi.json")).json()["info"]["title"] == "Floodgate collector API"
        a = (await viewer.get("/api/v1/alerts", params={"active": True})).json()
        assert a["total"] == 1 and a["items"][0]["level"] == "warning"
        assert (await viewer.get("/api/v1/nodes")).json()[0]["node"] == "hp-1"
        assert (await viewer.get("/api/v1/nodes/nope")).status_code == 404
        assert (await viewer.get("/api/v1/dead-letters")).json()["total"] == 0


CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"
ATOM = "{http://www.w3.org/2005/Atom}"


async def test_open311_and_the_cap_feed(api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    site = Site(api.ingestor)
    birth = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": "科翔路隧道", "lat": 23.17, "lon": 113.46, "address": "黄埔区科翔路"},
        "devices": [],
    }
    ep = new_ulid()
    await site.send(msg(site.seq, "birth", birth))
    await site.send(site.alert(ep, "warning", "clear", value=160.0, ts=api.clock.now_ms()))
    await site.send(site.alert(ep, "danger", "warning", value=290.0, ts=api.clock.now_ms() + 60_000))
    await site.send(site.alert(ep, "clear", "danger", value=10.0, ts=api.clock.now_ms() + 120_000))
    other = Site(api.ingestor, node="hp-2")
    await other.send(other.alert(new_ulid(), "warning", "clear", kind="forecast", ts=api.clock.now_ms()))
    async with api.client() as anon:
        services = (await anon.get("/open311/v2/services.json")).json()
        assert [s["service_code"] for s in services] == ["flood", "sensor_fault", "comms_lost"]
        reqs = (await anon.get("/open311/v2/requests.json", params={"service_code": "flood"})).json()
        assert len(reqs) == 2 and {r["status"] for r in reqs} == {"open"}
        hp1 = next(r for r in reqs if r["address"] == "黄埔区科翔路")
        assert hp1["lat"] == 23.17 and hp1["agency_responsible"] == "drainage-dasha"
        assert hp1["requested_datetime"].endswith("+08:00")
        assert (await anon.get("/open311/v2/requests.json", params={"status": "closed"})).json() == []
        one = (await anon.get(f"/open311/v2/requests/{hp1['service_request_id']}.json")).json()
        assert one == [hp1]
        assert (await anon.get(f"/open311/v2/requests/{new_ulid()}.json")).status_code == 404
        assert (await anon.get("/open311/v2/requests.json", params={"status": "pending"})).status_code == 422
        pages = [
            (await anon.get("/open311/v2/requests.json", params={"page": p, "page_size": 1})).json()
            for p in (1, 2, 3)
        ]
        assert [len(p) for p in pages] == [1, 1, 0] and pages[0] != pages[1], "paged, newest first"
        assert pages[0][0]["requested_datetime"] >= pages[1][0]["requested_datetime"]
        too_big = await anon.get("/open311/v2/requests.json", params={"page_size": 501})
        assert too_big.status_code == 422
        # Open311 is English: the registry's English name and address where it has them.
        named = REGISTRY.replace(
            "hp-1: {area: dasha-g7, name: 科翔路隧道}",
            "hp-1: {area: dasha-g7, name: 科翔路隧道, name_en: Kexiang Rd tunnel, address_en: Kexiang Rd}",
        )
        assert named != REGISTRY
        en = Interop(api.store, api.clock, registry=registry(tmp_path, named))
        [req] = [
            r
            for r in await en.requests(service_code="flood")
            if r["service_request_id"] == hp1["service_request_id"]
        ]
        assert hp1["description"].endswith("科翔路隧道"), hp1["description"]
        assert req["description"] == "Water at Kexiang Rd tunnel" and req["address"] == "Kexiang Rd", req

        monkeypatch.setattr(interop_routes, "CAP_PAGE", 1)
        first_page = ET.fromstring((await anon.get("/cap/v1.2/feed.atom")).content)
        assert len(first_page.findall(f".//{CAP}alert")) == 1
        nxt = first_page.find(f"{ATOM}link[@rel='next']")
        assert nxt is not None and nxt.get("href", "").endswith("/cap/v1.2/feed.atom?page=2")
        second_page = ET.fromstring((await anon.get("/cap/v1.2/feed.atom", params={"page": 2})).content)
        assert len(second_page.findall(f".//{CAP}alert")) == 1
        monkeypatch.undo()
        feed = await anon.get("/cap/v1.2/feed.atom")
        assert feed.headers["content-type"].startswith("application/atom+xml")
        assert ET.fromstring(feed.content).find(f"{ATOM}link[@rel='next']") is None
        root = ET.fromstring(feed.content)
        messages = root.findall(f".//{CAP}alert")
        assert len(messages) == 2
        assert [cap_rules.problems(m) for m in messages] == [[], []]
        by_type = {m.findtext(f"{CAP}msgType"): m for m in messages}
        cancel, forecast = by_type["Cancel"], by_type["Alert"]
        refs = (cancel.findtext(f"{CAP}references") or "").split()
        assert len(refs) == 2 and all(r.startswith("test@floodgate,") for r in refs)
        assert cancel.findtext(f"{CAP}incidents") == ep
        assert forecast.findtext(f"{CAP}info/{CAP}certainty") == "Likely"
        assert cancel.findtext(f"{CAP}info/{CAP}certainty") == "Observed"
        assert cancel.findtext(f"{CAP}info/{CAP}area/{CAP}circle") == "23.170000,113.460000 0.2"
        first_id = refs[0].split(",")[1]
        first = ET.fromstring((await anon.get(f"/cap/v1.2/alerts/{first_id}.xml")).content)
        assert first.findtext(f"{CAP}msgType") == "Alert" and first.find(f"{CAP}references") is None
        second = ET.fromstring((await anon.get(f"/cap/v1.2/alerts/{refs[1].split(',')[1]}.xml")).content)
        assert cap_rules.problems(first) == [] and cap_rules.problems(second) == []
        broken = copy.deepcopy(first)  # the checker itself catches what it should
        broken.find(f"{CAP}sent").text = "2026-07-01T12:00:00Z"  # type: ignore[union-attr]
        broken.find(f"{CAP}scope").text = "Everyone"  # type: ignore[union-attr]
        info = broken.find(f"{CAP}info")
        assert info is not None
        info.remove(info.find(f"{CAP}event"))  # type: ignore[arg-type]
        assert len(cap_rules.problems(broken)) == 3, cap_rules.problems(broken)
        assert second.findtext(f"{CAP}msgType") == "Update"
        assert second.findtext(f"{CAP}references") == refs[0]
        assert second.findtext(f"{CAP}info/{CAP}severity") == "Severe"
        assert (await anon.get(f"/cap/v1.2/alerts/{new_ulid()}.xml")).status_code == 404
        api.clock.advance(25 * 3_600_000)
        root = ET.fromstring((await anon.get("/cap/v1.2/feed.atom")).content)
        assert [m.findtext(f"{CAP}msgType") for m in root.findall(f".//{CAP}alert")] == ["Alert"], (
            "an episode that ended over a day ago leaves the feed"
        )


async def test_the_first_admin_comes_from_the_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("database: sqlite:///c.db\napi: null\n")
    base = [sys.executable, "-m", "floodgate.cli", "cloud"]
    added = subprocess.run(
        [*base, "user-add", "-c", str(cfg), "root", "--role", "admin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    token = subprocess.run(
        [*base, "token", "-c", str(cfg), "root", "--label", "ops"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert token.returncode == 0 and token.stdout.startswith("fgt_")
    nobody = subprocess.run(
        [*base, "token", "-c", str(cfg), "nobody"], capture_output=True, text=True, check=False
    )
    assert nobody.returncode == 1 and "no user" in nobody.stderr
    store = Store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        auth = Auth(store, ManualClock())
        who = await auth.authenticate(token.stdout.strip())
        assert (who.username, who.role) == ("root", "admin")
        assert (await auth.login("root", PASSWORD)).role == "admin"
    finally:
        await store.close()


async def test_the_site_overview_knows_board_and_gate_before_they_move(api: Api) -> None:
    site = Site(api.ingestor)
    health = {"responses": {"entrance": {"level": "clear", "sign": "黄埔区 安全出行", "gate": "open"}}}
    birth = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": "T", "lat": 23.1, "lon": 113.4},
        "devices": [],
        "health": health,
    }
    await site.send(msg(site.seq, "birth", birth))
    async with api.client("viewer") as viewer:
        [row] = (await viewer.get("/api/v1/sites")).json()
    assert (row["gate"], row["sign"], row["level"], row["online"]) == (
        "open",
        "黄埔区 安全出行",
        "clear",
        True,
    )


async def test_the_vocabulary_is_served_and_a_ticket_says_what_the_caller_may_do(api: Api) -> None:
    async with api.client("viewer") as c:
        v = (await c.get("/api/v1/vocab")).json()
    assert v["states"] == list(vocab.STATES)
    assert v["actions"]["reject"] == {
        "from": ["dispatched"],
        "to": "open",
        "roles": ["unit", "admin"],
        "note": True,
        "event": "reject",
    }
    assert v["alert_kinds"]["forecast"]["ticket_kind"] == "flood"
    async with httpx.AsyncClient(base_url=api.url) as anonymous:
        assert (await anonymous.get("/api/v1/vocab")).status_code == 401
    site = Site(api.ingestor)
    await site.send(site.alert(new_ulid(), "warning", "clear"))
    _, rows = await api.tickets.list()
    tid = rows[0]["id"]
    allowed = {}
    for who in ("viewer", "operator", "chen", "wang", "li"):
        async with api.client(who) as c:
            allowed[who] = (await c.get(f"/api/v1/tickets/{tid}")).json()["allowed_actions"]
    assert allowed == {
        "viewer": [],
        "operator": ["comment"],
        "chen": ["dispatch", "merge", "comment"],
        "wang": ["comment"],
        "li": [],
    }
    async with api.client("chen") as c:
        after = (await c.post(f"/api/v1/tickets/{tid}/dispatch", json={})).json()
    assert after["state"] == "dispatched"
    assert after["allowed_actions"] == ["merge", "comment"], "only the unit (or an admin) accepts"
    async with api.client("wang") as c:
        assert (await c.get(f"/api/v1/tickets/{tid}")).json()["allowed_actions"] == [
            "accept",
            "reject",
            "comment",
        ]


async def test_only_admins_and_dispatchers_may_force_a_gate_open(api: Api) -> None:
    body = {
        "node": "hp-1",
        "type": "gate.open",
        "dev": "gate-1",
        "reason": "police on site",
        "args": {
            "force": True,
            "reason": "police on site",
            "role": "admin",
        },  # a role in the body counts for nothing
    }
    async with api.client("operator") as operator, api.client("chen") as chen:
        refused = await operator.post("/api/v1/commands", json=body)
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        assert "only admin or dispatcher may force" in refused.json()["detail"]
        # A dispatcher passes the role check; this node has no command key, so it goes no further.
        passed = await chen.post("/api/v1/commands", json=body)
        assert passed.status_code == 422 and "no command key" in passed.json()["detail"]


async def test_only_the_unit_accepts_rejects_and_reports_and_an_admin_for_it_is_not_counted(api: Api) -> None:
    site = Site(api.ingestor)
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    _, [ticket] = await api.tickets.list()
    path = f"/api/v1/tickets/{ticket['id']}"
    async with api.client("chen") as chen, api.client("admin") as admin:
        assert (await chen.post(path + "/dispatch", json={})).status_code == 200
        for action in ("accept", "reject", "report"):
            refused = await chen.post(path + f"/{action}", json={"note": "x"})
            assert refused.status_code == 403 and "dispatcher" in refused.json()["detail"], action
        done = await admin.post(path + "/accept", json={})
        assert done.status_code == 200 and done.json()["accepted_on_time"] is None
        assert done.json()["timeline"][-1]["actor"] == "user:admin for unit:drainage-dasha"
        done = await admin.post(path + "/report", json={"note": "pumped by the office"})
        assert done.status_code == 200 and done.json()["handled_on_time"] is None
        month = datetime.datetime.fromtimestamp(api.clock.now_ms() / 1000, ZoneInfo("Asia/Shanghai"))
        [unit] = (await chen.get("/api/v1/measures/units", params={"month": month.strftime("%Y-%m")})).json()
    assert unit["unit"] == "drainage-dasha" and unit["tickets"] == 1
    assert unit["on_time_accept_rate"] is None and unit["on_time_handle_rate"] is None, "not the unit's doing"


async def test_tokens_expire_and_are_revoked_at_once_and_only_an_admin_mints_long_ones(api: Api) -> None:
    async with api.client("chen") as chen, api.client("admin") as admin:
        made = await chen.post("/api/v1/tokens", json={"ttl_s": 60})
        assert made.status_code == 201
        assert made.json()["expires_ms"] == api.clock.now_ms() + 60_000
        short = {"Authorization": "Bearer " + made.json()["token"]}
        assert (await chen.get("/api/v1/me", headers=short)).status_code == 200
        api.clock.advance(60_000)
        expired = await chen.get("/api/v1/me", headers=short)
        assert expired.status_code == 401 and "expired" in expired.json()["detail"], "at once, no cache"
        default = await chen.post("/api/v1/tokens", json={})
        assert default.json()["expires_ms"] == api.clock.now_ms() + 12 * 3_600_000
        long = await chen.post("/api/v1/tokens", json={"ttl_s": 8 * 86400})
        assert long.status_code == 403 and "admin" in long.json()["detail"]
        forever = await admin.post("/api/v1/tokens", json={"ttl_s": 400 * 86400})
        assert forever.status_code == 422, "no token lives longer than 366 days"
        service = await admin.post("/api/v1/tokens", json={"username": "operator", "ttl_s": 300 * 86400})
        assert service.status_code == 201 and service.json()["username"] == "operator"
        ghost = await admin.post("/api/v1/tokens", json={"username": "ghost"})
        assert ghost.status_code == 404
        token = service.json()["token"]
        headers = {"Authorization": "Bearer " + token}
        assert (await chen.get("/api/v1/me", headers=headers)).json()["username"] == "operator"
        auth: Auth = api.app.state.ctx.auth
        await auth.revoke(token.split("_")[1])
        revoked = await chen.get("/api/v1/me", headers=headers)
        assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"], "at once, no cache"
        await auth.disable("chen")
        assert (await chen.get("/api/v1/me")).status_code == 401, "a disabled user's tokens stop at once"


async def test_a_token_without_expiry_lives_no_longer_than_the_maximum(api: Api) -> None:
    auth: Auth = api.app.state.ctx.auth
    token = await auth.issue_token("viewer")
    async with api.store.engine.begin() as conn:  # as a token made before every token expired
        await conn.execute(
            api_tokens.update().where(api_tokens.c.id == token.split("_")[1]).values(expires_ms=None)
        )
    assert (await auth.authenticate(token)).username == "viewer"
    api.clock.advance(TOKEN_MAX_S * 1000)
    with pytest.raises(AuthError, match="expired"):
        await auth.authenticate(token)


async def test_logins_are_throttled_per_account_and_per_address_with_a_growing_delay(api: Api) -> None:
    auth: Auth = api.app.state.ctx.auth
    auth.hasher = hasher = CountingHasher()
    wrong = {"username": "chen", "password": "not the password"}
    right = {"username": "chen", "password": PASSWORD}
    async with api.client() as anon:
        for _ in range(5):
            assert (await anon.post("/api/v1/auth/login", json=wrong)).status_code == 401
        assert hasher.verified == 5
        waits = []
        for _ in range(4):
            r = await anon.post("/api/v1/auth/login", json=right)
            assert r.status_code == 429 and "too many" in r.json()["detail"]
            waits.append(int(r.headers["Retry-After"]))
            api.clock.advance(waits[-1] * 1000)
            assert (await anon.post("/api/v1/auth/login", json=wrong)).status_code == 401
        assert waits == [1, 2, 4, 8], "the delay doubles"
        assert hasher.verified == 9, "a refused attempt checks no password"
        api.clock.advance(16_000)
        assert (await anon.post("/api/v1/auth/login", json=right)).status_code == 200
        assert (await anon.post("/api/v1/auth/login", json=wrong)).status_code == 401, "cleared by success"
        # One address trying many names: past 20 failures it waits too, whatever the name.
        for i in range(19):
            got = await anon.post("/api/v1/auth/login", json={"username": f"u{i}", "password": "x"})
            assert got.status_code == 401
        r = await anon.post("/api/v1/auth/login", json={"username": "viewer", "password": PASSWORD})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    async with api.store.read() as conn:
        rows = (await conn.execute(select(audit.c.path, audit.c.status))).all()
    assert ("/api/v1/auth/login", 429) in rows


async def test_every_parameter_is_bounded_and_nul_is_refused_not_a_server_error(api: Api) -> None:
    site = Site(api.ingestor)
    await site.send(site.alert(new_ulid(), "danger", "clear"))
    huge = 2**63
    async with api.client("chen") as chen, api.client() as anon:
        bad: list[tuple[str, dict[str, Any]]] = [
            ("/api/v1/tickets", {"offset": huge}),
            ("/api/v1/alerts", {"offset": huge}),
            ("/api/v1/commands", {"offset": 10**7}),
            ("/api/v1/dead-letters", {"offset": -1}),
            ("/api/v1/readings", {"node": "hp-1", "dev": "lvl-1", "from": huge}),
            ("/api/v1/readings", {"node": "hp-1", "dev": "lvl-1", "to": 10**16}),
            ("/api/v1/tickets", {"state": "sleeping"}),
            ("/api/v1/alerts", {"level": "flooding"}),
            ("/api/v1/measures/units", {"month": "٢٠٢٦-٠١"}),
            ("/api/v1/tickets", {"node": "hp\x00"}),
            ("/api/v1/tickets", {"unit": "a\x00b"}),
            ("/api/v1/readings/latest", {"node": "x\x00"}),
            ("/open311/v2/requests.json", {"service_code": "lava"}),
        ]
        for path, params in bad:
            r = await chen.get(path, params=params)
            assert r.status_code == 422, (path, params, r.text)
            assert r.json()["problems"] and r.json()["detail"], "says why"
        r = await chen.get("/api/v1/tickets", params={"state": "sleeping"})
        assert "sleeping" in r.json()["detail"]
        # Each problem names its field and its kind in a code, for a client to say it in its words.
        r = await chen.post("/api/v1/tickets", json={"node": "hp-1", "kind": "flood", "priority": "warning"})
        assert r.status_code == 422, r.text
        assert {"where": "body.note", "code": "missing"}.items() <= r.json()["problems"][0].items()
        r = await chen.get("/api/v1/tickets", params={"offset": huge})
        assert "less than or equal to 1000000" in r.json()["detail"]
        assert (await chen.get("/api/v1/nodes/hp%001")).status_code == 422
        assert (await chen.get("/api/v1/commands/x%00")).status_code == 422
        nul = await anon.post("/api/v1/auth/login", json={"username": "chen\x00", "password": "x"})
        assert nul.status_code == 422 and "NUL" in nul.json()["detail"]
        for body in [
            {"node": "hp-1", "kind": "flood", "priority": "warning", "note": "a\x00b"},
            {"node": "hp-1", "kind": "flood", "priority": "warning", "note": "lone \ud800"},
        ]:
            r = await chen.post(
                "/api/v1/tickets",
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 422 and "note" in r.json()["detail"], r.text
        r = await chen.get("/open311/v2/requests.json", params={"start_date": "0001-01-01T00:00:00+08:00"})
        assert r.status_code == 200, "any date a client may send"
        r = await chen.get("/api/v1/tickets", params={"state": ["open", "closed"], "offset": 1_000_000})
        assert r.status_code == 200 and r.json()["items"] == []


async def test_ids_follow_the_wire_contract_patterns(api: Api) -> None:
    async with api.client("chen") as chen:
        a = Site(api.ingestor, node="a")  # one character: valid on the wire
        await a.send(birth(a.seq))
        assert (await chen.get("/api/v1/nodes/a")).status_code == 200
        made = await chen.post(
            "/api/v1/tickets", json={"node": "a", "kind": "flood", "priority": "warning", "note": "call"}
        )
        assert made.status_code == 201, made.text
        dev = "d" * 40  # valid in a site config and on the wire
        r = await chen.post(
            "/api/v1/commands", json={"node": "a", "type": "gate.close", "dev": dev, "reason": "test"}
        )
        assert r.status_code == 422 and "no command key" in r.json()["detail"], "past validation"
        r = await chen.post(
            "/api/v1/commands", json={"node": "a", "type": "gate.close", "dev": "d" * 65, "reason": "x"}
        )
        assert r.status_code == 422 and ".dev: String should match" in r.json()["detail"]


async def test_a_token_is_revoked_by_its_owner_or_an_admin(api: Api) -> None:
    async with api.client("chen") as chen, api.client("wang") as wang, api.client("admin") as admin:
        made = (await chen.post("/api/v1/tokens", json={"label": "laptop"})).json()
        assert made["token"].startswith(f"fgt_{made['id']}_")
        laptop = {"Authorization": "Bearer " + made["token"]}
        assert (await chen.get("/api/v1/me", headers=laptop)).status_code == 200
        theirs = await wang.delete(f"/api/v1/tokens/{made['id']}")
        assert theirs.status_code == 403 and "admin" in theirs.json()["detail"]
        assert (await chen.get("/api/v1/me", headers=laptop)).status_code == 200, "still good"
        assert (await chen.delete(f"/api/v1/tokens/{made['id']}")).status_code == 204
        gone = await chen.get("/api/v1/me", headers=laptop)
        assert gone.status_code == 401 and "revoked" in gone.json()["detail"]
        assert (await chen.delete(f"/api/v1/tokens/{made['id']}")).status_code == 204, "again: no error"
        assert (await chen.delete("/api/v1/tokens/0123456789abcdef")).status_code == 404
        assert (await chen.delete("/api/v1/tokens/not-an-id")).status_code == 422
        # An admin revokes anyone's; anyone revokes the token they call with (a logout).
        assert (await admin.delete(f"/api/v1/tokens/{api.tokens['wang'].split('_')[1]}")).status_code == 204
        assert (await wang.get("/api/v1/me")).status_code == 401
        assert (await chen.delete(f"/api/v1/tokens/{api.tokens['chen'].split('_')[1]}")).status_code == 204
        assert (await chen.get("/api/v1/me")).status_code == 401
    async with api.store.read() as conn:
        rows = (await conn.execute(select(audit.c.actor, audit.c.method, audit.c.status))).all()
    assert ("user:chen", "DELETE", 204) in rows and ("unit:drainage-dasha:wang", "DELETE", 403) in rows


@contextlib.asynccontextmanager
async def _open_stream(api: Api, token: str) -> AsyncIterator[AsyncIterator[str]]:
    """A live stream over HTTP, its lines read up to its ``hello``."""
    async with (
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
        client.stream("GET", "/api/v1/stream", params={"token": token}) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        assert [await anext(lines) for _ in range(3)] == ["event: hello", "data: {}", ""]
        yield lines


async def _rest_of(lines: AsyncIterator[str], deadline_s: float = 5.0) -> list[str]:
    """Every line left in a stream, failing unless the server ends it within ``deadline_s``."""

    async def read() -> list[str]:
        return [line async for line in lines]

    return await asyncio.wait_for(read(), deadline_s)


async def test_a_live_stream_ends_when_its_token_is_revoked_or_its_user_disabled(api: Api) -> None:
    auth: Auth = api.app.state.ctx.auth
    hub = api.app.state.ctx.hub
    async with api.client("chen") as chen, api.client("admin") as admin:
        made = (await chen.post("/api/v1/tokens", json={})).json()
        async with _open_stream(api, made["token"]) as lines:
            await wait_until(lambda: hub.listeners == 1, 5, "the stream's queue")
            hub.publish("state", {"node": "lvl-1", "online": True})
            assert await anext(lines) == "event: state", "the stream works until then"
            assert (await admin.delete(f"/api/v1/tokens/{made['id']}")).status_code == 204
            rest = await _rest_of(lines)
        assert "event: end" in rest and 'data: {"reason": "revoked"}' in rest
        assert hub.listeners == 0
        again = await httpx.AsyncClient(base_url=api.url).get(
            "/api/v1/stream", params={"token": made["token"]}
        )
        assert again.status_code == 401, "a browser's EventSource stops there"

        viewer_token = api.tokens["viewer"]
        async with _open_stream(api, viewer_token) as lines:
            await auth.disable("viewer")
            rest = await _rest_of(lines)
        assert 'data: {"reason": "revoked"}' in rest


async def test_a_live_stream_ends_when_its_token_expires_or_another_collector_revokes_it(api: Api) -> None:
    auth: Auth = api.app.state.ctx.auth
    hub = api.app.state.ctx.hub
    async with api.client("chen") as chen:
        made = (await chen.post("/api/v1/tokens", json={"ttl_s": 60})).json()
        async with _open_stream(api, made["token"]) as lines:
            await wait_until(lambda: auth._watching, 5, "the stream's watch")
            api.clock.advance(59_000)
            api.clock.advance(999)
            hub.publish("state", {"node": "lvl-1", "online": True})
            assert await anext(lines) == "event: state", "a millisecond before: still open"
            api.clock.advance(1)
            rest = await _rest_of(lines)
        assert 'data: {"reason": "expired"}' in rest
        # Revoked in the database by someone else (another collector, the command line): this
        # collector looks again every recheck_s of its clock.
        made = (await chen.post("/api/v1/tokens", json={})).json()
        async with _open_stream(api, made["token"]) as lines:
            await wait_until(lambda: auth._watching, 5, "the stream's watch")
            await db_auth.revoke_token(api.store, made["id"])
            api.clock.advance(int(auth.recheck_s * 1000))
            rest = await _rest_of(lines)
        assert 'data: {"reason": "revoked"}' in rest


async def test_two_collectors_on_one_database_throttle_logins_together(
    api: Api, db_url: str, tmp_path: Path
) -> None:
    """Failures split between two collectors add up: the throttle is the database's, not a process's."""
    other_store = Store(db_url)
    try:
        async with (
            serving(other_store, api.clock, tmp_path) as (other_url, other_app),
            httpx.AsyncClient(base_url=api.url) as a,
            httpx.AsyncClient(base_url=other_url) as b,
        ):
            hasher = CountingHasher()
            for app in (api.app, other_app):
                app.state.ctx.auth.hasher = hasher
            wrong = {"username": "chen", "password": "not the password"}
            right = {"username": "chen", "password": PASSWORD}
            for client in (a, b, a, b, a):  # five failures in a row, split 3 + 2
                assert (await client.post("/api/v1/auth/login", json=wrong)).status_code == 401
            assert hasher.verified == 5
            for client in (b, a):
                r = await client.post("/api/v1/auth/login", json=right)
                assert r.status_code == 429 and r.headers["Retry-After"] == "1", "each knows the other's"
            assert hasher.verified == 5, "refused before any hashing"
            api.clock.advance(1000)
            assert (await b.post("/api/v1/auth/login", json=wrong)).status_code == 401
            r = await a.post("/api/v1/auth/login", json=right)
            assert r.status_code == 429 and r.headers["Retry-After"] == "2", "the delay doubles across both"
            api.clock.advance(2000)
            assert (await a.post("/api/v1/auth/login", json=right)).status_code == 200
            assert (await b.post("/api/v1/auth/login", json=wrong)).status_code == 401, "cleared for both"
    finally:
        await other_store.close()


async def test_failed_logins_quiet_for_a_day_are_forgotten(api: Api) -> None:
    auth: Auth = api.app.state.ctx.auth
    for i in range(3):
        with pytest.raises(AuthError):
            await auth.login(f"ghost{i}", "not the password", "10.0.0.9")
    assert len(await db_auth.login_failures_of(api.store, ["user ghost0", "address 10.0.0.9"])) == 2
    api.clock.advance(auth.forget_ms + 1)
    with pytest.raises(AuthError):
        await auth.login("ghost9", "not the password", "10.0.0.10")
    left = await db_auth.login_failures_of(
        api.store, [*(f"user ghost{i}" for i in (0, 1, 2, 9)), "address 10.0.0.9", "address 10.0.0.10"]
    )
    assert set(left) == {"user ghost9", "address 10.0.0.10"}


async def test_a_burst_of_logins_in_parallel_is_throttled_like_one_after_the_other(api: Api) -> None:
    auth: Auth = api.app.state.ctx.auth
    auth.hasher = hasher = CountingHasher()
    wrong = {"username": "chen", "password": "not the password"}
    async with api.client() as anon:
        answers = await asyncio.gather(*(anon.post("/api/v1/auth/login", json=wrong) for _ in range(30)))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [401] * 5 + [429] * 25, statuses
    assert hasher.verified == 5, "only the free attempts were hashed, however many came at once"
