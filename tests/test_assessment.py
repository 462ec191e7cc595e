"""Annual assessment of units over a simulated ground-truth year in a real InfluxDB; fuel entry; factors.

The campus has three units: two colleges sharing a hall by floor area, and an administrative unit
with a coal-fired boiler house, generator diesel and meters that missed a fifth of the year.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.accounting import assessment
from api.accounting.assessment_routes import router as assessment_router
from api.accounting.routes import router as accounting_router
from api.accounting.settings import accounting_settings
from api.app import install_error_handlers
from api.auth import install_auth
from campusmon.config import CampusConfig, ConfigError, parse_config
from campusmon.db import init_db
from campusmon.factors import DEFAULT_KGCE, Factors, parse_energy_factors
from campusmon.influx import open_store
from firmware_sim.month import write_readings
from firmware_sim.year import SimYear, simulate_years, year_start
from tests.auth_helpers import admin_token

YEAR = 2025
TZ_OFFSET = 8 * 3600
# GB/T 2589-2020 appendix A, 各种能源折标准煤参考系数 (typed here from the table, not read from the code)
TABLE = {
    "electricity": 0.1229,  # kgce/kWh, equivalent value
    "coal": 0.7143,  # kgce/kg raw coal
    "diesel": 1.4571,
    "petrol": 1.4714,
    "lpg": 1.7143,
    "gas": 1.2143,  # kgce/m3 natural gas (range 1.1000-1.3300)
    "heat": 0.03412 * 3.6,  # 0.03412 kgce/MJ, per kWh of heat
    "water": 0.2571,  # kgce/t fresh water
}
FLAT = {"months": list(range(1, 13)), "periods": {"valley": ["22:00-06:00"], "peak": ["06:00-22:00"]}}
ACCOUNTING = {
    "tariffs": {
        "electricity": [
            {"effective_from": "2024-01-01", "prices": {"valley": 0.3, "peak": 0.9}, "schedules": [FLAT]}
        ],
        "water": [{"effective_from": "2024-01-01", "price": 4.0}],
    }
}
TARGETS = [
    {"unit": "eng", "year": YEAR, "energy_kgce_per_m2": 14.0, "energy_kgce_per_person": 150.0,
     "electricity_kwh": 700_000, "water_m3": 9_000, "gas_m3": 9_000, "heat_kwh": 800_000, "reduction_pct": 3},
    {"unit": "arts", "year": YEAR, "energy_kgce_per_m2": 9.0, "energy_kgce_per_person": 90.0,
     "electricity_kwh": 400_000, "water_m3": 8_000, "reduction_pct": 3},
    {"unit": "admin", "year": YEAR, "energy_kgce_per_m2": 60.0, "electricity_kwh": 300_000, "water_m3": 3_000,
     "reduction_pct": 5},
]  # fmt: skip
CAMPUS: dict[str, Any] = {
    "site": {"name": "Small campus", "timezone": "Asia/Shanghai"},
    "buildings": [
        {"id": "eng-hall", "type": "classroom", "floor_area_m2": 6000, "occupants": 500},
        {"id": "shared-hall", "type": "canteen", "floor_area_m2": 5000, "occupants": 400},
        {"id": "arts-hall", "type": "classroom", "floor_area_m2": 4000, "occupants": 300},
        {"id": "admin-hall", "type": "admin", "floor_area_m2": 3000, "occupants": 100},
        {"id": "boiler", "type": "other", "floor_area_m2": 200, "occupants": 0},
        {"id": "depot", "type": "other", "floor_area_m2": 100, "occupants": 0},
    ],
    "meters": [
        {"id": "e-eng", "building": "eng-hall", "kind": "electricity", "interval_s": 3600},
        {"id": "w-eng", "building": "eng-hall", "kind": "water", "interval_s": 3600},
        {"id": "h-eng", "building": "eng-hall", "kind": "heat", "category": "04000", "interval_s": 3600},
        {"id": "e-shared", "building": "shared-hall", "kind": "electricity", "interval_s": 3600},
        {"id": "w-shared", "building": "shared-hall", "kind": "water", "interval_s": 3600},
        {"id": "g-shared", "building": "shared-hall", "kind": "gas", "category": "03000", "interval_s": 3600},
        {"id": "e-arts", "building": "arts-hall", "kind": "electricity", "interval_s": 3600},
        {"id": "w-arts", "building": "arts-hall", "kind": "water", "interval_s": 3600},
        {"id": "h-arts", "building": "arts-hall", "kind": "heat", "category": "04000", "interval_s": 3600},
        {"id": "e-admin", "building": "admin-hall", "kind": "electricity", "interval_s": 3600},
        {"id": "w-admin", "building": "admin-hall", "kind": "water", "interval_s": 3600},
        {"id": "w-depot", "building": "depot", "kind": "water", "interval_s": 86400},
    ],
    "units": [
        {"id": "eng", "name": "College of Engineering", "type": "college",
         "parts": [{"building": "eng-hall"}, {"building": "shared-hall", "share": 0.4}]},
        {"id": "arts", "name": "College of Arts", "type": "college",
         "parts": [{"building": "arts-hall"}, {"building": "shared-hall", "share": 0.6}]},
        {"id": "admin", "name": "Administration", "type": "administrative",
         "parts": [{"building": "admin-hall"}, {"building": "boiler"}]},
    ],
    "accounting": ACCOUNTING,
    "assessment": {"targets": TARGETS, "fuel_attribution": {"coal": "stock"}},
}  # fmt: skip
SHARES = {"eng": [("eng-hall", 1.0), ("shared-hall", 0.4)], "arts": [("arts-hall", 1.0), ("shared-hall", 0.6)],
          "admin": [("admin-hall", 1.0), ("boiler", 1.0)]}  # fmt: skip


def config(influx_port: int, tmp: Path, **over: Any) -> CampusConfig:
    data = {k: v for k, v in CAMPUS.items()}
    data.update(over)
    data["influxdb"] = {"url": f"http://127.0.0.1:{influx_port}", "database": "t_" + uuid.uuid4().hex[:12]}
    data["database"] = {"url": f"sqlite:///{tmp}/assess-{uuid.uuid4().hex[:8]}.sqlite"}
    return parse_config(data, "test-config", environ={})


def make_app(cfg: CampusConfig) -> FastAPI:
    app = FastAPI()
    app.state.cfg = cfg
    app.state.store = open_store(cfg)
    app.state.engine, app.state.sessions = init_db(cfg.database.url)
    install_error_handlers(app)
    install_auth(app)
    app.include_router(accounting_router)
    app.include_router(assessment_router)
    return app


class Campus:
    def __init__(self, client: TestClient, cfg: CampusConfig, sim: SimYear, tmp: Path) -> None:
        self.client, self.cfg, self.sim, self.tmp = client, cfg, sim, tmp

    def bounds(self, year: int) -> tuple[int, int]:
        return year_start(year, self.cfg), year_start(year + 1, self.cfg)

    def meter_truth(self, meter: str, year: int) -> float:
        return self.sim.truth(meter, *self.bounds(year))

    def carrier(self, unit: str, kind: str, year: int) -> float:
        total = 0.0
        for b, share in SHARES[unit]:
            for m in self.cfg.meters:
                if m.building == b and m.kind.value == kind:
                    total += share * self.meter_truth(m.id, year)
        return total

    def fuel(self, unit: str, fuel: str, year: int) -> float:
        place = "boiler" if fuel == "coal" else unit
        if unit != "admin":
            return 0.0
        return self.sim.burnt(place, fuel, date(year, 1, 1), date(year + 1, 1, 1))

    def kgce(self, unit: str, year: int, table: dict[str, float] = TABLE) -> float:
        kinds = sum(table[k] * self.carrier(unit, k, year) for k in ("electricity", "gas", "heat"))
        return kinds + sum(table[f] * self.fuel(unit, f, year) for f in ("coal", "diesel"))


@pytest.fixture(scope="module")
def campus(influxdb, tmp_path_factory) -> Iterator[Campus]:
    tmp = tmp_path_factory.mktemp("assessment")
    cfg = config(influxdb.port, tmp)
    g0 = year_start(YEAR, cfg) + 120 * 86400
    gap = (g0, g0 + int(0.2 * 8760) * 3600)  # a fifth of the year's hours
    sim = simulate_years(
        cfg, YEAR - 1, YEAR, seed=3, gaps={"e-admin": gap, "w-admin": gap},
        coal={"building": "boiler", "kg_per_day": 2500.0, "supplier": "Coal Co."},
        diesel={"unit": "admin", "litres": 400.0, "every_days": 40},
    )  # fmt: skip
    app = make_app(cfg)
    app.state.store.ensure_database()
    write_readings(app.state.store, [r for r in sim.readings if r.meter != "w-depot"])  # read by hand
    token = admin_token(cfg, "operator")
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        for e in sim.fuel_entries:
            r = client.post("/api/v1/fuel", json=e)
            assert r.status_code == 201, (e, r.text)
        yield Campus(client, cfg, sim, tmp)
    app.state.store.close()
    app.state.engine.dispose()


def expected_score(c: Campus, unit: str) -> float:
    """The documented rule, spelled out: weighted mean of 100 − 5 points per percent over each target."""
    t = next(x for x in TARGETS if x["unit"] == unit)
    u = c.cfg.unit(unit)
    area = sum(c.cfg.building(b).floor_area_m2 * s for b, s in SHARES[unit])
    people = sum(c.cfg.building(b).occupants * s for b, s in SHARES[unit])
    k = c.kgce(unit, YEAR)
    figures = {
        "energy_kgce_per_m2": (k / area, 30), "energy_kgce_per_person": (k / people if people else None, 20),
        "electricity_kwh": (c.carrier(unit, "electricity", YEAR), 15), "water_m3": (c.carrier(unit, "water", YEAR), 15),
        "gas_m3": (c.carrier(unit, "gas", YEAR), 5), "heat_kwh": (c.carrier(unit, "heat", YEAR), 5),
    }  # fmt: skip
    assert u is not None
    parts = []
    for key, (actual, w) in figures.items():
        if t.get(key) and actual is not None:
            parts.append((w, actual, t[key]))
    parts.append((10, k, c.kgce(unit, YEAR - 1) * (1 - t["reduction_pct"] / 100)))
    scores = [(w, 100.0 if a <= tg else max(0.0, 100 * (1 - 5 * (a - tg) / tg))) for w, a, tg in parts]
    return sum(w * s for w, s in scores) / sum(w for w, _ in scores)


def by_unit(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["unit"]: u for u in body["units"]}


def test_ground_truth_year(campus: Campus):
    r = campus.client.get("/api/v1/assessment/annual", params={"year": YEAR})
    assert r.status_code == 200, r.text
    units = by_unit(r.json())
    for uid in ("eng", "arts", "admin"):
        u = units[uid]
        truth = campus.kgce(uid, YEAR)
        assert truth > 0
        assert u["kgce"] == pytest.approx(truth, rel=1e-3), uid
        area = sum(campus.cfg.building(b).floor_area_m2 * s for b, s in SHARES[uid])
        people = sum(campus.cfg.building(b).occupants * s for b, s in SHARES[uid])
        assert u["floor_area_m2"] == pytest.approx(area) and u["occupants"] == pytest.approx(people)
        assert u["kgce_per_m2"] == pytest.approx(truth / area, rel=1e-3)
        assert u["kgce_per_person"] == pytest.approx(truth / people, rel=1e-3)
        for kind in ("electricity", "water", "gas", "heat"):
            assert u["by_carrier"][kind]["amount"] == pytest.approx(
                campus.carrier(uid, kind, YEAR), rel=1e-3, abs=1e-6
            )
            assert u["by_carrier"][kind]["previous"] == pytest.approx(
                campus.carrier(uid, kind, YEAR - 1), rel=1e-3, abs=1e-6
            )
        water_l = campus.carrier(uid, "water", YEAR) * 1000 / people / 365
        assert u["water_l_per_person_day"] == pytest.approx(water_l, rel=1e-3)
        assert u["score"] == pytest.approx(expected_score(campus, uid), abs=0.01), uid
    admin = units["admin"]
    assert admin["by_carrier"]["coal"]["amount"] == pytest.approx(
        campus.fuel("admin", "coal", YEAR), rel=1e-6
    )
    assert admin["by_carrier"]["diesel"]["amount"] == pytest.approx(
        campus.fuel("admin", "diesel", YEAR), rel=1e-6
    )
    # the unit with 80 % of its readings: flagged, neither passed nor failed, unranked
    assert admin["completeness"] == pytest.approx(0.8, abs=0.001)
    assert admin["flagged"] is True and admin["passed"] is None and admin["rank"] is None
    assert "80.0%" in admin["why_unranked"]
    for uid in ("eng", "arts"):
        assert units[uid]["completeness"] == 1.0 and units[uid]["flagged"] is False
        assert units[uid]["passed"] == (units[uid]["score"] >= 60)
    ranked = sorted((units[u] for u in ("eng", "arts")), key=lambda u: -u["score"])
    assert [u["rank"] for u in ranked] == [1, 2]


def test_outputs_xlsx_csv_html_and_cli(campus: Campus):
    r = campus.client.get("/api/v1/assessment/annual", params={"year": YEAR, "format": "xlsx"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.openxmlformats")
    wb = openpyxl.load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == ["Assessment", "Indicators", "Carriers", "Factors", "Settings"]
    ws = wb["Assessment"]
    head = [c.value for c in ws[1]]
    rows = {
        row[head.index("unit")]: dict(zip(head, row, strict=True))
        for row in ws.iter_rows(min_row=2, values_only=True)
    }
    for uid in ("eng", "arts", "admin"):
        assert rows[uid]["kgce"] == pytest.approx(campus.kgce(uid, YEAR), rel=1e-3)
    assert rows["admin"]["flagged"] is True and rows["admin"]["rank"] is None
    assert ws.cell(row=list(rows).index("admin") + 2, column=1).fill.fgColor.rgb.endswith("FDE2E2")
    factors = {row[0]: row for row in wb["Factors"].iter_rows(min_row=2, values_only=True)}
    assert factors["coal"][2] == 0.7143 and "GB/T 2589-2020" in factors["coal"][3]
    text = campus.client.get("/api/v1/assessment/annual", params={"year": YEAR, "format": "csv"}).text
    got = {r["unit"]: r for r in csv.DictReader(io.StringIO(text))}
    assert float(got["eng"]["kgce"]) == pytest.approx(campus.kgce("eng", YEAR), rel=1e-3)
    page = campus.client.get("/api/v1/assessment/annual", params={"year": YEAR, "format": "html"}).text
    assert "Annual assessment 2025" in page and 'class="low"' in page and "GB/T 2589-2020" in page
    # the command line: one command, a progress bar, the same figures
    path = campus.tmp / "campus.yaml"
    data = {
        **CAMPUS,
        "influxdb": campus.cfg.influxdb.model_dump(),
        "database": {"url": campus.cfg.database.url},
    }
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    from campusmon.cli import app

    out = campus.tmp / "annual.xlsx"
    res = CliRunner().invoke(
        app, ["report", "annual", "--year", str(YEAR), "--out", str(out), "-c", str(path)]
    )
    assert res.exit_code == 0, res.output
    assert "assessment 2025" in res.output and "1 flagged" in res.output
    ws = openpyxl.load_workbook(out)["Assessment"]
    head = [c.value for c in ws[1]]
    cli_rows = {
        row[head.index("unit")]: row[head.index("kgce")] for row in ws.iter_rows(min_row=2, values_only=True)
    }
    assert cli_rows == {u: rows[u]["kgce"] for u in rows}


def test_override_with_reason_brings_the_unit_back(campus: Campus):
    client = campus.client
    viewer = {"Authorization": f"Bearer {admin_token(campus.cfg, 'viewer')}"}
    body = {"year": YEAR, "unit": "admin", "reason": "meters replaced in May; readings verified by hand"}
    assert client.post("/api/v1/assessment/overrides", json=body, headers=viewer).status_code == 403
    admin = {"Authorization": f"Bearer {admin_token(campus.cfg, 'admin')}"}
    r = client.post("/api/v1/assessment/overrides", json=body, headers=admin)
    assert r.status_code == 201, r.text
    try:
        assert client.post("/api/v1/assessment/overrides", json=body, headers=admin).status_code == 409
        u = by_unit(client.get("/api/v1/assessment/annual", params={"year": YEAR}).json())["admin"]
        assert u["flagged"] is True and u["override_reason"] == body["reason"]
        assert u["passed"] is not None and u["rank"] is not None
        listed = client.get("/api/v1/assessment/overrides", params={"year": YEAR}).json()["overrides"]
        assert listed[0]["decided_by"] == "token:test-admin"
    finally:
        from campusmon.db import AssessmentOverride

        with client.app.state.sessions() as s:
            s.query(AssessmentOverride).delete()
            s.commit()


def test_fuel_entry_refusals(campus: Campus):
    client = campus.client
    good = {"fuel": "coal", "day": "2025-06-01", "quantity": 12.5, "unit": "t", "building": "boiler",
            "supplier": "Coal Co.", "receipt": "R-refusal-1"}  # fmt: skip
    cases = [
        ({"unit": "gal"}, 422, "unit 'gal' does not fit coal: use t, kg"),
        ({"fuel": "lpg", "unit": "L"}, 422, "unit 'L' does not fit lpg: use kg, t"),
        ({"quantity": -3}, 422, "quantity -3 is negative"),
        ({"building": None, "unit_id": "physics"}, 422, "unit 'physics' is not in the campus config"),
        ({"building": "nowhere"}, 422, "building 'nowhere' is not in the campus config"),
        ({"fuel": "uranium"}, 422, "fuel 'uranium' is not one of coal, diesel, petrol, lpg"),
        ({"receipt": ""}, 422, "a delivery needs its receipt number"),
    ]
    before = len(client.get("/api/v1/fuel").json()["entries"])
    for change, status, text in cases:
        r = client.post("/api/v1/fuel", json={**good, **change})
        assert r.status_code == status, (change, r.text)
        assert text in r.json()["error"], (change, r.json())
    r = client.post("/api/v1/fuel", json=good)
    assert r.status_code == 201, r.text
    assert r.json()["quantity_kg"] == 12500.0 and r.json()["entered_by"] == "token:test-operator"
    dup = client.post("/api/v1/fuel", json={**good, "quantity": 3})
    assert dup.status_code == 409
    assert (
        f"receipt 'R-refusal-1' of supplier 'Coal Co.' is already entered (entry {r.json()['id']}"
        in dup.json()["error"]
    )
    viewer = {"Authorization": f"Bearer {admin_token(campus.cfg, 'viewer')}"}
    assert client.post("/api/v1/fuel", json={**good, "receipt": "R-2"}, headers=viewer).status_code == 403
    after = client.get(
        "/api/v1/fuel", params={"fuel": "coal", "start": "2025-06-01", "end": "2025-06-02"}
    ).json()
    assert [e["receipt"] for e in after["entries"]] == ["R-refusal-1"]
    assert len(client.get("/api/v1/fuel").json()["entries"]) == before + 1
    # litres of diesel become kg through the density (the default, or the receipt's own)
    d = client.post("/api/v1/fuel", json={"fuel": "diesel", "day": "2023-03-01", "quantity": 100, "unit": "L",
                                          "unit_id": "admin", "supplier": "Oil Co.", "receipt": "R-d1",
                                          "density_kg_per_l": 0.83})  # fmt: skip
    assert d.status_code == 201 and d.json()["quantity_kg"] == pytest.approx(83.0)
    # the command line refuses the same way and records who entered what in the audit log
    path = campus.tmp / "campus-fuel.yaml"
    data = {
        **CAMPUS,
        "influxdb": campus.cfg.influxdb.model_dump(),
        "database": {"url": campus.cfg.database.url},
    }
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    from campusmon.cli import app

    bad = CliRunner().invoke(app, ["fuel", "add", "--building", "boiler", "--receipt", "X", "--date", "2023-05-01",
                                   "-c", str(path), "--", "coal", "-1", "t"])  # fmt: skip
    assert bad.exit_code == 1 and "quantity -1 is negative" in bad.output
    ok = CliRunner().invoke(app, ["fuel", "add", "lpg", "45", "kg", "--unit", "arts", "--receipt", "L-1",
                                  "--supplier", "Gas Co.", "--date", "2023-05-01", "-c", str(path)])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    from api.auth.service import AuthStore

    log = AuthStore(client.app.state.sessions, ttl=0).audit_log(20)
    assert any(e["action"] == "fuel add" and e["actor"].startswith("cli") for e in log)
    assert any(
        e["action"] == "POST /api/v1/fuel" and e["actor"] == "token:test-operator" and e["status"] == 201
        for e in log
    )


def test_manual_readings_go_through_ingest(campus: Campus):
    client = campus.client
    rows = [{"meter": "w-depot", "time": "2025-03-01T08:00", "value": 10.0},
            {"meter": "w-depot", "time": "2025-03-02T08:00", "value": 12.5},
            {"meter": "w-nowhere", "time": "2025-03-02T08:00", "value": 1.0}]  # fmt: skip
    r = client.post("/api/v1/readings/manual", json={"readings": rows})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 2 and r.json()["errors"] == [
        "row 3: meter 'w-nowhere' is not in the campus config"
    ]
    # a register that runs backwards is a plain number: the ingest checks (range) still apply
    bad = client.post(
        "/api/v1/readings/manual", json={"readings": [{"meter": "w-depot", "time": "x", "value": 1}]}
    )
    assert bad.status_code == 422 and "is not ISO 8601" in str(bad.json()["error"])
    c = client.get("/api/v1/consumption", params={"scope": "meter:w-depot", "period": "month",
                                                 "start": "2025-03-01", "end": "2025-04-01"}).json()  # fmt: skip
    assert c["series"][0]["total"] == pytest.approx(2.5)
    path = campus.tmp / "readings.csv"
    path.write_text("meter,time,value\nw-depot,2025-03-03T08:00,13.5\nw-depot,2025-03-04T08:00,oops\n")
    cfgfile = campus.tmp / "campus-readings.yaml"
    data = {
        **CAMPUS,
        "influxdb": campus.cfg.influxdb.model_dump(),
        "database": {"url": campus.cfg.database.url},
    }
    cfgfile.write_text(yaml.safe_dump(data, allow_unicode=True))
    from campusmon.cli import app

    res = CliRunner().invoke(app, ["readings", "import", "--csv", str(path), "-c", str(cfgfile)])
    assert res.exit_code == 1 and "row 2: value 'oops' is not a number" in res.output
    assert "stored 1 of 2" in res.output
    c = client.get("/api/v1/consumption", params={"scope": "meter:w-depot", "period": "month",
                                                 "start": "2025-03-01", "end": "2025-04-01"}).json()  # fmt: skip
    assert c["series"][0]["total"] == pytest.approx(3.5)


def test_conversion_factor_defaults_equal_the_cited_table():
    fx = Factors(parse_energy_factors({}))
    assert {c: fx.kgce_factor(c) for c in TABLE} == pytest.approx(TABLE)
    assert DEFAULT_KGCE["heat"] == pytest.approx(0.122832)
    assert all("GB/T 2589-2020" in fx.kgce_source(c) for c in TABLE)
    assert not fx.in_comprehensive("water")
    with pytest.raises(ValueError, match="equal_value needs electricity_equal_value"):
        parse_energy_factors({"electricity_basis": "equal_value"})


def test_an_override_changes_what_depends_on_it_and_nothing_else(campus: Campus):
    cfg = campus.cfg
    acc = accounting_settings(cfg)
    store = open_store(cfg)
    try:
        with campus.client.app.state.sessions() as s:
            from api.accounting import fuel

            rows = fuel.entries(s)
        base = assessment.annual_assessment(store, cfg, acc, YEAR, rows)
        data = {**CAMPUS, "influxdb": cfg.influxdb.model_dump(), "database": {"url": cfg.database.url},
                "energy_factors": {"kgce": {"gas": 1.33}, "source": "supplier's heating value 2025"}}  # fmt: skip
        cfg2 = parse_config(data, "test-config", environ={})
        gas = assessment.annual_assessment(store, cfg2, accounting_settings(cfg2), YEAR, rows)
    finally:
        store.close()
    for a, b in zip(base.units, gas.units, strict=True):
        delta = a.native["gas"] * (1.33 - 1.2143)
        assert b.kgce == pytest.approx(a.kgce + delta, rel=1e-9)
        assert b.kgce_by_carrier["gas"] == pytest.approx(a.native["gas"] * 1.33)
        others = {c: v for c, v in a.kgce_by_carrier.items() if c != "gas"}
        assert {c: v for c, v in b.kgce_by_carrier.items() if c != "gas"} == others
        assert b.native == a.native and b.co2_by_carrier == a.co2_by_carrier
        assert b.completeness == a.completeness and b.flagged == a.flagged
        if a.native["gas"] == 0:
            assert b.kgce == a.kgce and b.score == a.score
    assert base.units[2].native["gas"] == 0 and base.units[0].native["gas"] > 0
    table = {f["carrier"]: f for f in gas.factors}
    assert (
        table["gas"]["kgce_per_unit"] == 1.33
        and "supplier's heating value 2025" in table["gas"]["kgce_source"]
    )
    assert table["coal"]["kgce_per_unit"] == 0.7143


def test_kgce_and_co2_measures_on_unit_consumption(campus: Campus):
    client = campus.client
    native = client.get("/api/v1/units/eng/consumption", params={"year": YEAR}).json()
    kgce = client.get("/api/v1/units/eng/consumption", params={"year": YEAR, "measure": "kgce"}).json()
    co2 = client.get("/api/v1/units/eng/consumption", params={"year": YEAR, "measure": "co2"}).json()
    for n, k, c in zip(native["series"], kgce["series"], co2["series"], strict=True):
        assert k["total"] == pytest.approx(n["total"] * TABLE[n["carrier"]], rel=1e-6)
        assert k["unit"] == "kgce" and c["unit"] == "kgCO2"
    elec = next(s for s in co2["series"] if s["carrier"] == "electricity")
    n_elec = next(s for s in native["series"] if s["carrier"] == "electricity")
    assert elec["total"] == pytest.approx(n_elec["total"] * 0.5306, rel=1e-6)  # MEE/NBS national, 2023 data
    assert n_elec["total"] == pytest.approx(campus.carrier("eng", "electricity", YEAR), rel=1e-3)
    facs = {f["carrier"]: f for f in client.get("/api/v1/factors", params={"year": YEAR}).json()["factors"]}
    assert (
        facs["electricity"]["co2_kg_per_unit"] == 0.5306 and "2023 data" in facs["electricity"]["co2_source"]
    )
    ranks = client.get("/api/v1/rankings/units", params={"year": YEAR, "metric": "kgce_per_m2"}).json()[
        "rankings"
    ]
    assert ranks[-1]["unit"] == "admin" and ranks[-1]["rank"] is None
    assert client.get("/api/v1/units/nobody/consumption").status_code == 404


def test_monthly_cost_allocation(campus: Campus):
    r = campus.client.get("/api/v1/allocation/monthly", params={"month": "2025-03"})
    assert r.status_code == 200, r.text
    lines = r.json()["lines"]
    shared = [x for x in lines if x["building"] == "shared-hall" and x["carrier"] == "electricity"]
    assert {x["unit"]: x["share"] for x in shared} == {"eng": 0.4, "arts": 0.6}
    start, end = year_start(2025, campus.cfg) + 59 * 86400, year_start(2025, campus.cfg) + 90 * 86400
    hours = campus.sim.hourly["e-shared"]
    bill = sum(v * (0.3 if ((h + TZ_OFFSET) // 3600) % 24 in (22, 23, 0, 1, 2, 3, 4, 5) else 0.9)
               for h, v in hours.items() if start <= h < end)  # fmt: skip
    for x in shared:
        assert x["cost"] == pytest.approx(bill * x["share"], rel=1e-3, abs=0.01)
    assert sum(x["cost"] for x in shared) == pytest.approx(bill, rel=1e-3)
    water = [x for x in lines if x["building"] == "eng-hall" and x["carrier"] == "water"]
    assert water[0]["cost"] == pytest.approx(4.0 * campus.sim.truth("w-eng", start, end), rel=1e-3)
    gas = [x for x in lines if x["carrier"] == "gas"]
    assert gas and all(x["cost"] is None for x in gas)  # no gas tariff: no invented price
    x = campus.client.get("/api/v1/allocation/monthly", params={"month": "2025-03", "format": "xlsx"})
    ws = openpyxl.load_workbook(io.BytesIO(x.content))["Allocation"]
    head = [c.value for c in ws[1]]
    assert len(list(ws.iter_rows(min_row=2))) == len(lines)
    costs = [row[head.index("cost")] for row in ws.iter_rows(min_row=2, values_only=True)]
    assert costs == [ln["cost"] for ln in lines]
    # occupants rule: people of each unit in the shared hall
    from api.accounting.allocation import split_weights

    data = {**CAMPUS, "assessment": {"allocation_rule": "occupants"}, "units": [
        {"id": "eng", "parts": [{"building": "shared-hall", "share": 0.4, "occupants": 100}]},
        {"id": "arts", "parts": [{"building": "shared-hall", "share": 0.6, "occupants": 300}]}]}  # fmt: skip
    cfg2 = parse_config(data, "t", environ={})
    assert split_weights(cfg2, "shared-hall", "occupants") == [("eng", 0.25), ("arts", 0.75)]
    assert split_weights(cfg2, "shared-hall", "floor_area") == [("eng", 0.4), ("arts", 0.6)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"units": [{"id": "x", "parts": [{"building": "nowhere"}]}]},
         "units[0] (x).parts[0]: building 'nowhere' is not defined under buildings"),
        ({"units": [{"id": "x", "parts": [{"building": "eng-hall", "meters": ["e-arts"]}]}]},
         "meter 'e-arts' is in building 'arts-hall', not 'eng-hall'"),
        ({"units": [{"id": "x", "parts": [{"building": "eng-hall", "share": 0.7}]},
                    {"id": "y", "parts": [{"building": "eng-hall", "share": 0.5}]}]},
         "building 'eng-hall' is shared out 1.2 times its floor area"),
        ({"units": [{"id": "x", "parts": [{"building": "eng-hall", "meters": ["e-eng"]}]},
                    {"id": "y", "parts": [{"building": "eng-hall", "meters": ["e-eng"]}]}]},
         "meter 'e-eng' already belongs to unit 'x'"),
        ({"energy_factors": {"kgce": {"coal": -1}}}, "energy_factors: negative kgce factor(s)"),
        ({"energy_factors": {"kgce": {"uranium": 1}}}, "energy_factors: kgce.uranium.[key]"),
    ],
)  # fmt: skip
def test_units_and_factors_are_checked_at_load(change, message):
    with pytest.raises(ConfigError) as e:
        parse_config({**CAMPUS, **change}, "campus.yaml", environ={})
    assert message in str(e.value)


def test_assessment_targets_name_known_units():
    cfg = parse_config({**CAMPUS, "assessment": {"targets": [{"unit": "physics", "year": 2025, "water_m3": 1}]}},
                       "campus.yaml", environ={})  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"assessment.targets\[0\]: unit 'physics' is not defined under units"
    ):
        assessment.assessment_settings(cfg, "campus.yaml")


def test_the_example_campus_meters_gas_and_heat_and_has_units():
    """deploy/campus.yaml: every metered carrier, units owning every building, and a clean config check."""
    from campusmon.cli import app
    from campusmon.config import load_config

    path = Path(__file__).resolve().parent.parent / "deploy" / "campus.yaml"
    cfg = load_config(path, environ={})
    assert {m.kind.value for m in cfg.meters} == {"electricity", "water", "gas", "heat"}
    owned = {p.building for u in cfg.units for p in u.parts}
    assert owned == {b.id for b in cfg.buildings}
    assert {t.unit for t in assessment.assessment_settings(cfg).targets} <= {u.id for u in cfg.units}
    res = CliRunner().invoke(app, ["config", "check", "-c", str(path)])
    assert res.exit_code == 0 and f"{len(cfg.meters)} meters" in res.output, res.output
