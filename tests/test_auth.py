"""Every route locked by role and building scope; tokens, sessions, CSRF, login limits and the audit log.

The route matrix is generated from the app's own route table, so a new route without a declared
permission fails here (and is refused by the running API).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from api.alerts.models import Alert
from api.app import create_app
from api.auth.models import ApiToken
from api.auth.permissions import PERMISSIONS, ROLE_OF, permission
from campusmon.config import CampusConfig
from campusmon.services import free_port
from tests.conftest import SMALL_CAMPUS

QUIET = {"rules": {"data.offline": {"enabled": False}, "data.completeness": {"enabled": False}}}
MISSING_ROW = 999_999  # a row id no test creates: a write that passes the guard ends in 404, not in a change


def _alert(app: Any, building: str, meter: str) -> int:
    now = int(time.time())
    with app.state.sessions() as s, s.begin():
        a = Alert(
            rule="leak.night_flow",
            subject_kind="meter",
            subject_id=meter,
            building=building,
            meter=meter,
            severity="major",
            first_seen=now - 600,
            last_seen=now,
            updated_at=now,
            title=f"test alert in {building}",
        )
        s.add(a)
        s.flush()
        return a.id


class World:
    """An app on real servers with one identity of each kind, an alert and a target in each building."""

    def __init__(self, cfg: CampusConfig) -> None:
        self.cfg = cfg
        self.app = create_app(cfg, start_jobs=False)
        self.store = self.app.state.auth.store
        tok = self.store.create_token
        self.tokens = {
            "admin": tok("t-admin", "admin")[0],
            "operator": tok("t-operator", "operator")[0],
            "viewer": tok("t-viewer", "viewer")[0],
            "feed": tok("t-feed", "viewer", feed_only=True)[0],
            "scoped-viewer": tok("t-sv", "viewer", buildings=["dorm-1"])[0],
            "scoped-operator": tok("t-so", "operator", buildings=["dorm-1"])[0],
            "scoped-admin": tok("t-sa", "admin", buildings=["dorm-1"])[0],
        }
        raw, info = tok("t-expired", "admin", expires_in_s=3600)
        with self.app.state.sessions() as s, s.begin():
            s.get(ApiToken, info["id"]).expires_at = datetime.now(UTC) - timedelta(seconds=1)
        self.tokens["expired"] = raw
        raw, info = tok("t-revoked", "admin")
        self.store.revoke_token(info["id"])
        self.tokens["revoked"] = raw
        self.revoked_id = info["id"]
        self.alert_dorm = _alert(self.app, "dorm-1", "w-dorm-1")
        self.alert_teach = _alert(self.app, "teach-1", "e-teach-1")

    def h(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
def world(make_config, influxdb, mosquitto) -> Iterator[tuple[World, TestClient]]:
    cfg = make_config(mosquitto, influxdb, data={**SMALL_CAMPUS, "alerts": QUIET})
    w = World(cfg)
    with TestClient(w.app) as c:
        body = {"name": "t", "scope": "building", "scope_id": "teach-1", "type": "quota"}
        r = c.post("/api/v1/targets", json={**body, "period": "month", "value": 1000}, headers=w.h("admin"))
        assert r.status_code == 201, r.text
        w.target_teach = r.json()["id"]
        r = c.post(
            "/api/v1/targets",
            json={**body, "scope_id": "dorm-1", "period": "month", "value": 1000},
            headers=w.h("admin"),
        )
        w.target_dorm = r.json()["id"]
        yield w, c


def routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves; HEAD is GET's; a mount is a GET."""
    out = set()
    for rc in iter_route_contexts(app.routes):
        for m in getattr(rc.original_route, "methods", None) or {"GET"}:
            if m != "HEAD":
                out.add((m, rc.path))
    return sorted(out)


