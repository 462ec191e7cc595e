"""Organisational units as a target scope: the targets API, the monthly report and the quota rule.

Two colleges share a hall by floor area (40 % and 60 %). Meters run at constant rates through
October 2025, so each unit's month is known exactly from the readings written here; the report and
the quota rule must apply the same shares.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.accounting import periods, service
from api.accounting.rolled import month_by_hour_of_day
from api.accounting.routes import router as accounting_router
from api.accounting.settings import parse_accounting
from api.alerts.backtest import backtest
from api.alerts.notify.channels import units_of
from api.app import create_app, install_error_handlers
from api.auth import install_auth
from api.auth.service import AuthStore
from campusmon import rollups
from campusmon.config import CampusConfig, parse_config
from campusmon.db import init_db
from campusmon.influx import open_store
from campusmon.reading import Reading
from tests.auth_helpers import admin_headers

TZ = ZoneInfo("Asia/Shanghai")
START = int(datetime(2025, 10, 1, tzinfo=TZ).timestamp())
END = int(datetime(2025, 11, 1, tzinfo=TZ).timestamp())
RATE = {"e-eng": 2.0, "e-shared": 5.0, "e-arts": 1.0, "w-eng": 0.1}  # kWh or m3 per hour
SHARES = {"eng": {"e-eng": 1.0, "e-shared": 0.4}, "arts": {"e-arts": 1.0, "e-shared": 0.6}}
CAMPUS: dict[str, Any] = {
    "site": {"name": "Two colleges", "timezone": "Asia/Shanghai"},
    "buildings": [
        {"id": "eng-hall", "type": "classroom", "floor_area_m2": 3000, "occupants": 200},
        {"id": "shared-hall", "type": "canteen", "floor_area_m2": 5000, "occupants": 400},
        {"id": "arts-hall", "type": "classroom", "floor_area_m2": 2000, "occupants": 100},
    ],
    "meters": [
        {"id": "e-eng", "building": "eng-hall", "kind": "electricity", "interval_s": 3600},
        {"id": "w-eng", "building": "eng-hall", "kind": "water", "interval_s": 3600},
        {"id": "e-shared", "building": "shared-hall", "kind": "electricity", "interval_s": 3600},
        {"id": "e-arts", "building": "arts-hall", "kind": "electricity", "interval_s": 3600},
    ],
    "units": [
        {"id": "eng", "name": "College of Engineering", "type": "college",
         "parts": [{"building": "eng-hall"}, {"building": "shared-hall", "share": 0.4}]},
        {"id": "arts", "name": "College of Arts", "type": "college",
         "parts": [{"building": "arts-hall"}, {"building": "shared-hall", "share": 0.6}]},
    ],
}  # fmt: skip
# Engineering uses (2 + 0.4 × 5) = 4 kWh an hour, 2976 kWh in October: over 2500. Arts uses
# (1 + 0.6 × 5) = 4 kWh an hour too, under its 3000.
QUOTAS = {"eng": 2500.0, "arts": 3000.0}


def unit_month(unit: str) -> float:
    """A unit's October electricity from the rates written, its shares applied."""
    return sum(f * RATE[m] * (END - START) / 3600 for m, f in SHARES[unit].items())


class Campus:
    def __init__(self, client: TestClient, app: FastAPI, cfg: CampusConfig) -> None:
        self.client, self.app, self.cfg = client, app, cfg


@pytest.fixture(scope="module")
def campus(influxdb: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campus]:
    tmp: Path = tmp_path_factory.mktemp("unit-targets")
    data = dict(CAMPUS)
    data["influxdb"] = {"url": f"http://127.0.0.1:{influxdb.port}", "database": "t_" + uuid.uuid4().hex[:12]}
    data["database"] = {"url": f"sqlite:///{tmp}/campus.sqlite"}
    cfg = parse_config(data, "test-config", environ={})
    app = FastAPI()
    app.state.cfg = cfg
    app.state.store = open_store(cfg)
    app.state.engine, app.state.sessions = init_db(cfg.database.url)
    install_error_handlers(app)
    install_auth(app)
    app.include_router(accounting_router)
    store = app.state.store
    store.ensure_database()
    # Hourly registers from a day before October to a day after it.
    store.write(
        [
            Reading(
                m, "volume_m3" if m.startswith("w-") else "energy_kwh", rate * (ts - START) / 3600 + 100.0, ts
            )
            for m, rate in RATE.items()
            for ts in range(START - 86400, END + 86400, 3600)
        ]
    )
    # Hourly rollups as the ingest path keeps them, so a closed month is read from them.
    rollups.mark_dirty(app.state.sessions, {m: START - 86400 for m in RATE})
    rollups.RollupMaintainer(cfg, store, app.state.sessions).pass_once(now=END + 2 * 86400)
    with TestClient(app, headers=admin_headers(cfg)) as client:
        c = Campus(client, app, cfg)
        for unit, value in QUOTAS.items():
            body = {"name": f"{unit} monthly electricity", "scope": "unit", "scope_id": unit,
                    "kind": "electricity", "type": "quota", "period": "month", "value": value}  # fmt: skip
            r = client.post("/api/v1/targets", json=body)
            assert r.status_code == 201, r.text
        yield c
    store.close()
    app.state.engine.dispose()


