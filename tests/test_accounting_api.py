"""The accounting API over a simulated faulty month in a real InfluxDB: series, summaries, rankings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.accounting import periods
from api.accounting.routes import router
from api.app import install_error_handlers
from api.auth import install_auth
from campusmon.config import CampusConfig
from campusmon.db import init_db
from campusmon.influx import open_store
from campusmon.services import free_port
from firmware_sim.month import SimMonth, write_readings
from tests.auth_helpers import admin_headers
from tests.test_consumption_truth import DAY, MONTH, campus_config, faulty_month

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTING = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())["accounting"]
OCTOBER = {"start": "2026-10-01", "end": "2026-11-01"}


def make_app(cfg: CampusConfig) -> FastAPI:
    app = FastAPI()
    app.state.cfg = cfg
    app.state.store = open_store(cfg)
    app.state.engine, app.state.sessions = init_db(cfg.database.url)
    install_error_handlers(app)
    install_auth(app)  # the routes record who acts, so they run behind the guard, as in create_app
    app.include_router(router)
    return app


@pytest.fixture(scope="module")
def month(influxdb, tmp_path_factory) -> Iterator[tuple[TestClient, CampusConfig, SimMonth]]:
    cfg = campus_config(influxdb.port, str(tmp_path_factory.mktemp("api")), {"accounting": ACCOUNTING})
    sim = faulty_month(cfg)
    app = make_app(cfg)
    app.state.store.ensure_database()
    write_readings(app.state.store, [r for r in sim.readings if r.meter != "e-empty-1"])
    with TestClient(app, headers=admin_headers(cfg)) as client:
        yield client, cfg, sim
    app.state.store.close()
    app.state.engine.dispose()


@pytest.fixture(autouse=True)
def _no_targets_left(month) -> Iterator[None]:
    """Targets made by a test are gone before the next one, even when it fails."""
    yield
    client = month[0]
    for t in client.get("/api/v1/targets").json()["targets"]:
        client.delete(f"/api/v1/targets/{t['id']}")


def message(resp) -> str:
    body = resp.json()
    return str(body.get("error") or body.get("detail"))


def series(body: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(s for s in body["series"] if s["kind"] == kind)


def test_building_series_with_quantity_cost_and_co2(month):
    client, _, sim = month
    r = client.get("/api/v1/consumption", params={"scope": "building:dorm-1", "period": "day", **OCTOBER})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timezone"] == "Asia/Shanghai" and body["start"].startswith("2026-10-01T00:00:00+08:00")
    elec, water = series(body, "electricity"), series(body, "water")
    assert (elec["unit"], water["unit"], elec["quantity"], water["quantity"]) == (
        "kWh",
        "m3",
        "energy_kwh",
        "volume_m3",
    )
    assert elec["meters"] == ["e-dorm-1"] and len(elec["points"]) == 31
    assert elec["total"] == pytest.approx(sim.truth["e-dorm-1"], rel=1e-3)
    assert water["total"] == pytest.approx(sim.truth["w-dorm-1"], rel=1e-3)
    # CO2 at the national 2023 factor; cost at time-of-use prices lies between valley and critical peak.
    assert body["co2_factor"]["kg_per_kwh"] == 0.5306
    assert elec["co2_kg"] == pytest.approx(elec["total"] * 0.5306, rel=1e-4)
    assert 0.260 * elec["total"] < elec["cost"] < 1.248 * elec["total"]
    assert water["cost"] == pytest.approx(water["total"] * 4.10, rel=1e-4) and water["co2_kg"] is None
    # The policy's work is visible.
    assert {e["kind"] for e in body["events"]} == {"rollover", "quarantined"}
    # The gap day is the only incomplete one.
    gap_day = [p for p in water["points"] if p["completeness"] < 1]
    assert [(p["label"], p["readings"], p["expected_readings"]) for p in gap_day] == [("2026-10-06", 72, 96)]


def test_scopes_select_meters_without_double_counting(month):
    client, cfg, sim = month

    def get(scope: str, **kw: Any):
        return client.get("/api/v1/consumption", params={"scope": scope, "period": "month", **OCTOBER, **kw})

    hvac = get("category:01B00").json()
    assert [s["meters"] for s in hvac["series"]] == [["e-dorm-1-ac"]]
    lighting = get("category:01A00").json()  # 01A10 is inside 01A00
    assert series(lighting, "electricity")["meters"] == ["e-teach-1-light"]
    campus = series(get("campus").json(), "electricity")
    assert sorted(campus["meters"]) == ["e-dorm-1", "e-empty-1", "e-lib-1", "e-teach-1"]
    total = sim.truth["e-dorm-1"] + sim.truth["e-teach-1"] + sim.truth["e-lib-1"]
    assert campus["total"] == pytest.approx(total, rel=1e-3)
    group = series(get("group:teaching").json(), "electricity")
    assert group["total"] == pytest.approx(sim.truth["e-teach-1"] + sim.truth["e-lib-1"], rel=1e-3)
    weeks = get("meter:e-lib-1", period="week").json()["series"][0]["points"]
    assert weeks[0]["label"] == "2026-W40" and weeks[0]["start"].startswith("2026-09-28")
    # ISO week 41 is 5-11 October, inside the month.
    oct5 = periods.parse_local("2026-10-05", cfg.site.tz)
    assert weeks[1]["label"] == "2026-W41"
    assert weeks[1]["value"] == pytest.approx(sim.true_between("e-lib-1", oct5, oct5 + 7 * DAY), rel=1e-4)


@pytest.mark.parametrize(
    ("params", "status", "problem"),
    [
        ({"scope": "building:nowhere"}, 404, "building 'nowhere' is not in the campus config"),
        ({"scope": "meter:ghost"}, 404, "meter 'ghost' is not in the campus config"),
        ({"scope": "floor:3"}, 422, "scope='floor:3': use campus, building:<id>"),
        ({"scope": "category:lights"}, 422, "scope='category:lights': use campus"),
        ({"start": "2026-10-05", "end": "2026-10-01"}, 422, "end must be after start"),
        ({"start": "last tuesday"}, 422, "start='last tuesday': use ISO 8601"),
        ({"period": "fortnight"}, 422, "period"),
        ({"period": "hour", "start": "2020-01-01", "end": "2026-01-01"}, 422, "at most"),
    ],
)
def test_bad_parameters_get_a_clear_error(month, params, status, problem):
    client, _, _ = month
    r = client.get("/api/v1/consumption", params=params)
    assert r.status_code == status
    assert problem in message(r)


def test_influxdb_down_is_a_503_not_a_crash(month, tmp_path):
    _, cfg, _ = month
    down = cfg.model_copy(
        update={"influxdb": cfg.influxdb.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})}
    )
    with TestClient(make_app(down), headers=admin_headers(down)) as c:
        r = c.get("/api/v1/consumption", params={"scope": "campus", **OCTOBER})
        assert r.status_code == 503 and "InfluxDB is unavailable" in message(r)
        assert c.get("/api/v1/reports/monthly", params={"month": MONTH}).status_code == 503


def test_building_summary_against_quota_with_projection(month):
    client, cfg, sim = month
    client.post("/api/v1/targets", json={"scope": "building", "scope_id": "dorm-1", "type": "quota",
                                         "period": "month", "value": 30_000})  # fmt: skip
    client.post("/api/v1/targets", json={"scope": "building", "scope_id": "dorm-1", "category": "02000",
                                         "type": "per_capita", "value": 150})  # fmt: skip
    r = client.get("/api/v1/buildings/dorm-1/summary", params={"at": "2026-10-16T12:00"})
    assert r.status_code == 200, r.text
    body = r.json()
    elec = next(k for k in body["kinds"] if k["kind"] == "electricity")
    start = periods.month_range(MONTH, cfg.site.tz).start
    noon, midnight = start + 15 * DAY + DAY // 2, start + 15 * DAY
    assert elec["today"]["label"] == "2026-10-16"
    assert elec["today"]["value"] == pytest.approx(sim.true_between("e-dorm-1", midnight, noon), rel=1e-3)
    so_far = sim.true_between("e-dorm-1", start, noon)
    assert elec["month"]["value"] == pytest.approx(so_far, rel=1e-3)
    assert elec["month"]["quota"] == 30_000 and elec["today"]["quota"] == pytest.approx(30_000 / 31)
    assert elec["month"]["projected"] == pytest.approx(so_far * 31 / 15.5, rel=2e-3)
    assert elec["month"]["share_of_quota"] == pytest.approx(so_far / 30_000, rel=1e-3)
    water = next(k for k in body["kinds"] if k["kind"] == "water")
    assert water["month"]["quota"] == pytest.approx(0.150 * 480 * 31)
    assert water["today"]["completeness"] == 1.0
    assert client.get("/api/v1/buildings/nowhere/summary").status_code == 404


def test_rankings_are_the_monthly_assessment(month):
    client, _, sim = month
    r = client.get("/api/v1/rankings", params={"period": "month", "month": MONTH, "metric": "intensity"})
    assert r.status_code == 200, r.text
    ranks = r.json()["rankings"]
    intensity = {"dorm-1": sim.truth["e-dorm-1"] / 6000, "teach-1": sim.truth["e-teach-1"] / 9000,
                 "lib-1": sim.truth["e-lib-1"] / 5000}  # fmt: skip
    assert [x["building"] for x in ranks[:3]] == sorted(intensity, key=intensity.get)
    assert [x["rank"] for x in ranks] == [1, 2, 3, None]
    # The silent building is not "best": it is unranked, with the reason.
    assert ranks[3]["building"] == "empty-1" and "0% of the expected readings" in ranks[3]["why_unranked"]
    per_capita = client.get("/api/v1/rankings", params={"month": MONTH, "metric": "per_capita"}).json()[
        "rankings"
    ]
    assert [x["building"] for x in per_capita if x["rank"]] == sorted(
        ["dorm-1", "lib-1"],
        key=lambda b: {"dorm-1": sim.truth["e-dorm-1"] / 480, "lib-1": sim.truth["e-lib-1"] / 40}[b],
    )
    water = client.get(
        "/api/v1/rankings", params={"month": MONTH, "metric": "per_capita", "kind": "water"}
    ).json()
    assert water["rankings"][0]["unit"] == "L/person/day"


def test_rankings_vs_target(month):
    client, _, sim = month
    quota = {"scope": "building", "type": "quota", "period": "month"}
    for b, m, f in (("dorm-1", "e-dorm-1", 1.10), ("teach-1", "e-teach-1", 0.95)):
        client.post("/api/v1/targets", json={**quota, "scope_id": b, "value": round(sim.truth[m] * f)})
    ranks = client.get("/api/v1/rankings", params={"month": MONTH, "metric": "vs_target"}).json()["rankings"]
    assert [(x["building"], x["rank"]) for x in ranks[:2]] == [("dorm-1", 1), ("teach-1", 2)]
    assert ranks[0]["value"] == pytest.approx((1 / 1.10 - 1) * 100, abs=0.1)
    assert ranks[1]["value"] == pytest.approx((1 / 0.95 - 1) * 100, abs=0.1)
    assert {x["why_unranked"] for x in ranks[2:]} == {"no target", "only 0% of the expected readings"}
    bad = client.get("/api/v1/rankings", params={"month": MONTH, "metric": "beauty"})
    assert bad.status_code == 422 and "metric" in message(bad)
    assert client.get("/api/v1/rankings", params={"period": "year"}).status_code == 422