def url(path: str, w: World, *, other_building: bool = True, real_rows: bool = True) -> str:
    """A concrete URL: rows and names in teach-1 (outside the scoped identities' dorm-1)."""
    b, meter = ("teach-1", "e-teach-1") if other_building else ("dorm-1", "w-dorm-1")
    alert = (w.alert_teach if other_building else w.alert_dorm) if real_rows else MISSING_ROW
    target = (w.target_teach if other_building else w.target_dorm) if real_rows else MISSING_ROW
    values = {
        "meter_id": meter,
        "building_id": b,
        "alert_id": alert,
        "target_id": target,
        "message_id": MISSING_ROW,
        "delivery_id": MISSING_ROW,
        "silence_id": MISSING_ROW,
        "token_id": MISSING_ROW,
        "name": "nobody",
        "unit_id": "nobody",
    }
    out = re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: str(values[m.group(1)]), path)
    if path == "/api/v1/consumption":
        out += f"?scope=building:{b}"
    return out


def call(c: TestClient, method: str, u: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return c.request(method, u, headers=headers or {}, follow_redirects=False)


BELOW = {"operator": "viewer", "admin": "operator"}
STREAM = ("GET", "/api/v1/alerts/stream")  # endless on success: its success is checked over HTTP below


def test_every_route_has_a_declared_permission(world):
    w, _ = world
    served = routes(w.app)
    missing = [r for r in served if permission(*r) is None]
    assert not missing, f"routes without a permission in api/auth/permissions.py: {missing}"
    stale = sorted(set(PERMISSIONS) - set(served))
    assert not stale, f"permissions for routes that no longer exist: {stale}"


# The documented public routes (docs/security.md); anything else needs an identity.
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("POST", "/api/v1/auth/login"),
    # the console's login page, its language switch and the vendored static files
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/console/lang"),
    ("GET", "/static"),
}
ADMIN_ONLY = ("/api/v1/auth/users", "/api/v1/auth/tokens", "/api/v1/auth/audit", "/deliveries", "/backtest")
SELF_SERVICE_WRITES = {
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/console/login"),
    ("POST", "/console/logout"),
}


def test_the_table_says_what_the_issue_says(world):
    """The matrix checks enforcement against the table; this checks the table against the policy."""
    w, _ = world
    served = routes(w.app)
    assert {r for r in served if permission(*r).level == "public"} == PUBLIC
    for method, path in served:
        perm = permission(method, path)
        if method != "GET" and (method, path) not in SELF_SERVICE_WRITES:
            assert perm.level in ("operate", "admin"), f"{method} {path} writes, so needs operate: {perm}"
        if any(k in path for k in ADMIN_ONLY):
            assert perm.level == "admin", f"{method} {path} is an admin route: {perm}"


def test_route_matrix(world):
    w, c = world
    problems: list[str] = []

    def expect(cond: bool, what: str, r: httpx.Response) -> None:
        if not cond:
            problems.append(f"{what}: {r.status_code} {r.text[:120]}")

    for method, path in routes(w.app):
        perm = permission(method, path)
        assert perm is not None, (method, path)
        u = url(path, w)
        tag = f"{method} {path}"
        if perm.level == "public":
            r = call(c, method, u)
            # an empty login form is refused for its (missing) password, not by the guard
            refused = (403,) if path.endswith("/login") and method == "POST" else (401, 403)
            expect(r.status_code not in refused, f"{tag} is public", r)
            continue
        for bad in (None, "expired", "revoked"):
            r = call(c, method, u, w.h(bad) if bad else None)
            what = f"{tag} with an {bad} token" if bad else f"{tag} without credentials"
            if path.startswith("/console") and not path.startswith("/console/data/"):
                # a browser is sent to the login page rather than given a JSON 401
                expect(r.status_code == 303 and "/console/login" in r.headers.get("location", ""), what, r)
            else:
                expect(r.status_code == 401, what, r)
        role = ROLE_OF[perm.level]
        if role in BELOW:
            r = call(c, method, u, w.h(BELOW[role]))
            expect(r.status_code == 403, f"{tag} as {BELOW[role]}", r)
        if perm.level != "feed":
            r = call(c, method, u, w.h("feed"))
            expect(r.status_code == 403, f"{tag} with a feed token", r)
        if perm.scope not in ("any", "filtered"):
            r = call(c, method, u, w.h(f"scoped-{role}"))
            expect(r.status_code in (403, 404), f"{tag} by a dorm-1 {role} on teach-1", r)
        if (method, path) == STREAM:
            continue
        safe = method == "GET"
        r = call(c, method, url(path, w, real_rows=safe), w.h(role))
        expect(r.status_code not in (401, 403), f"{tag} as {role}", r)
        if perm.scope.split(":")[0] in ("building", "meter", "alert", "target", "consumption") and safe:
            r = call(c, method, url(path, w, other_building=False), w.h(f"scoped-{role}"))
            expect(r.status_code not in (401, 403), f"{tag} by a dorm-1 {role} on dorm-1", r)
    assert not problems, "\n".join(problems)