def test_a_unit_quota_is_created_and_listed(campus: Campus) -> None:
    got = campus.client.get("/api/v1/targets", params={"scope": "unit", "scope_id": "eng"}).json()["targets"]
    assert [(t["scope"], t["scope_id"], t["value"], t["unit"]) for t in got] == [
        ("unit", "eng", 2500.0, "kWh/month")
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"scope_id": "nowhere"}, "scope_id: unit 'nowhere' is not in the campus config"),
        ({"category": "01A00"}, "a unit target covers a whole carrier (01000), not the sub-item 01A00"),
    ],
)
def test_an_unknown_unit_or_a_sub_item_is_refused(campus: Campus, body: dict[str, Any], problem: str) -> None:
    base = {"scope": "unit", "scope_id": "eng", "kind": "electricity", "type": "quota", "period": "month",
            "value": 10.0}  # fmt: skip
    r = campus.client.post("/api/v1/targets", json={**base, **body})
    assert r.status_code == 422
    assert problem in str(r.json().get("error") or r.json().get("detail"))
    assert len(campus.client.get("/api/v1/targets").json()["targets"]) == len(QUOTAS)


def test_the_monthly_report_rates_each_unit_against_its_target(campus: Campus) -> None:
    js = campus.client.get("/api/v1/reports/monthly", params={"month": "2025-10"}).json()
    rows = {(r["scope_id"], r["kind"]): r for r in js["rows"] if r["scope"] == "unit"}
    assert set(rows) == {("eng", "electricity"), ("eng", "water"), ("arts", "electricity")}
    for unit, quota in QUOTAS.items():
        r = rows[(unit, "electricity")]
        used = unit_month(unit)
        assert r["consumption"] == pytest.approx(used, rel=1e-6)
        assert r["target"] == pytest.approx(quota, rel=1e-9)
        assert r["target_type"] == "quota"
        assert r["deviation_pct"] == pytest.approx((used - quota) / quota * 100, abs=0.01)
        assert r["completeness"] == 1.0
    assert rows[("eng", "electricity")]["deviation_pct"] > 0 > rows[("arts", "electricity")]["deviation_pct"]
    eng = rows[("eng", "electricity")]
    assert eng["floor_area_m2"] == pytest.approx(3000 + 0.4 * 5000)
    assert eng["intensity"] == pytest.approx(unit_month("eng") / (3000 + 0.4 * 5000), abs=1e-3)
    assert rows[("eng", "water")]["consumption"] == pytest.approx(0.1 * (END - START) / 3600, rel=1e-6)
    assert rows[("eng", "water")]["target"] is None
    # The units section agrees with the rows.
    section = {u["unit"]: {c["carrier"]: c["amount"] for c in u["carriers"]} for u in js["units"]}
    assert section["eng"]["electricity"] == pytest.approx(eng["consumption"], rel=1e-6)


def test_the_csv_and_html_have_the_unit_rows(campus: Campus) -> None:
    text = campus.client.get("/api/v1/reports/monthly", params={"month": "2025-10", "format": "csv"}).text
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["scope"] == "unit"]
    got = {(r["scope_id"], r["kind"]): r for r in rows}
    assert set(got) == {("eng", "electricity"), ("eng", "water"), ("arts", "electricity")}
    eng = got[("eng", "electricity")]
    assert eng["name"] == "College of Engineering"
    assert float(eng["consumption"]) == pytest.approx(unit_month("eng"), rel=1e-6)
    assert float(eng["target"]) == pytest.approx(QUOTAS["eng"])
    assert eng["cost"] == ""  # a unit's bill is the cost allocation's, not a share of building cost
    page = campus.client.get("/api/v1/reports/monthly", params={"month": "2025-10", "format": "html"}).text
    assert "College of Engineering" in page and "College of Arts" in page


