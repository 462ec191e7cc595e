"""The console in a real browser (Debian's chromium through Playwright) against a live campus: the real
collector with its instant rules, Mosquitto, InfluxDB and the API under uvicorn.

Figures on the pages are compared with the JSON API's; a live alert is raised through MQTT and must
appear in an open inbox without a reload; roles are checked in the page and at the server; every
visible string must come from both catalogues; the inbox must work on a 390 × 844 phone.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from api.console.i18n import LANGUAGES, _catalog, missing_messages
from api.console.inbox import dynamic_msgids
from tests import console_fixtures
from tests.auth_helpers import admin_token
from tests.console_fixtures import DATA_NAMES, PASSWORD
from tests.helpers import wait_until

live_campus = console_fixtures.live_campus  # the fixtures this module uses
browser = console_fixtures.browser

CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
LIVE_S = 2.0  # an alert must be on the open page this soon after its reading is published


@pytest.fixture(scope="module")
def api(live_campus: Any) -> Any:
    token = admin_token(live_campus.cfg, "admin")
    with httpx.Client(
        base_url=live_campus.url, headers={"Authorization": f"Bearer {token}"}, timeout=20
    ) as c:
        yield c


def login(
    browser: Any, base: str, user: str, lang: str = "zh", to: str = "/console/alerts", **ctx: Any
) -> Page:
    """A fresh browser context logged in through the login form, on page ``to``."""
    context = browser.new_context(base_url=base, locale="zh-CN", **ctx)
    context.add_cookies([{"name": "campusmon_lang", "value": lang, "url": base}])
    page = context.new_page()
    page.goto("/console/login?next=" + to)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator(".identity .user")).to_have_text(user)
    return page


def _visible_text(page: Page, drop: str = ".data, .langs, script, style, [translate=no]") -> str:
    """The page's visible text without recorded data (notes, alert texts, ids) marked ``.data``."""
    return page.evaluate(
        """(drop) => {
            const c = document.body.cloneNode(true);
            c.querySelectorAll(drop).forEach((e) => e.remove());
            c.querySelectorAll('select').forEach((s) => {
              s.querySelectorAll('option').forEach((o) => { if (!o.selected) o.remove(); });
            });
            document.body.appendChild(c); c.style.position = 'absolute';
            const t = c.innerText; c.remove(); return t;
        }""",
        drop,
    )


def _text_nodes(page: Page) -> list[str]:
    return page.evaluate(
        """() => {
            const out = [];
            const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
            while (w.nextNode()) {
              const n = w.currentNode, p = n.parentElement;
              if (!p || p.closest('script, style, .data, .langs')) continue;
              const t = n.textContent.trim();
              if (t) out.push(t);
            }
            document.querySelectorAll('[placeholder], [title], [aria-label]').forEach((e) => {
              for (const a of ['placeholder', 'title', 'aria-label']) if (e.getAttribute(a)) out.push(e.getAttribute(a));
            });
            return out;
        }"""
    )


def test_live_alert_reaches_the_open_inbox_and_is_acknowledged(
    live_campus: Any, browser: Any, api: Any
) -> None:
    page = login(browser, live_campus.url, "op-li")
    page.goto("/console/alerts")
    inbox = page.locator("#inbox")
    expect(inbox).to_have_attribute("data-connected", "1", timeout=10_000)  # the SSE stream is open
    card = page.locator('.alert-card[data-rule="dorm.high_power"][data-subject="dorm-1-101"]')
    expect(card).to_have_count(0)
    live_campus.kettle("e-dorm-1-r101")
    expect(card).to_be_visible(timeout=LIVE_S * 1000)  # no reload: it came over the stream
    alert_id = int(card.get_attribute("data-alert") or 0)
    assert api.get(f"/api/v1/alerts/{alert_id}").json()["acknowledged"] is False
    expect(card).to_have_attribute("data-state", "open")
    card.locator("button[data-action=ack]").click()
    card = page.locator(f'.alert-card[data-alert="{alert_id}"]')
    expect(card).to_have_attribute("data-state", "acknowledged")
    expect(card.locator("button[data-action=ack]")).to_have_count(0)
    a = api.get(f"/api/v1/alerts/{alert_id}").json()
    assert a["acknowledged"] is True and a["acked_by"] == "op-li"
    # The history on the page names the logged-in user, as the event log does.
    card.locator("details.more > summary").click()
    expect(card.locator('.history li[data-event="acknowledged"] .actor')).to_have_text("op-li")
    evs = api.get("/api/v1/alerts/events", params={"after": 0, "limit": 1000}).json()["events"]
    assert [e["actor"] for e in evs if e["alert_id"] == alert_id and e["type"] == "acknowledged"] == ["op-li"]
    # Its evidence chart shows the room's power over the judged window, threshold marked.
    chart = card.locator(".evidence-chart")
    expect(chart).to_have_attribute("data-series", "1")
    opt = chart.evaluate("el => echarts.getInstanceByDom(el).getOption()")
    assert opt["series"][0]["data"] and opt["series"][0]["markLine"]["data"]
    assert max(p[1] for p in opt["series"][0]["data"]) == 2000.0
    page.context.close()