def test_a_route_without_permission_is_refused(world, monkeypatch):
    w, c = world
    monkeypatch.delitem(PERMISSIONS, ("GET", "/api/v1/alerts/rules"))
    r = c.get("/api/v1/alerts/rules", headers=w.h("admin"))
    assert r.status_code == 403 and "no declared permission" in r.text


def test_scoped_lists_show_only_their_buildings(world):
    w, c = world
    r = c.get("/api/v1/alerts", headers=w.h("scoped-viewer"))
    assert r.status_code == 200, r.text
    assert {a["building"] for a in r.json()["alerts"]} == {"dorm-1"}
    r = c.get("/api/v1/alerts", params={"building": "teach-1"}, headers=w.h("scoped-viewer"))
    assert r.status_code == 200 and r.json()["alerts"] == []
    r = c.get("/api/v1/meters", headers=w.h("scoped-viewer"))
    assert r.status_code == 200 and {m["building"] for m in r.json()["meters"]} == {"dorm-1"}
    r = c.get("/api/v1/alerts", headers=w.h("viewer"))
    assert {a["building"] for a in r.json()["alerts"]} == {"dorm-1", "teach-1"}


def test_actor_is_the_authenticated_identity_not_a_header(world):
    w, c = world
    hdr = {**w.h("operator"), "X-User": "mallory"}
    r = c.post(f"/api/v1/alerts/{w.alert_dorm}/ack", headers=hdr, json={"by": "mallory"})
    assert r.status_code == 200, r.text
    assert r.json()["acked_by"] == "token:t-operator"
    r = c.get("/api/v1/auth/audit", headers=w.h("admin"))
    entries = r.json()["entries"]
    assert any(
        e["actor"] == "token:t-operator"
        and e["action"] == "POST /api/v1/alerts/{alert_id:int}/ack"
        and e["status"] == 200
        for e in entries
    ), entries
    assert c.get("/api/v1/auth/audit", headers=w.h("operator")).status_code == 403


def _login(c: TestClient, user: str, pw: str) -> httpx.Response:
    return c.post("/api/v1/auth/login", json={"username": user, "password": pw})


def test_session_cookie_and_csrf(world):
    w, c = world
    w.store.add_user("olga", "correct horse battery", "operator")
    r = _login(c, "olga", "correct horse battery")
    assert r.status_code == 200, r.text
    cookies = r.headers.get_list("set-cookie")
    session = next(h for h in cookies if h.startswith("campusmon_session="))
    assert "HttpOnly" in session and "samesite=strict" in session.lower()
    csrf = r.json()["csrf_token"]
    assert c.get("/api/v1/auth/me").json()["name"] == "olga"  # the cookie alone reads
    u = f"/api/v1/alerts/{w.alert_dorm}/ack"
    r = c.post(u)
    assert r.status_code == 403 and "CSRF" in r.text  # and does not write
    r = c.post(u, headers={"X-CSRF-Token": "x" + csrf})
    assert r.status_code == 403
    assert c.get(f"/api/v1/alerts/{w.alert_dorm}").json()["acked_by"] is None
    r = c.post(u, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["acked_by"] == "olga"
    assert c.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    c.cookies.clear()
    c.cookies.set("campusmon_session", session.split(";")[0].split("=", 1)[1])
    assert c.get("/api/v1/auth/me").status_code == 401  # the ended session does not come back


def test_login_rate_limit_per_user(world, caplog):
    w, c = world
    w.store.add_user("pat", "the right password", "viewer")
    with caplog.at_level(logging.WARNING, logger="api.auth.routes"):
        for _ in range(w.cfg.auth.login_max_failures_user):
            assert _login(c, "pat", "wrong password!").status_code == 401
        r = _login(c, "pat", "the right password")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert any("failed login for 'pat'" in m for m in caplog.messages)
    assert any("refused: too many failures" in m for m in caplog.messages)
    failed = [e for e in w.store.audit_log() if e["action"] == "login failed"]
    assert len(failed) == w.cfg.auth.login_max_failures_user


def test_login_rate_limit_per_client_address(make_config, influxdb):
    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS, auth={"login_max_failures_client": 3})
    app = create_app(cfg, start_jobs=False)
    app.state.auth.store.add_user("quinn", "the right password", "viewer")
    with TestClient(app) as c, TestClient(app, client=("10.9.9.9", 5000)) as other:
        for i in range(3):
            assert _login(c, f"guess{i}", "whatever-pw").status_code == 401
        assert _login(c, "quinn", "the right password").status_code == 429  # same address
        assert _login(other, "quinn", "the right password").status_code == 200


