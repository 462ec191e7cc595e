"""The console's pages against a real app, a real InfluxDB holding this month's simulated readings and a
real relational store: login, redirects, roles, figures equal to the JSON API's, both languages,
catalogue completeness, and /docs and /redoc without any external URL."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from api.accounting import periods
from api.app import create_app
from api.auth.service import AuthStore
from api.console.i18n import LANGUAGES, missing_messages, po_path, translations, used_messages
from campusmon.config import CampusConfig
from firmware_sim.month import simulate_month, write_readings
from tests.auth_helpers import admin_headers
from tests.test_consumption_truth import CAMPUS

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTING = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())["accounting"]
PASSWORD = "console-pass-1"
USERS = {"op": "operator", "view": "viewer", "boss": "admin"}
QUOTA = {"scope": "building", "scope_id": "dorm-1", "kind": "electricity", "type": "quota", "period": "month",
         "value": 5000.0}  # fmt: skip


@pytest.fixture(scope="module")
def campus(influxdb, tmp_path_factory) -> Iterator[tuple[Any, CampusConfig]]:
    """An app over this month so far (plus two weeks before), with an operator, a viewer and an admin."""
    from campusmon.config import parse_config

    tmp = tmp_path_factory.mktemp("console")
    data = {**CAMPUS, "accounting": ACCOUNTING}
    data["influxdb"] = {
        "url": f"http://127.0.0.1:{influxdb.port}",
        "database": f"t_console_{int(time.time())}",
    }
    data["database"] = {"url": f"sqlite:///{tmp}/console.sqlite"}
    cfg = parse_config(data, "test-config", environ={})
    now = int(time.time())
    month = periods.buckets(now, now + 1, "month", cfg.site.tz)[0].label
    sim = simulate_month(cfg, month, seed=3, margin_s=14 * 86400)
    app = create_app(cfg, start_jobs=False)
    # One lifespan for the module (its end closes the store); the other clients run without one.
    with TestClient(app):
        write_readings(
            app.state.store, [r for r in sim.readings if r.ts <= now - 60 and r.meter != "e-empty-1"]
        )
        store = AuthStore(app.state.sessions, ttl=0)
        for name, role in USERS.items():
            store.add_user(name, PASSWORD, role)
        yield app, cfg
    app.state.engine.dispose()


def login(app: Any, name: str, lang: str | None = None) -> TestClient:
    c = TestClient(app, base_url="http://127.0.0.1")
    if lang:
        c.cookies.set("campusmon_lang", lang)
    r = c.post("/console/login", data={"username": name, "password": PASSWORD, "next": "/console/"},
               follow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    return c


@pytest.fixture(scope="module")
def operator(campus) -> TestClient:
    c = login(campus[0], "op", "en")
    return c


@pytest.fixture(scope="module")
def api(campus) -> TestClient:
    return TestClient(campus[0], headers=admin_headers(campus[1]))


def test_logged_out_pages_redirect_to_login(campus):
    c = TestClient(campus[0], base_url="http://127.0.0.1")
    for path in ("/console/", "/console/buildings/dorm-1", "/console/meters/e-dorm-1", "/console/ranking"):
        r = c.get(path, follow_redirects=False)
        assert r.status_code == 303, (path, r.status_code, r.text[:200])
        assert r.headers["location"].startswith("/console/login?next="), r.headers["location"]
    r = c.get("/console/", headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 401 and r.headers["HX-Redirect"].startswith("/console/login")
    assert c.get("/api/v1/meters").status_code == 401  # the JSON API still answers JSON 401
    assert c.get("/api/v1/meters").json()["status"] == 401


def test_login_errors_and_session(campus):
    c = TestClient(campus[0], base_url="http://127.0.0.1")
    page = c.get("/console/login?next=/console/buildings/dorm-1")
    assert page.status_code == 200 and 'name="password"' in page.text
    bad = c.post("/console/login", data={"username": "op", "password": "wrong-password", "next": "/console/"})
    assert bad.status_code == 401 and 'role="alert"' in bad.text
    assert "campusmon_session" not in c.cookies
    ok = c.post("/console/login", data={"username": "op", "password": PASSWORD, "next": "https://evil.example/"},
                follow_redirects=False)  # fmt: skip
    assert ok.status_code == 303 and ok.headers["location"] == "/console/"  # no open redirect
    assert c.cookies.get("campusmon_session") and c.cookies.get("campusmon_csrf")
    home = c.get("/console/")
    assert home.status_code == 200
    assert '<span class="user">op</span>' in home.text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', home.text).group(1)
    assert csrf == c.cookies.get("campusmon_csrf")
    assert 'hx-headers=\'{"X-CSRF-Token": "' + csrf + "\"}'" in home.text
    assert c.post("/console/logout").status_code == 403  # no CSRF header: refused
    out = c.post("/console/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204 and out.headers["HX-Redirect"] == "/console/login"
    c.cookies.clear()
    assert c.get("/console/", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("path", ["/console/", "/console/ranking", "/console/ranking?metric=per_capita&kind=water",
                                  "/console/buildings", "/console/buildings/dorm-1", "/console/buildings/teach-1",
                                  "/console/buildings/empty-1", "/console/meters/e-dorm-1",
                                  "/console/meters/w-dorm-1?range=24h", "/console/meters/e-empty-1?range=30d",
                                  "/console/buildings/dorm-1/live"])  # fmt: skip
def test_every_page_renders_for_an_operator(operator, path):
    r = operator.get(path)
    assert r.status_code == 200, r.text[:500]
    assert "Traceback" not in r.text
    if not path.endswith("/live"):
        assert '<span class="role role-operator">operator</span>' in r.text
        for href in (
            "/console/",
            "/console/buildings",
            "/console/alerts",
        ):
            assert f'href="{href}"' in r.text, href
        assert "/console/lang?lang=zh" in r.text  # the switch is on every page


def test_a_viewers_forged_write_is_refused(campus):
    viewer = login(campus[0], "view")
    page = viewer.get("/console/")
    assert page.status_code == 200
    csrf = viewer.cookies.get("campusmon_csrf")
    forged = viewer.post("/api/v1/targets", json=QUOTA, headers={"X-CSRF-Token": csrf})
    assert forged.status_code == 403


def _cells(html: str, building: str) -> list[str]:
    row = re.search(rf'<tr data-building="{building}">(.*?)</tr>', html, re.S).group(1)
    return re.findall(r'<td[^>]*data-v="([^"]*)"', row)


def test_overview_figures_equal_the_api(operator, api, campus):
    cfg = campus[1]
    t = api.post("/api/v1/targets", json=QUOTA)
    assert t.status_code == 201, t.text
    try:
        html = operator.get("/console/").text
        for b in cfg.buildings:
            s = api.get(f"/api/v1/buildings/{b.id}/summary").json()
            cells = _cells(html, b.id)
            kinds = {k["kind"]: k for k in s["kinds"]}
            for off, kind in ((1, "electricity"), (5, "water")):
                k = kinds.get(kind)
                shown = [float(x) if x not in ("", "None") else None for x in cells[off : off + 4]]
                if k is None:
                    assert shown == [None] * 4, (b.id, kind, shown)
                    continue
                want = [
                    k["today"]["value"],
                    k["month"]["value"],
                    k["month"]["quota"],
                    k["month"]["projected"],
                ]
                assert shown == pytest.approx(want), (b.id, kind, shown, want)
        dorm = _cells(html, "dorm-1")
        assert float(dorm[3]) == 5000.0  # the quota made through the API is on the page
        elec_total = sum(
            next((k["month"]["value"] for k in api.get(f"/api/v1/buildings/{b.id}/summary").json()["kinds"]
                  if k["kind"] == "electricity"), 0.0)
            for b in cfg.buildings
        )  # fmt: skip
        assert elec_total > 0
        shown_total = re.search(r'data-total="electricity-month">([^<]+)<', html).group(1)
        assert shown_total.split()[0].replace(",", "") == f"{elec_total:.1f}"
    finally:
        api.delete(f"/api/v1/targets/{t.json()['id']}")


def test_ranking_equals_the_api(operator, api):
    want = api.get("/api/v1/rankings", params={"metric": "intensity", "kind": "electricity"}).json()[
        "rankings"
    ]
    html = operator.get("/console/ranking?metric=intensity&kind=electricity").text
    order = re.findall(r'<tr data-building="([^"]+)">', html)
    assert order == [r["building"] for r in want]


def test_language_switch_changes_the_strings(campus):
    c = login(campus[0], "op", "en")
    try:
        en = c.get("/console/buildings/dorm-1").text
        assert "Meters" in en and "仪表" not in en
        r = c.get(
            "/console/lang",
            params={"lang": "zh", "next": "/console/buildings/dorm-1"},
            follow_redirects=False,
        )
        assert r.status_code == 303 and r.headers["location"] == "/console/buildings/dorm-1"
        zh = c.get(r.headers["location"]).text
        assert 'lang="zh-Hans"' in zh and "仪表" in zh and ">Meters<" not in zh
        assert c.get("/console/lang", params={"lang": "fr"}).status_code == 422
        r = c.get("/console/lang", params={"lang": "en", "next": "//evil.example/"}, follow_redirects=False)
        assert r.headers["location"] == "/console/"
    finally:
        c.cookies.clear()


def test_default_language_follows_the_site_config(campus):
    app, cfg = campus
    c = login(app, "op")  # no language cookie
    try:
        assert 'lang="zh-Hans"' in c.get("/console/").text
        cfg.console.default_language = "en"
        assert 'lang="en"' in c.get("/console/").text
    finally:
        cfg.console.default_language = "zh"


def test_number_and_date_formats_follow_the_language():
    from zoneinfo import ZoneInfo

    from api.console.i18n import Formatter

    tz = ZoneInfo("Asia/Shanghai")
    en, zh = Formatter("en", tz), Formatter("zh", tz)
    assert en.num(12345.678) == "12,345.7" and zh.num(12345.678) == "12,345.7"
    assert en.month("2026-10") == "2026 October" and zh.month("2026-10") == "2026年10月"
    assert en.unit("m3") == "m³" and zh.unit("m3") == "立方米"
    assert "2026" in zh.date(1790000000) and "年" in zh.date(1790000000)


def test_meter_csv_export(operator):
    r = operator.get("/console/meters/e-dorm-1/readings.csv?range=24h")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.strip().splitlines()
    assert lines[0].startswith("time,unix_s,energy_kwh (kWh)")
    assert len(lines) > 90  # a reading every 15 minutes over a day
    assert "+08:00" in lines[1]


def test_catalogues_are_complete():
    """Every msgid of the console's templates and code is translated in both catalogues."""
    used = used_messages()
    assert len(used) > 100
    missing = missing_messages()
    assert not missing, "\n".join(f"{lang}: {m!r} ({where})" for lang, m, where in missing[:40])
    for lang in LANGUAGES:
        assert po_path(lang).exists()
        assert translations(lang).gettext("Log in") != ""
    assert translations("zh").gettext("Log in") == "登录"


def test_docs_and_redoc_are_offline(campus):
    c = TestClient(campus[0], base_url="http://127.0.0.1")
    for path in ("/docs", "/redoc"):
        r = c.get(path)
        assert r.status_code == 200
        urls = re.findall(r'(?:src|href|url)\s*[:=]\s*["\']([^"\']+)["\']', r.text)
        assert urls, path
        external = [u for u in urls if re.match(r"^(?:https?:)?//", u)]
        assert not external, (path, external)
        assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text
        for u in urls:
            if u.startswith("/static/"):
                got = c.get(u)
                assert got.status_code == 200 and len(got.content) > 500, u
    assert c.get("/openapi.json").status_code == 200
    assert c.get("/static/vendor/htmx/htmx.min.js").status_code == 200
    assert c.get("/static/vendor/echarts/echarts.min.js").status_code == 200
    assert c.get("/static/console/../../app.py").status_code == 404
