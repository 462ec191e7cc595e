"""The monthly report: CSV, JSON and HTML through the API, and ``campusmon report monthly``."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.accounting import periods
from api.accounting.cli import report_app
from campusmon.config import CampusConfig
from campusmon.services import free_port
from firmware_sim.month import SimMonth, write_readings
from tests.auth_helpers import admin_headers
from tests.helpers import write_config
from tests.test_accounting_api import ACCOUNTING, make_app, message
from tests.test_consumption_truth import MONTH, campus_config, faulty_month

HEADER = (
    "month,scope,scope_id,name,building_type,category,category_name,kind,unit,consumption,floor_area_m2,"
    "occupants,intensity,per_capita_day,target,target_type,target_id,deviation_pct,cost,currency,co2_kg,"
    "readings_received,readings_expected,completeness,low_completeness,resets,quarantined,rollovers,estimated"
)


@pytest.fixture(scope="module")
def month(influxdb, tmp_path_factory) -> Iterator[tuple[TestClient, CampusConfig, SimMonth, Path]]:
    tmp = tmp_path_factory.mktemp("reports")
    cfg = campus_config(influxdb.port, str(tmp), {"accounting": ACCOUNTING})
    sim = faulty_month(cfg)
    app = make_app(cfg)
    app.state.store.ensure_database()
    write_readings(app.state.store, [r for r in sim.readings if r.meter != "e-empty-1"])
    with TestClient(app, headers=admin_headers(cfg)) as client:
        yield client, cfg, sim, tmp
    app.state.store.close()
    app.state.engine.dispose()


@pytest.fixture(autouse=True)
def _no_targets_left(month) -> Iterator[None]:
    """Targets made by a test are gone before the next one, even when it fails."""
    yield
    client = month[0]
    for t in client.get("/api/v1/targets").json()["targets"]:
        client.delete(f"/api/v1/targets/{t['id']}")


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_report_per_building_and_sub_item(month):
    client, _, sim, _ = month
    client.post(
        "/api/v1/targets", json={"scope": "building", "scope_id": "dorm-1", "type": "intensity", "value": 85}
    )
    r = client.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="campus-report-2026-10.csv"' in r.headers["content-disposition"]
    assert r.text.splitlines()[0] == HEADER
    rows = csv_rows(r.text)
    keys = [(x["scope"], x["scope_id"], x["category"]) for x in rows]
    assert keys[:4] == [("building", "dorm-1", "01000"), ("building", "dorm-1", "01B00"),
                        ("building", "dorm-1", "02000"), ("building", "teach-1", "01000")]  # fmt: skip
    assert keys[-2:] == [("campus", "", "01000"), ("campus", "", "02000")]
    dorm = rows[0]
    assert float(dorm["consumption"]) == pytest.approx(sim.truth["e-dorm-1"], rel=1e-3)
    assert float(dorm["intensity"]) == pytest.approx(sim.truth["e-dorm-1"] / 6000, rel=1e-3)
    target = 85 * 6000 * 31 / 365
    assert float(dorm["target"]) == pytest.approx(target, rel=1e-6) and dorm["target_type"] == "intensity"
    assert float(dorm["deviation_pct"]) == pytest.approx((sim.truth["e-dorm-1"] / target - 1) * 100, abs=0.1)
    assert float(dorm["co2_kg"]) == pytest.approx(float(dorm["consumption"]) * 0.5306, rel=1e-4)
    assert float(dorm["cost"]) > 0 and dorm["currency"] == "CNY"
    assert (dorm["completeness"], dorm["low_completeness"]) == ("1.0", "False")
    assert int(dorm["rollovers"]) >= 2 and dorm["quarantined"] == "1"
    empty = next(x for x in rows if x["scope_id"] == "empty-1" and x["category"] == "01000")
    assert (empty["consumption"], empty["completeness"], empty["low_completeness"]) == ("0.0", "0.0", "True")
    assert empty["target"] == "" and empty["cost"] == "0.0"


def test_reduction_target_against_a_baseline_period(month):
    client, cfg, sim, _ = month
    tz = cfg.site.tz
    base = {"scope": "building", "scope_id": "teach-1", "type": "reduction", "value": 5}
    explicit = client.post("/api/v1/targets", json={**base, "baseline_start": "2026-10-01",
                                                    "baseline_end": "2026-10-10"}).json()  # fmt: skip
    rows = csv_rows(client.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "csv"}).text)
    teach = next(x for x in rows if x["scope_id"] == "teach-1" and x["category"] == "01000")
    oct1, oct11 = periods.parse_local("2026-10-01", tz), periods.parse_local("2026-10-11", tz)
    allowed = sim.true_between("e-teach-1", oct1, oct11) / 10 * 31 * 0.95
    assert teach["target_type"] == "reduction" and int(teach["target_id"]) == explicit["id"]
    assert float(teach["target"]) == pytest.approx(allowed, rel=1e-3)
    client.delete(f"/api/v1/targets/{explicit['id']}")
    # The default baseline, October 2025, has no readings: no target rather than a zero one.
    client.post("/api/v1/targets", json=base)
    rows = csv_rows(client.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "csv"}).text)
    teach = next(x for x in rows if x["scope_id"] == "teach-1" and x["category"] == "01000")
    assert (teach["target"], teach["deviation_pct"]) == ("", "")


def test_json_and_html_say_the_same(month):
    client, _, _, _ = month
    js = client.get("/api/v1/reports/monthly", params={"month": MONTH}).json()
    assert js["month"] == MONTH and js["co2_factor"]["year"] == 2023 and js["completeness_threshold"] == 0.9
    assert js["columns"] == HEADER.split(",")
    page = client.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert html.count("<tr") == len(js["rows"]) + 1
    assert html.count('<tr class="low">') == sum(r["low_completeness"] for r in js["rows"])
    assert "New office" in html and "0.5306 kg/kWh" in html


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"month": "2026-13"}, "month='2026-13': use YYYY-MM"),
        ({"month": MONTH, "format": "xml"}, "format: Input should be 'json', 'csv' or 'html'"),
    ],
)
def test_bad_report_parameters(month, params, problem):
    client, _, _, _ = month
    r = client.get("/api/v1/reports/monthly", params=params)
    assert r.status_code == 422 and problem in message(r)


def test_command_line_report_matches_the_api(month):
    client, cfg, _, tmp = month
    path = write_config(cfg, tmp / "campus.yaml")
    out = tmp / "out" / "report.csv"
    res = CliRunner().invoke(
        report_app, ["monthly", "--month", MONTH, "--out", str(out), "--config", str(path)]
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and "1 building rows under the completeness threshold" in res.output
    api = client.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "csv"}).text
    assert csv_rows(out.read_text()) == csv_rows(api)
    html = tmp / "report.html"
    assert (
        CliRunner()
        .invoke(report_app, ["monthly", "--month", MONTH, "--out", str(html), "--config", str(path)])
        .exit_code
        == 0
    )
    assert html.read_text().startswith("<!doctype html>")


def test_command_line_errors_are_clear(month):
    _, cfg, _, tmp = month
    down = cfg.model_copy(
        update={"influxdb": cfg.influxdb.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"})}
    )
    path = write_config(down, tmp / "down.yaml")
    res = CliRunner().invoke(report_app, ["monthly", "--month", MONTH, "--config", str(path), "--no-targets"])
    assert res.exit_code == 1 and "error: InfluxDB at http://127.0.0.1:" in res.output
    bad = yaml.safe_load(path.read_text())
    bad["accounting"]["tariffs"]["electricity"][0]["schedules"][0]["months"] = [7]
    (tmp / "bad.yaml").write_text(yaml.safe_dump(bad))
    res = CliRunner().invoke(report_app, ["monthly", "--config", str(tmp / "bad.yaml")])
    assert (
        res.exit_code == 2
        and "accounting.tariffs.electricity[0]: month(s) 8 have no schedule (gap)" in res.output
    )
    res = CliRunner().invoke(report_app, ["monthly", "--month", "October", "--config", str(path)])
    assert res.exit_code == 2 and "not YYYY-MM" in res.output