def test_feed_token_in_the_url_only_on_feeds(world):
    w, c = world
    feed = w.tokens["feed"]
    r = c.get("/api/v1/alerts/feed.atom", params={"token": feed})
    assert r.status_code == 200 and "<feed" in r.text
    assert c.get("/api/v1/alerts", params={"token": feed}).status_code == 401
    assert c.get("/api/v1/alerts", headers=w.h("feed")).status_code == 403
    r = c.get("/api/v1/alerts/feed.atom", params={"token": w.tokens["admin"]})
    assert r.status_code == 401  # a full token must not travel in URLs


def test_revocation_through_the_api_is_immediate(world):
    w, c = world
    r = c.post("/api/v1/auth/tokens", json={"name": "short", "role": "viewer"}, headers=w.h("admin"))
    assert r.status_code == 201, r.text
    raw, tid = r.json()["token"], r.json()["id"]
    hdr = {"Authorization": f"Bearer {raw}"}
    assert c.get("/api/v1/alerts", headers=hdr).status_code == 200
    listed = c.get("/api/v1/auth/tokens", headers=w.h("admin")).json()["tokens"]
    mine = next(t for t in listed if t["id"] == tid)
    assert "token" not in mine and raw not in str(listed) and mine["last_used_at"] is not None
    assert c.delete(f"/api/v1/auth/tokens/{tid}", headers=w.h("admin")).status_code == 200
    assert c.get("/api/v1/alerts", headers=hdr).status_code == 401


def test_disabled_user_loses_sessions_and_tokens(world):
    w, c = world
    w.store.add_user("rita", "rita's password", "operator")
    raw, _ = w.store.create_token("rita-cli", "admin", user="rita")
    hdr = {"Authorization": f"Bearer {raw}"}
    assert c.get("/api/v1/auth/me", headers=hdr).json()["role"] == "operator"  # never above the user
    assert c.get("/api/v1/auth/users", headers=hdr).status_code == 403
    r = c.patch("/api/v1/auth/users/rita", json={"disabled": True}, headers=w.h("admin"))
    assert r.status_code == 200, r.text
    assert c.get("/api/v1/auth/me", headers=hdr).status_code == 401
    assert _login(c, "rita", "rita's password").status_code == 401


def test_ops_routes_public_on_loopback_only(make_config, influxdb):
    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS)
    app = create_app(cfg, start_jobs=False)
    with TestClient(app, client=("127.0.0.1", 5000)) as local, TestClient(app) as remote:
        assert local.get("/metrics").status_code == 200
        assert local.get("/api/v1/alerts").status_code == 401
        assert remote.get("/metrics").status_code == 401
    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS, auth={"ops_public_on_loopback": False})
    with TestClient(create_app(cfg, start_jobs=False), client=("127.0.0.1", 5000)) as local:
        assert local.get("/metrics").status_code == 401


def test_auth_is_off_only_when_configured(make_config, influxdb):
    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS)
    assert cfg.auth.enabled
    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS, auth={"enabled": False})
    with TestClient(create_app(cfg, start_jobs=False)) as c:
        assert c.get("/api/v1/alerts").status_code == 200


def test_fresh_install_says_how_to_make_the_first_admin(make_config, influxdb, caplog):
    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS)
    with caplog.at_level(logging.WARNING, logger="api.auth"):
        app = create_app(cfg, start_jobs=False)
    assert any("campusmon users add" in m and "--role admin" in m for m in caplog.messages)
    assert app.state.auth.store.users() == []  # nothing made silently


