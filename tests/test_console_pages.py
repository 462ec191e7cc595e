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
from api.console.inbox import baseline_msgids, dynamic_msgids
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
                                  "/console/buildings/dorm-1/live", "/console/targets", "/console/reports"])  # fmt: skip
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
            "/console/targets",
            "/console/reports",
        ):
            assert f'href="{href}"' in r.text, href
        assert "/console/lang?lang=zh" in r.text  # the switch is on every page
        assert 'href="/console/admin"' not in r.text  # admins only


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
        # shown to 0.1 kWh (Babel rounds the float's decimal text, which can differ from f"{:.1f}")
        assert float(shown_total.split()[0].replace(",", "")) == pytest.approx(elec_total, abs=0.05 + 1e-6)
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
    """Every msgid of the console's templates and code, and every rule text it shows, is translated in both
    catalogues."""
    used = used_messages()
    assert len(used) > 100
    rule_texts = baseline_msgids()
    assert "the quietest of the last %(hours)s hours against no flow (%(zero)s m3)" in rule_texts
    assert len(rule_texts) >= 15
    missing = missing_messages(dynamic_msgids())
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


# --- targets, reports, admin -------------------------------------------------------------------


def _csrf(c: TestClient) -> dict[str, str]:
    return {"X-CSRF-Token": c.cookies.get("campusmon_csrf") or ""}


TARGET_FORM = {"name": "dorm-1 water quota", "scope": "building", "scope_id": "dorm-1", "kind": "water",
               "category": "", "type": "quota", "period": "month", "value": "320", "valid_from": "",
               "valid_to": "", "baseline_start": "", "baseline_end": "", "note": "set in the console"}  # fmt: skip


def test_targets_are_listed_edited_and_audited_through_the_console(operator, api):
    page = operator.get("/console/targets")
    assert page.status_code == 200 and 'class="target-form"' in page.text
    made = operator.post("/console/targets", data=TARGET_FORM, headers=_csrf(operator))
    assert made.status_code == 204, made.text
    tid = int(made.headers["HX-Redirect"].rsplit("/", 1)[1])
    try:
        t = api.get(f"/api/v1/targets/{tid}").json()
        assert (t["scope_id"], t["kind"], t["type"], t["period"], t["value"]) == ("dorm-1", "water", "quota",
                                                                                   "month", 320.0)  # fmt: skip
        assert t["category"] == "02000" and t["note"] == "set in the console"
        listed = operator.get("/console/targets").text
        assert f'<tr data-target="{tid}">' in listed and "dorm-1 water quota" in listed
        # A change is stored and recorded with its before and after, under the logged-in user.
        changed = operator.post(f"/console/targets/{tid}", data={**TARGET_FORM, "value": "300.5"},
                                headers=_csrf(operator))  # fmt: skip
        assert changed.status_code == 204, changed.text
        assert api.get(f"/api/v1/targets/{tid}").json()["value"] == 300.5
        hist = api.get(f"/api/v1/targets/{tid}/history").json()["history"]
        assert [(h["action"], h["actor"]) for h in hist[:2]] == [("update", "op"), ("create", "op")]
        detail = operator.get(f"/console/targets/{tid}").text
        assert re.findall(r'data-action="(\w+)"', detail) == ["update", "create"]  # its own history only
        row = re.search(r'<tr data-audit="\d+" data-action="update">(.*?)</tr>', detail, re.S).group(1)
        assert '<td class="actor data">op</td>' in row
        assert re.search(r'before">320</span> → <span class="data after">300\.5<', row), row
        # Bad input is refused with the reason and changes nothing.
        for bad, why in (({"value": "lots"}, "not a number"), ({"value": "-5"}, "greater than 0"),
                         ({"period": ""}, "period"), ({"scope_id": "no-such"}, "not in the campus config")):  # fmt: skip
            r = operator.post(f"/console/targets/{tid}", data={**TARGET_FORM, **bad}, headers=_csrf(operator))
            assert r.status_code == 422 and 'role="alert"' in r.text and why in r.text, (bad, r.text)
        assert api.get(f"/api/v1/targets/{tid}").json()["value"] == 300.5
        assert len(api.get(f"/api/v1/targets/{tid}/history").json()["history"]) == len(hist)
        gone = operator.post(f"/console/targets/{tid}/delete", headers=_csrf(operator))
        assert gone.status_code == 204 and gone.headers["HX-Redirect"] == "/console/targets"
        assert api.get(f"/api/v1/targets/{tid}").status_code == 404
        after = operator.get(f"/console/targets/{tid}")
        assert after.status_code == 200 and 'data-action="delete"' in after.text  # the history stays
    finally:
        api.delete(f"/api/v1/targets/{tid}")


