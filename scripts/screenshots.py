"""Screenshots of the console for the README: the overview, a building page and the alert inbox, in
Chinese and English (six PNGs under docs/img/).

It runs the example campus (deploy/campus.yaml) the way the demo does, in a temporary folder: its own
Mosquitto and InfluxDB on free loopback ports, the real collector with its instant rules, two weeks
of simulated history through MQTT with the demo's labelled waste in the last day, monthly quotas on
three buildings, a dorm kettle, one window-rule pass, and the API under uvicorn. Debian's chromium
(headless, through Playwright) logs in as an operator and takes the pictures. Chinese needs a CJK
font on the machine taking them (Debian: fonts-noto-cjk), or it renders as boxes.

Run: .venv/bin/python scripts/screenshots.py [--out docs/img] [--days 14]
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync",
                 "--no-first-run", "--hide-scrollbars"]  # fmt: skip
CJK_FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/truetype/noto"))
OPERATOR = "demo-operator"
BUILDING = "dorm-1"
KETTLE_ROOMS = ("e-dorm-1-room-101", "e-dorm-1-room-201")
QUOTAS = {  # kWh per month: one building under, one near, one over its projection
    "dorm-1": 40000.0,
    "teach-1": 90000.0,
    "library": 120000.0,
}
VIEWPORT = {"width": 1440, "height": 1000}
SHOTS = (
    ("overview", "/console/"),
    ("building", f"/console/buildings/{BUILDING}"),
    ("inbox", "/console/alerts"),
)
MORE_SHOTS = (("targets", "/console/targets"), ("reports", "/console/reports"))  # --all


def config(tmp: Path, mqtt_port: int, influx_port: int) -> Any:
    from campusmon.config import parse_config

    data = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())
    data["mqtt"] = {"port": mqtt_port, "client_id": "shots-" + uuid.uuid4().hex[:6], "flush_interval_s": 0.05}
    data["influxdb"] = {"url": f"http://127.0.0.1:{influx_port}", "database": "screenshots"}
    data["database"] = {"url": f"sqlite:///{tmp}/campus.sqlite"}
    data["services"] = {"data_dir": str(tmp / "services")}
    # Meters read by the serial gateway are not simulated here: no offline alerts for them.
    data["alerts"] = {
        "rules": {"data.offline": {"enabled": False}, "data.completeness": {"enabled": False}},
        "mqtt": {"enabled": False},
    }
    return parse_config(data, "deploy/campus.yaml", environ={})


def charts_drawn(page: Any) -> None:
    """Every chart on the page has been drawn (console.js sets data-series once it has)."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-chart]')].every(e => e.hasAttribute('data-series'))"
    )


def shoot(base: str, password: str, out: Path, shots: tuple[tuple[str, str], ...]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    made = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for lang in ("zh", "en"):
            ctx = browser.new_context(
                base_url=base, viewport=VIEWPORT, locale="zh-CN" if lang == "zh" else "en-GB"
            )
            ctx.add_cookies([{"name": "campusmon_lang", "value": lang, "url": base}])
            page = ctx.new_page()
            page.goto("/console/login")
            page.fill("input[name=username]", OPERATOR)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_selector(".identity .user")
            for name, path in shots:
                page.goto(path)
                page.wait_for_load_state("networkidle")
                charts_drawn(page)
                if name == "inbox":
                    page.wait_for_selector("#inbox[data-connected='1']")
                    first = page.locator(".alert-card").first
                    first.locator("details.more > summary").click()
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('.evidence-chart')].some(e => e.hasAttribute('data-series'))"
                    )
                page.evaluate("document.fonts.ready")
                target = out / f"console-{name}-{lang}.png"
                page.screenshot(path=str(target), full_page=name != "inbox")  # the inbox: its first screen
                made.append(target)
            ctx.close()
        browser.close()
    return made


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--days", type=int, default=14, help="days of simulated history")
    ap.add_argument("--all", action="store_true", help="also the targets and reports pages")
    args = ap.parse_args()
    if not any(d.exists() for d in CJK_FONT_DIRS):
        print("no Noto CJK font found: install fonts-noto-cjk, or Chinese renders as boxes", file=sys.stderr)
        return 1
    from api.auth.service import AuthStore
    from campusmon.demo import inject_waste
    from campusmon.services import InfluxDB, Mosquitto, free_port
    from firmware_sim.live_campus import LiveCampus

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="campusmon-shots-") as t:
        tmp = Path(t)
        broker = Mosquitto(tmp / "mosquitto", free_port(), anonymous=True)  # loopback only, thrown away after
        influx = InfluxDB(tmp / "influxdb", free_port())
        broker.start()
        influx.start()
        campus = None
        try:
            cfg = config(tmp, broker.port, influx.port)
            campus = LiveCampus(cfg)
            t0 = time.monotonic()
            campus.start(args.days * 86400, waste=lambda meters: inject_waste(meters, cfg))
            print(f"{args.days} days of history stored in {time.monotonic() - t0:.0f} s")
            password = secrets.token_urlsafe(12)
            campus.add_user(OPERATOR, password, "operator")
            raw, _ = AuthStore(campus.app.state.sessions, ttl=0).create_token("screenshots", "admin")
            with httpx.Client(
                base_url=campus.url, headers={"Authorization": f"Bearer {raw}"}, timeout=30
            ) as api:
                for b, kwh in QUOTAS.items():
                    body = {"name": f"{b} electricity quota", "scope": "building", "scope_id": b,
                            "kind": "electricity", "type": "quota", "period": "month", "value": kwh}  # fmt: skip
                    api.post("/api/v1/targets", json=body).raise_for_status()
                for room in KETTLE_ROOMS:
                    campus.kettle(room)
                print(f"window-rule pass: {campus.evaluate()} alert change(s)")
                deadline = time.monotonic() + 20
                while not api.get("/api/v1/alerts", params={"rule": "dorm.high_power"}).json()["alerts"]:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the kettle alerts did not arrive")
                    time.sleep(0.2)
            for path in shoot(campus.url, password, args.out, SHOTS + (MORE_SHOTS if args.all else ())):
                print(
                    f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KiB"
                )
        finally:
            if campus is not None:
                campus.stop()
            influx.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