def test_sse_stream_with_the_session_cookie(world):
    """EventSource cannot send headers: the stream opens with the login cookie alone, over real HTTP."""
    w, _ = world
    w.store.add_user("sam", "sam's password", "viewer")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(w.app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with httpx.Client(base_url=base, timeout=10) as c:
            assert c.post(
                "/api/v1/auth/login", json={"username": "sam", "password": "sam's password"}
            ).is_success
            with c.stream("GET", "/api/v1/alerts/stream", params={"last_event_id": 0}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                first = next(r.iter_lines())
                assert first.startswith("retry:")
        with httpx.stream("GET", base + "/api/v1/alerts/stream", timeout=10) as r:
            assert r.status_code == 401
    finally:
        server.should_exit = True
        t.join(10)


def test_cli_makes_the_first_admin_and_tokens(make_config, influxdb, tmp_path):
    """``campusmon users``/``tokens`` on the server's command line, then used against the API."""
    from typer.testing import CliRunner

    from campusmon.cli import app as cli
    from tests.helpers import write_config

    cfg = make_config(influx=influxdb, data=SMALL_CAMPUS)
    path = str(write_config(cfg, tmp_path / "campus.yaml"))
    run = CliRunner()
    r = run.invoke(
        cli, ["users", "add", "ada", "--role", "admin", "--password-stdin", "-c", path], "ada's pw 123\n"
    )
    assert r.exit_code == 0, r.output
    r = run.invoke(cli, ["users", "add", "bo", "--role", "nobody", "--password-stdin", "-c", path], "x" * 12)
    assert r.exit_code == 1 and "role" in r.output
    r = run.invoke(
        cli, ["tokens", "create", "ops", "--role", "operator", "--buildings", "dorm-1", "-c", path]
    )
    assert r.exit_code == 0, r.output
    raw = re.search(r"(cm_\S+)", r.output).group(1)
    app = create_app(cfg, start_jobs=False)
    with TestClient(app) as c:
        me = c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {raw}"}).json()
        assert (me["role"], me["buildings"]) == ("operator", ["dorm-1"])
        assert _login(c, "ada", "ada's pw 123").status_code == 200
        tid = c.get("/api/v1/auth/tokens").json()["tokens"][0]["id"]  # the session reads
        assert raw not in run.invoke(cli, ["tokens", "list", "-c", path]).output
        assert run.invoke(cli, ["tokens", "revoke", str(tid), "-c", path]).exit_code == 0
        app.state.auth.store.forget()  # as if auth.token_cache_s had passed
        assert c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {raw}"}).status_code == 401
        assert run.invoke(cli, ["users", "disable", "ada", "-c", path]).exit_code == 0
        app.state.auth.store.forget()
        assert c.get("/api/v1/auth/me").status_code == 401  # her session ended with her
    actions = [e["action"] for e in app.state.auth.store.audit_log()]
    assert {"users add", "tokens create", "tokens revoke", "users disable", "login"} <= set(actions)


def test_the_auth_store_on_sqlite_and_postgresql(db_url):
    """Users, tokens, sessions and the audit log live in the relational store: both backends."""
    from api.auth.service import AuthStore
    from campusmon.db import init_db

    engine, sessions = init_db(db_url)
    try:
        store = AuthStore(sessions, ttl=0)
        store.add_user("una", "una's password", "operator", ["dorm-1"])
        got = store.login("una", "una's password", 3600)
        assert got is not None and store.by_session(got[0]).name == "una"
        assert store.login("una", "wrong password", 3600) is None
        raw, info = store.create_token("t", "admin", user="una", expires_in_s=3600)
        ident = store.by_token(raw)
        assert (ident.role, ident.buildings, ident.expired(datetime.now(UTC))) == (
            "operator",
            {"dorm-1"},
            False,
        )
        store.revoke_token(info["id"])
        assert store.by_token(raw) is None
        store.audit("una", "test", "/x", 200, "127.0.0.1", {"k": "v"})
        assert store.audit_log(1)[0]["detail"] == {"k": "v"}
    finally:
        engine.dispose()