def test_a_viewer_reads_targets_without_edit_controls_and_a_forged_post_is_refused(campus, api):
    t = api.post("/api/v1/targets", json=QUOTA).json()
    viewer = login(campus[0], "view", "en")
    try:
        listed = viewer.get("/console/targets")
        one = viewer.get(f"/console/targets/{t['id']}")
        for page in (listed, one):
            assert page.status_code == 200
            main = page.text.split("<main", 1)[1]
            assert "hx-post" not in main and "<form" not in main and "<input" not in main
        assert f'<tr data-target="{t["id"]}">' in listed.text
        for path, body in (("/console/targets", TARGET_FORM),
                           (f"/console/targets/{t['id']}", {**TARGET_FORM, "value": "1"}),
                           (f"/console/targets/{t['id']}/delete", {})):  # fmt: skip
            r = viewer.post(path, data=body, headers=_csrf(viewer))
            assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert api.get(f"/api/v1/targets/{t['id']}").json()["value"] == QUOTA["value"]
        hist = api.get(f"/api/v1/targets/{t['id']}/history").json()["history"]
        assert hist[0]["action"] == "create"  # nothing after its creation
        # Without the session's CSRF header even an operator's POST is refused.
        op = login(campus[0], "op")
        assert op.post("/console/targets", data=TARGET_FORM).status_code == 403
    finally:
        api.delete(f"/api/v1/targets/{t['id']}")