def test_viewer_sees_no_actions_and_the_server_refuses_a_forged_one(
    live_campus: Any, browser: Any, api: Any
) -> None:
    live_campus.kettle("e-dorm-1-r102")
    got = wait_until(
        lambda: api.get("/api/v1/alerts", params={"rule": "dorm.high_power", "subject": "dorm-1-102"}).json()[
            "alerts"
        ],
        10,
        0.1,
        "the room 102 alert",
    )
    alert_id = got[0]["id"]
    page = login(browser, live_campus.url, "viewer-wang")
    page.goto("/console/alerts")
    expect(page.locator(f'.alert-card[data-alert="{alert_id}"]')).to_be_visible()
    expect(page.locator("button[data-action]")).to_have_count(0)
    expect(page.locator(".act-more")).to_have_count(0)
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert csrf
    for path, body in (
        (f"/api/v1/alerts/{alert_id}/ack", None),
        (f"/api/v1/alerts/{alert_id}/clear", None),
        (f"/api/v1/alerts/{alert_id}/notes", {"text": "forged"}),
        ("/api/v1/targets", {"scope": "campus", "type": "quota", "period": "month", "value": 1}),
    ):
        r = page.request.post(path, headers={"X-CSRF-Token": csrf}, data=body)
        assert r.status == 403, (path, r.status, r.text())
    # The same session with the wrong token is refused by the CSRF check before the role check.
    r = page.request.post(f"/api/v1/alerts/{alert_id}/ack", headers={"X-CSRF-Token": "x" + csrf})
    assert r.status == 403 and "CSRF" in r.text()
    a = api.get(f"/api/v1/alerts/{alert_id}").json()
    assert a["acknowledged"] is False and a["notes"] == []
    page.context.close()