def test_the_quota_rule_raises_one_alert_for_the_unit_over_its_quota(campus: Campus) -> None:
    res = backtest(
        campus.cfg,
        campus.app.state.store,
        START,
        END,
        rules=["quota.exceeded"],
        step_s=3600,
        sessions=campus.app.state.sessions,
    )
    assert [(a["rule"], a["subject"]["kind"], a["subject"]["id"]) for a in res.alerts] == [
        ("quota.exceeded", "unit", "eng")
    ]
    alert = res.alerts[0]
    # 4 kWh an hour (its 40 % of the shared hall included) passes 2500 kWh in the 626th hour.
    since = datetime.fromisoformat(alert["since"]).timestamp()
    assert abs(since - (START + 625 * 3600)) <= 3600
    assert alert["value"] > QUOTAS["eng"]
    assert units_of(campus.cfg, alert) == ["eng"]


def test_the_console_offers_units_and_shows_their_rows(campus: Campus) -> None:
    app = create_app(campus.cfg, start_jobs=False)
    with TestClient(app):
        AuthStore(app.state.sessions, ttl=0).add_user("unit-op", "unit-pass-1", "operator")
        c = TestClient(app, base_url="http://127.0.0.1")
        c.cookies.set("campusmon_lang", "zh")
        r = c.post("/console/login", data={"username": "unit-op", "password": "unit-pass-1", "next": "/console/"},
                   follow_redirects=False)  # fmt: skip
        assert r.status_code == 303, r.text
        targets = c.get("/console/targets").text
        assert (
            '<optgroup label="单位">' in targets
            and '<option value="eng">College of Engineering</option>' in targets
        )
        assert "<td>College of Engineering</td>" in targets  # the target's scope, by the unit's name
        report = c.get("/console/reports", params={"month": "2025-10"}).text
        assert 'data-scope="unit:eng" data-category="01000"' in report
        assert 'data-scope="unit:arts" data-category="01000"' in report


def test_unit_rows_from_rollups_equal_those_from_raw_registers(campus: Campus) -> None:
    cfg, store = campus.cfg, campus.app.state.store
    acct = parse_accounting(cfg)
    grid = service.Grid.build([periods.month_range("2025-10", cfg.site.tz)], cfg, acct)
    assert month_by_hour_of_day(store, cfg, acct, grid) is not None  # the month is summed by InfluxDB
    rolled = service.monthly_report(store, cfg, acct, "2025-10", use_rollups=True)
    raw = service.monthly_report(store, cfg, acct, "2025-10", use_rollups=False)
    units = [(a, b) for a, b in zip(rolled.rows, raw.rows, strict=True) if a.scope == "unit"]
    assert len(units) == 3
    for a, b in units:
        assert (a.scope_id, a.kind) == (b.scope_id, b.kind)
        assert a.consumption == pytest.approx(b.consumption, rel=1e-9)
        assert (a.readings_received, a.readings_expected) == (b.readings_received, b.readings_expected)
    assert units[0][0].consumption == pytest.approx(unit_month("eng"), rel=1e-6)


def test_a_unit_reduction_target_takes_the_units_own_baseline(campus: Campus) -> None:
    body = {"name": "eng water -10 %", "scope": "unit", "scope_id": "eng", "kind": "water", "type": "reduction",
            "value": 10.0, "baseline_start": "2025-10-01", "baseline_end": "2025-10-10"}  # fmt: skip
    r = campus.client.post("/api/v1/targets", json=body)
    assert r.status_code == 201, r.text
    try:
        js = campus.client.get("/api/v1/reports/monthly", params={"month": "2025-10"}).json()
        row = next(
            x for x in js["rows"] if x["scope"] == "unit" and x["scope_id"] == "eng" and x["kind"] == "water"
        )
        per_day = RATE["w-eng"] * 24  # the baseline's ten days, per day
        assert row["target_type"] == "reduction"
        assert row["target"] == pytest.approx(per_day * 31 * 0.9, rel=1e-6)
    finally:
        campus.client.delete(f"/api/v1/targets/{r.json()['id']}")
