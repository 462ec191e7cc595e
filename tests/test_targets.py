"""Energy-saving targets: validation, allowances, and CRUD with an audit trail through the API."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.accounting.routes import router
from api.accounting.targets import TargetInvalid, TargetSpec, allowance, validate_spec
from api.app import install_error_handlers
from api.auth import install_auth
from campusmon.db import init_db
from campusmon.influx import open_store
from tests.auth_helpers import admin_headers
from tests.conftest import SMALL_CAMPUS

GROUPED = {**SMALL_CAMPUS, "buildings": [{**b, "group": "north"} for b in SMALL_CAMPUS["buildings"]]}


def message(resp) -> str:
    body = resp.json()
    return str(body.get("error") or body.get("detail"))


@pytest.fixture
def client(make_config, influxdb, db_url):
    """Targets live in the relational store: every API test here runs on SQLite and on PostgreSQL."""
    cfg = make_config(influx=influxdb, data=GROUPED, database={"url": db_url})
    app = FastAPI()
    app.state.cfg = cfg
    app.state.store = open_store(cfg)
    engine, app.state.sessions = init_db(cfg.database.url)
    install_error_handlers(app)
    install_auth(app)  # who changed a target is the authenticated identity
    app.include_router(router)
    with TestClient(app, headers=admin_headers(cfg)) as c:
        yield c
    app.state.store.close()
    engine.dispose()


QUOTA = {
    "name": "dorm",
    "scope": "building",
    "scope_id": "dorm-1",
    "type": "quota",
    "period": "month",
    "value": 30000,
}


def as_user(client: TestClient, name: str) -> dict[str, str]:
    """A bearer token of an operator called ``name``: the audit trail names the identity, not a header."""
    store = client.app.state.auth.store  # type: ignore[attr-defined]
    store.add_user(name, "a long enough password", "operator")
    return {"Authorization": f"Bearer {store.create_token(name, 'operator', user=name)[0]}"}


def test_create_read_update_delete_with_audit_trail(client):
    office, auditor = as_user(client, "energy-office"), as_user(client, "auditor")
    r = client.post("/api/v1/targets", json=QUOTA, headers={**office, "X-Actor": "mallory"})
    assert r.status_code == 201, r.text
    t = r.json()
    assert (t["kind"], t["category"], t["unit"]) == ("electricity", "01000", "kWh/month")
    tid = t["id"]
    assert client.get(f"/api/v1/targets/{tid}").json()["value"] == 30000

    r = client.patch(f"/api/v1/targets/{tid}", json={"value": 28500, "note": "-5 %"}, headers=auditor)
    assert r.status_code == 200 and r.json()["value"] == 28500 and r.json()["period"] == "month"
    r = client.put(f"/api/v1/targets/{tid}", json={**QUOTA, "value": 27000})
    assert r.status_code == 200 and r.json()["value"] == 27000 and r.json()["note"] == ""

    listed = client.get("/api/v1/targets", params={"scope": "building", "scope_id": "dorm-1"}).json()[
        "targets"
    ]
    assert [x["id"] for x in listed] == [tid]
    assert client.delete(f"/api/v1/targets/{tid}", headers=auditor).status_code == 204
    assert client.get(f"/api/v1/targets/{tid}").status_code == 404
    assert client.delete(f"/api/v1/targets/{tid}").status_code == 404

    hist = client.get(f"/api/v1/targets/{tid}/history").json()["history"]
    assert [(h["action"], h["actor"]) for h in hist] == [
        ("delete", "auditor"), ("update", "token:test-admin"), ("update", "auditor"), ("create", "energy-office")
    ]  # fmt: skip
    assert hist[2]["before"]["value"] == 30000 and hist[2]["after"]["value"] == 28500
    assert hist[0]["after"] is None and hist[0]["before"]["value"] == 27000
    assert client.get("/api/v1/targets/history").json()["history"][0]["action"] == "delete"


def test_a_deleted_targets_id_is_never_handed_out_again(client):
    """History is kept by target id: a new target must not inherit the newest deleted one's id or history."""
    first = client.post("/api/v1/targets", json=QUOTA).json()["id"]
    assert client.patch(f"/api/v1/targets/{first}", json={"value": 1}).status_code == 200
    assert client.delete(f"/api/v1/targets/{first}").status_code == 204
    r = client.post("/api/v1/targets", json={**QUOTA, "name": "dorm again"})
    assert r.status_code == 201, r.text
    second = r.json()["id"]
    assert second != first
    hist = client.get(f"/api/v1/targets/{second}/history").json()["history"]
    assert [(h["action"], h["target_id"]) for h in hist] == [("create", second)]
    assert hist[0]["after"]["name"] == "dorm again"
    old = client.get(f"/api/v1/targets/{first}/history").json()["history"]
    assert [h["action"] for h in old] == ["delete", "update", "create"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({**QUOTA, "value": -1}, "value: Input should be greater than 0"),
        ({**QUOTA, "period": None}, "period (day, month or year) is required for a quota"),
        ({**QUOTA, "scope_id": "nowhere"}, "scope_id: building 'nowhere' is not in the campus config"),
        ({**QUOTA, "scope": "group", "scope_id": "south"}, "scope_id: no building is in group 'south'"),
        ({**QUOTA, "scope": "campus"}, "scope_id must be empty for a campus target"),
        (
            {**QUOTA, "category": "02000", "kind": "electricity"},
            "category 02000 does not fit kind electricity",
        ),
        ({**QUOTA, "category": "lighting"}, "category='lighting': not a sub-item code"),
        ({**QUOTA, "type": "reduction", "period": None, "value": 120}, "must be under 100"),
        ({**QUOTA, "type": "intensity"}, "period applies to quotas only"),
        ({**QUOTA, "valid_from": "2026-12-01", "valid_to": "2026-01-01"}, "valid_to is before valid_from"),
        ({**QUOTA, "colour": "green"}, "colour: Extra inputs are not permitted"),
        (
            {**QUOTA, "type": "bonus"},
            "type: Input should be 'quota', 'intensity', 'per_capita' or 'reduction'",
        ),
        ([1, 2], "body: Input should be a valid dictionary"),
    ],
)
def test_invalid_targets_are_refused_with_the_field_and_problem(client, body: Any, problem: str):
    r = client.post("/api/v1/targets", json=body)
    assert r.status_code == 422
    assert problem in message(r)
    assert client.get("/api/v1/targets").json()["targets"] == []
    assert client.get("/api/v1/targets/history").json()["history"] == []