def test_phone_inbox_has_no_sideways_scroll_and_reachable_actions(live_campus: Any, browser: Any) -> None:
    page = login(browser, live_campus.url, "op-li", viewport={"width": 390, "height": 844}, is_mobile=True,
                 has_touch=True)  # fmt: skip
    page.goto("/console/alerts?status=all")
    first = page.locator(".alert-card").first
    expect(first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    first.locator("details.more > summary").click()
    first.locator(".act-more > summary").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for b in first.locator("button[data-action]").all():
        b.scroll_into_view_if_needed()
        box = b.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert box["height"] >= 30  # big enough for a thumb
    page.context.close()


def test_language_switch_and_catalogue_completeness(live_campus: Any, browser: Any) -> None:
    assert missing_messages(dynamic_msgids()) == []
    cats = {lang: _catalog(lang) for lang in LANGUAGES}
    english_only = {m.id for m in cats["zh"] if m.id and m.string and m.string != m.id and len(str(m.id)) > 3}
    page = login(browser, live_campus.url, "admin-zhao", lang="zh")
    pages = ["/console/", "/console/buildings/dorm-1", "/console/alerts?status=all", "/console/targets",
             "/console/reports", "/console/admin"]  # fmt: skip
    for path in pages:
        page.goto(path)
        page.locator(".lang-switch[hreflang=en]").click()
        expect(page.locator("html")).to_have_attribute("lang", "en")
        text = _visible_text(page)
        for name in DATA_NAMES:
            text = text.replace(name, "")
        assert not CJK.search(text), (path, CJK.findall(text)[:20], text[:400])
        page.locator(".lang-switch[hreflang=zh]").click()
        expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
        left = [t for t in _text_nodes(page) if t in english_only]
        assert not left, (path, left)
    page.context.close()


def _canvas_painted(page: Page, selector: str) -> bool:
    """Some pixel of the chart's canvas is drawn (ECharts draws on a 2D canvas)."""
    return bool(
        page.eval_on_selector(
            selector,
            """(el) => {
                const c = el.querySelector('canvas');
                if (!c || !c.width || !c.height) return false;
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
                return false;
            }""",
        )
    )


def test_operator_overview_equals_the_api_and_building_charts_render(
    live_campus: Any, browser: Any, api: Any
) -> None:
    quota = api.post("/api/v1/targets", json={"scope": "building", "scope_id": "dorm-1", "kind": "electricity",
                                              "type": "quota", "period": "month", "value": 40000.0})  # fmt: skip
    assert quota.status_code == 201, quota.text
    try:
        _overview_and_building(live_campus, browser, api)
    finally:
        api.delete(f"/api/v1/targets/{quota.json()['id']}")


def _overview_and_building(live_campus: Any, browser: Any, api: Any) -> None:
    cfg = live_campus.cfg
    page = login(browser, live_campus.url, "op-li", lang="en", to="/console/")
    # An error page also shows the identity: say what it said rather than "0 rows".
    assert page.locator("#overview-table").count() == 1, _visible_text(page, "script, style")[:2000]
    rows = page.locator("#overview-table tbody tr[data-building]")
    expect(rows).to_have_count(len(cfg.buildings))
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.building)")) == sorted(
        b.id for b in cfg.buildings
    )
    for b in cfg.buildings:
        cells = page.locator(f'tr[data-building="{b.id}"] td[data-v]').evaluate_all(
            "cs => cs.map(c => c.dataset.v)"
        )
        kinds = {k["kind"]: k for k in api.get(f"/api/v1/buildings/{b.id}/summary").json()["kinds"]}
        for off, kind in ((1, "electricity"), (5, "water")):
            shown = [float(x) if x not in ("", "None") else None for x in cells[off : off + 4]]
            k = kinds.get(kind)
            if k is None:
                assert shown == [None] * 4, (b.id, kind, shown)
                continue
            want = [k["today"]["value"], k["month"]["value"], k["month"]["quota"], k["month"]["projected"]]
            if b.id == "dorm-1" and kind == "electricity":
                assert want[2] == 40000.0  # the quota set above
            assert [x is None for x in shown] == [x is None for x in want], (b.id, kind, shown, want)
            assert [x for x in shown if x is not None] == pytest.approx(
                [x for x in want if x is not None], rel=1e-9
            ), (b.id, kind, shown, want)
        link = page.locator(f'tr[data-building="{b.id}"] a[href="/console/buildings/{b.id}"]')
        expect(link).to_have_text(b.name or b.id)
    # Drill into the dormitory from its row.
    page.locator('tr[data-building="dorm-1"] a[href="/console/buildings/dorm-1"]').click()
    page.wait_for_url("**/console/buildings/dorm-1")
    elec = next(
        k for k in api.get("/api/v1/buildings/dorm-1/summary").json()["kinds"] if k["kind"] == "electricity"
    )
    expected = {
        "typical": 2,  # today and the typical day
        "week": 1,
        "heatmap": 1,
        "base_load": 1,
        "night_flow": 1,  # the dormitory has a water meter
        "sub_items": 1,
        "gauge": 1 + (elec["month"]["projected"] is not None),  # the quota gauge: month so far, projection
    }
    for key, n in expected.items():
        sel = f"#chart-{key}"
        expect(page.locator(sel)).to_have_attribute("data-series", str(n))
        assert _canvas_painted(page, sel), key
    charts = page.locator(".chart[data-chart]")
    assert charts.count() == len(expected)
    page.context.close()


def test_operator_sets_a_target_in_the_form_and_the_report_prints(
    live_campus: Any, browser: Any, api: Any
) -> None:
    page = login(browser, live_campus.url, "op-li", lang="en", to="/console/targets")
    form = page.locator("#new-target form.target-form")
    form.locator("select[name=scope_id]").select_option("library")
    form.locator("input[name=name]").fill("library lights")
    form.locator("input[name=value]").fill("lots")
    form.locator("button[type=submit]").click()
    expect(form.locator(".form-msg [role=alert]")).to_contain_text("not a number")  # shown, nothing stored
    assert not [t for t in api.get("/api/v1/targets").json()["targets"] if t["name"] == "library lights"]
    form.locator("input[name=value]").fill("9000")
    form.locator("button[type=submit]").click()
    page.wait_for_url(re.compile(r".*/console/targets/\d+$"))
    tid = int(page.url.rsplit("/", 1)[1])
    try:
        t = api.get(f"/api/v1/targets/{tid}").json()
        assert (t["scope_id"], t["category"], t["value"], t["period"]) == (
            "library",
            "01000",
            9000.0,
            "month",
        )
        expect(page.locator('tr[data-action="create"] .actor')).to_have_text("op-li")
        # The monthly report prints: navigation and controls hidden, summary and table kept, a PDF made.
        page.goto("/console/reports")
        expect(page.locator("#chart-electricity")).to_have_attribute(
            "data-series", "2"
        )  # use, and the target
        page.emulate_media(media="print")
        for hidden in (".top", "#report-form"):
            expect(page.locator(hidden)).to_be_hidden()
        for shown in (".report-summary", "#report-table", "#completeness", ".print-only"):
            expect(page.locator(shown).first).to_be_visible()
        pdf = page.pdf(format="A4", landscape=True, print_background=True)
        assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    finally:
        api.delete(f"/api/v1/targets/{tid}")
    page.context.close()