def test_report_page_summary_charts_table_csv_and_print(operator, api):
    want = api.get("/api/v1/reports/monthly").json()
    html = operator.get("/console/reports").text
    # Summary first, then the charts, then the table, then what completeness means.
    marks = [
        'class="report-summary"',
        'data-chart="opt-electricity"',
        'id="report-table"',
        'id="completeness"',
    ]
    at = [html.index(m) for m in marks]
    assert at == sorted(at), at
    campus_elec = next(r for r in want["rows"] if r["scope"] == "campus" and r["kind"] == "electricity")
    shown = re.search(r'<div class="kpi" data-kind="electricity">.*?data-v="([^"]+)"', html, re.S).group(1)
    assert float(shown) == pytest.approx(campus_elec["consumption"], rel=1e-9)
    rows = re.findall(r'<tr data-scope="([^"]+)" data-category="([^"]+)"( class="flag-low")?', html)
    assert len(rows) == len(want["rows"])
    flagged = {
        (f"{r['scope']}:{r['scope_id']}", r["category"]) for r in want["rows"] if r["low_completeness"]
    }
    assert ("building:empty-1", "01000") in flagged  # a meter that never reported
    assert {(s, c) for s, c, low in rows if low} == flagged
    # The charts carry every building that has the carrier.
    opt = re.search(r'<script type="application/json" id="opt-electricity">(.*?)</script>', html, re.S).group(
        1
    )
    import json

    elec_rows = [r for r in want["rows"] if r["scope"] == "building" and r["category"] == "01000"]
    assert len(json.loads(opt)["yAxis"]["data"]) == len(elec_rows)
    # The CSV link is the API's CSV, and the session may follow it.
    href = re.search(r'id="report-csv" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert href == f"/api/v1/reports/monthly?month={want['month']}&format=csv"
    got = operator.get(href)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/csv")
    assert got.text == api.get(href).text and got.text.startswith("month,scope,scope_id")
    # Printing: the print stylesheet hides the navigation and forms and keeps rows whole.
    css = operator.get("/static/console/pages.css").text + operator.get("/static/console/console.css").text
    assert "@media print" in css and "@page" in css and ".no-print" in css
    assert 'class="inline card no-print"' in html and "window.print()" in html
    other = operator.get("/console/reports", params={"month": "2020-01"})
    assert other.status_code == 200 and "2020" in other.text
    assert operator.get("/console/reports", params={"month": "2020-13"}).status_code == 422


def test_admin_page_users_tokens_and_devices(campus, api, tmp_path):
    app, cfg = campus
    for name in ("op", "view"):
        c = login(app, name)
        assert c.get("/console/admin").status_code == 403
        assert 'href="/console/admin"' not in c.get("/console/").text  # not in their navigation
        forged = c.post("/console/admin/users", data={"name": "mallory", "password": "x" * 12, "role": "admin"},
                        headers=_csrf(c))  # fmt: skip
        assert forged.status_code == 403
    boss = login(app, "boss", "en")
    page = boss.get("/console/admin")
    assert page.status_code == 200
    for u in USERS:
        assert f'<tr data-user="{u}">' in page.text
    assert 'href="/console/admin"' in page.text
    # A new user, refused when the password is short, then made; it logs in; disabled, it cannot.
    short = boss.post("/console/admin/users", data={"name": "new-op", "password": "short", "role": "operator"},
                      headers=_csrf(boss))  # fmt: skip
    assert short.status_code == 422 and "password" in short.text
    made = boss.post("/console/admin/users", data={"name": "new-op", "password": PASSWORD, "role": "operator",
                                                   "buildings": ""}, headers=_csrf(boss))  # fmt: skip
    assert made.status_code == 204, made.text
    assert {u["name"]: u["role"] for u in api.get("/api/v1/auth/users").json()["users"]}[
        "new-op"
    ] == "operator"
    login(app, "new-op")
    off = boss.post("/console/admin/users/new-op", data={"disabled": "1"}, headers=_csrf(boss))
    assert off.status_code == 204
    c = TestClient(app, base_url="http://127.0.0.1")
    r = c.post("/console/login", data={"username": "new-op", "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 401
    assert (
        boss.post("/console/admin/users/boss", data={"disabled": "1"}, headers=_csrf(boss)).status_code == 422
    )
    # A token: its secret is shown once, it works, and revoked it stops.
    tok = boss.post("/console/admin/tokens", data={"name": "wall-display", "role": "viewer", "expires_days": "30"},
                    headers=_csrf(boss))  # fmt: skip
    assert tok.status_code == 201, tok.text
    secret = re.search(r"data-secret>([^<]+)<", tok.text).group(1)
    tid = next(
        t["id"] for t in api.get("/api/v1/auth/tokens").json()["tokens"] if t["name"] == "wall-display"
    )
    bearer = {"Authorization": f"Bearer {secret}"}
    assert c.get("/api/v1/auth/me", headers=bearer).json()["role"] == "viewer"
    assert f'<tr data-token="{tid}">' in boss.get("/console/admin").text
    assert boss.post(f"/console/admin/tokens/{tid}/revoke", headers=_csrf(boss)).status_code == 204
    app.state.auth.store.forget()
    assert c.get("/api/v1/auth/me", headers=bearer).status_code == 401
    # Device credentials, in the registry of a broker directory of this test.
    old = cfg.services.data_dir
    cfg.services.data_dir = str(tmp_path)
    try:
        assert 'id="no-broker"' in boss.get("/console/admin").text
        dev = boss.post(
            "/console/admin/devices", data={"name": "e-new-1", "kind": "meter"}, headers=_csrf(boss)
        )
        assert dev.status_code == 201, dev.text
        pw = re.search(r"data-secret>([^<]+)<", dev.text).group(1)
        passwd = (tmp_path / "mosquitto" / "passwd").read_text()
        assert passwd.startswith("e-new-1:$7$") and pw not in passwd
        assert "topic write campus/v1/meters/e-new-1/#" in (tmp_path / "mosquitto" / "acl").read_text()
        assert '<tr data-device="e-new-1">' in boss.get("/console/admin").text
        bad = boss.post(
            "/console/admin/devices", data={"name": "bad name!", "kind": "meter"}, headers=_csrf(boss)
        )
        assert bad.status_code == 422 and "device name" in bad.text
        rot = boss.post("/console/admin/devices/e-new-1/rotate", headers=_csrf(boss))
        assert rot.status_code == 200 and pw not in rot.text
        assert (tmp_path / "mosquitto" / "passwd").read_text() != passwd
        gone = boss.post("/console/admin/devices/e-new-1/revoke", headers=_csrf(boss))
        assert gone.status_code == 204
        assert "e-new-1" not in (tmp_path / "mosquitto" / "passwd").read_text()
    finally:
        cfg.services.data_dir = old


def test_building_charts_leave_time_without_readings_blank(operator, api, campus):
    """Before a meter's first reading consumption is unknown: no heat-map cell, no night, no bar."""
    import json
    from datetime import datetime

    cfg = campus[1]
    now = int(time.time())
    first = api.get("/api/v1/meters/e-dorm-1/readings", params={"start": str(now - 70 * 86400), "limit": 1})
    first_ts = int(first.json()["points"][0][0])
    html = operator.get("/console/buildings/dorm-1").text

    def opt(key: str) -> Any:
        return json.loads(re.search(rf'id="opt-{key}">(.*?)</script>', html, re.S).group(1))

    hm = opt("heatmap")
    days = hm["yAxis"]["data"]
    first_day = datetime.fromtimestamp(first_ts, cfg.site.tz).date().isoformat()
    assert days[0] < first_day  # the eight weeks reach back before the readings
    cells = hm["series"][0]["data"]
    assert cells and min(days[c[1]] for c in cells) >= first_day
    nights = opt("base_load")["xAxis"]["data"]
    assert nights and min(nights) >= first_day
    typical = opt("typical")["series"][1]["data"]
    assert any(v is not None and v > 0 for v in typical)


def test_demo_prints_the_console_logins():
    from campusmon.demo import DEMO_LOGINS, logins_text

    logins = {name: f"pw-{name}" for name, _role in DEMO_LOGINS} | {"operator token": "cm_tok"}
    text = logins_text(logins, "http://127.0.0.1:8000")
    assert text.count("http://127.0.0.1:8000/console/login") == len(DEMO_LOGINS)
    for name, role in DEMO_LOGINS:
        assert re.search(rf"{role}\s+user {name}\s+password pw-{name}", text), text


def test_alert_evidence_reads_in_the_pages_language(campus):
    """The card's "usual level" is the rule's own template in the reader's language; an alert stored with
    only the English text still shows that text, marked as English."""
    from dataclasses import replace

    from api.alerts.rules.base import Finding, Subject
    from api.alerts.scheduler import alert_services
    from tests import test_rules as tr

    leak = (tr.t(10, 12), tr.t(13, 9))
    flow = tr.noisy(3, lambda ts: tr.resting(ts) + (0.01 if leak[0] <= ts < leak[1] else 0.0))
    water = tr.run(
        "leak.continuous_flow",
        tr.campus(tr.WATER),
        {"w1": tr.registers(flow, tr.t(0), tr.t(16))},
        tr.t(8),
        tr.t(16),
    ).fired["w1"]
    frozen = (tr.t(3, 2), tr.t(3, 14))
    kw = {
        "e1": tr.registers(
            lambda ts: 0.0 if frozen[0] <= ts < frozen[1] else tr.office_kw(ts), tr.t(0), tr.t(5)
        )
    }
    stuck = tr.run("data.stuck", tr.campus(tr.ELEC), kw, tr.t(1), tr.t(5)).fired["e1"]
    old = {k: v for k, v in water.evidence.items() if k != "baseline_msg"}  # as stored before templates

    def placed(f: Finding, meter: str, building: str, evidence: dict[str, Any]) -> Finding:
        subject = Subject("meter", meter, building)
        return replace(
            f, subject=subject, meter=meter, ts=int(time.time()), evidence={**evidence, "meter": meter}
        )

    alerts = {
        ("leak.continuous_flow", "teach-1"): placed(water, "w-teach-1", "teach-1", water.evidence),
        ("data.stuck", "lib-1"): placed(stuck, "e-lib-1", "lib-1", stuck.evidence),
        ("leak.continuous_flow", "dorm-1"): placed(water, "w-dorm-1", "dorm-1", old),
    }
    alert_services(campus[0]).store.apply(alerts.values())
    expected = {
        ("leak.continuous_flow", "teach-1"): {
            "zh": "近 24 小时中流量最小的一小时，与零流量（0.0038 立方米）比较",
            "en": "the quietest of the last 24 hours against no flow (0.0038 m³)",
        },
        ("data.stuck", "lib-1"): {
            "zh": "停滞期间的这些小时里，该表在近 28 天同类日子的相同时段中至少有 50% 有用量",
            "en": "hours of the run in which this meter used something on at least 50% of the same hours of "
            "earlier days of the same kind (last 28 days)",
        },
    }
    pages = {lang: login(campus[0], "op", lang) for lang in LANGUAGES}
    usual = re.compile(r'<p class="muted usual-level">[^<]*<span( lang="en")? class="data">([^<]*)</span>')
    for (rule, building), f in alerts.items():
        for lang, c in pages.items():
            r = c.get("/console/alerts", params={"status": "all", "rule": rule, "building": building})
            assert r.status_code == 200
            shown = usual.findall(r.text)
            assert len(shown) == 1, (rule, building, lang, shown)
            marked_en, text = shown[0][0], shown[0][1].replace("&#39;", "'")
            if (rule, building) in expected:
                assert text == expected[(rule, building)][lang] and not marked_en
                if lang == "zh":
                    assert f.evidence["baseline_method"] not in r.text
                    assert not re.search(r"[A-Za-z]{3,}", text), text
            else:
                assert text == f.evidence["baseline_method"] and marked_en  # the English it was stored with