def test_updates_are_validated_too(client):
    tid = client.post("/api/v1/targets", json=QUOTA).json()["id"]
    r = client.patch(f"/api/v1/targets/{tid}", json={"period": None})
    assert r.status_code == 422 and "period" in message(r)
    assert client.put("/api/v1/targets/999", json=QUOTA).status_code == 404
    assert client.patch("/api/v1/targets/999", json={"value": 1}).status_code == 404
    assert [h["action"] for h in client.get(f"/api/v1/targets/{tid}/history").json()["history"]] == ["create"]


def spec(**kw: Any) -> TargetSpec:
    return TargetSpec.model_validate({"scope": "building", "scope_id": "b", **kw})


def test_allowances_pro_rata_by_local_days():
    oct1 = date(2026, 10, 1)
    monthly = spec(type="quota", period="month", value=31_000)
    assert allowance(monthly, oct1, 31, 0, 0).amount == pytest.approx(31_000)
    assert allowance(monthly, oct1, 1, 0, 0).amount == pytest.approx(1_000)
    assert allowance(spec(type="quota", period="day", value=500), oct1, 31, 0, 0).amount == 15_500
    yearly = spec(type="quota", period="year", value=365_000)
    assert allowance(yearly, oct1, 31, 0, 0).amount == pytest.approx(31_000)
    # GB/T 51161-style intensity: 85 kWh/(m2·a) over 9000 m2, for February of a leap year.
    feb = allowance(spec(type="intensity", value=85), date(2028, 2, 1), 29, 9000, 0)
    assert feb.amount == pytest.approx(85 * 9000 * 29 / 366) and feb.unit == "kWh/m2/year"
    # 120 litres of water per student per day.
    water = allowance(spec(type="per_capita", category="02000", value=120), oct1, 31, 0, 480)
    assert water.amount == pytest.approx(0.120 * 480 * 31) and water.unit == "L/person/day"
    # -5 % against a 28-day baseline of 2800, over a 31-day month.
    red = allowance(spec(type="reduction", value=5), oct1, 31, 0, 0, baseline=(2800.0, 28))
    assert red.amount == pytest.approx(100 * 31 * 0.95)
    assert allowance(spec(type="reduction", value=5), oct1, 31, 0, 0) is None  # no baseline data
    assert allowance(spec(type="intensity", value=85), oct1, 31, 0, 0) is None  # no floor area


def test_spec_validation_without_the_api(make_config):
    cfg = make_config(data=GROUPED)
    ok = validate_spec({"scope": "group", "scope_id": "north", "type": "per_capita", "category": "02000",
                        "value": 120}, cfg)  # fmt: skip
    assert ok.kind.value == "water" and ok.unit == "L/person/day"
    with pytest.raises(TargetInvalid, match="scope_id is required"):
        validate_spec({"scope": "building", "type": "intensity", "value": 85}, cfg)
