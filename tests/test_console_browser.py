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
    pages = ["/console/", "/console/buildings/dorm-1", "/console/alerts?status=all"]
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
