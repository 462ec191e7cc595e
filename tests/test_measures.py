"""``measure=kgce|co2`` on the consumption, summary, ranking and monthly-report endpoints.

A small campus with electricity, water, gas and heat meters is simulated for January 2026 and
written into a real InfluxDB. Every figure in kgce or CO2 must be the native figure times the
factor of the cited table (typed here, not read from the code); and a site's override of one
factor must change every figure that depends on it and nothing else, across every endpoint.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.accounting.routes import router as accounting_router
from api.app import install_error_handlers
from api.auth import install_auth
from campusmon.config import CampusConfig, ConfigError, parse_config
from campusmon.db import init_db
from campusmon.influx import open_store
from campusmon.reading import Reading
from firmware_sim.month import write_readings
from firmware_sim.profiles import sim_meters_for
from tests.auth_helpers import admin_token

# GB/T 2589-2020 appendix A (kgce per native unit) and the CO2 defaults of docs/assessment.md
KGCE = {"electricity": 0.1229, "water": 0.2571, "gas": 1.2143, "heat": 0.03412 * 3.6}
CO2 = {
    "electricity": 0.5306,  # MEE/NBS national grid average, 2023 data (the latest published)
    "water": 0.0,
    "gas": 1.2143 * 29.307 * 56100 / 1e6,  # IPCC 2006 natural gas, 56,100 kg/TJ, at 1.2143 kgce/m3
    "heat": 0.11 * 3.6,  # 0.11 t/GJ purchased heat, per kWh
}
MONTH = "2026-01"
START, END = 1767196800, 1769875200  # 2026-01-01 and 2026-02-01, 00:00 Asia/Shanghai
CAMPUS: dict[str, Any] = {
    "site": {"name": "Measure campus", "timezone": "Asia/Shanghai"},
    "buildings": [
        {"id": "canteen", "type": "canteen", "floor_area_m2": 4000, "occupants": 50},
        {"id": "dorm", "type": "dorm", "floor_area_m2": 6000, "occupants": 400},
        {"id": "lab", "type": "lab", "floor_area_m2": 5000, "occupants": 100},
    ],
    "meters": [
        {"id": "e-canteen", "building": "canteen", "kind": "electricity", "interval_s": 3600},
        {"id": "w-canteen", "building": "canteen", "kind": "water", "interval_s": 3600},
        {"id": "g-canteen", "building": "canteen", "kind": "gas", "category": "03000", "interval_s": 3600},
        {"id": "e-dorm", "building": "dorm", "kind": "electricity", "interval_s": 3600},
        {"id": "w-dorm", "building": "dorm", "kind": "water", "interval_s": 3600},
        {"id": "h-dorm", "building": "dorm", "kind": "heat", "category": "04000", "interval_s": 3600},
        {"id": "e-lab", "building": "lab", "kind": "electricity", "interval_s": 3600},
        {"id": "w-lab", "building": "lab", "kind": "water", "interval_s": 3600},
        {"id": "g-lab", "building": "lab", "kind": "gas", "category": "03000", "interval_s": 3600},
        {"id": "h-lab", "building": "lab", "kind": "heat", "category": "04000", "interval_s": 3600},
    ],
    "units": [
        {"id": "catering", "parts": [{"building": "canteen"}]},
        {
            "id": "science",
            "parts": [{"building": "lab", "share": 0.6}, {"building": "dorm", "meters": ["h-dorm"]}],
        },
    ],
}
# The override under test: the supplier's heating value for gas, a provincial factor for heat.
OVERRIDE = {
    "kgce": {"gas": 1.33},
    "co2": [{"carrier": "heat", "kg_per_unit": 0.3, "source": "provincial inventory 2026"}],
    "source": "supplier's heating value 2026",
}


def make_app(cfg: CampusConfig) -> FastAPI:
    app = FastAPI()
    app.state.cfg = cfg
    app.state.store = open_store(cfg)
    app.state.engine, app.state.sessions = init_db(cfg.database.url)
    install_error_handlers(app)
    install_auth(app)
    app.include_router(accounting_router)
    return app


class Campus:
    def __init__(
        self, plain: TestClient, changed: TestClient, truth: dict[str, float], doc: dict[str, Any]
    ) -> None:
        self.plain, self.changed, self.truth, self.doc = plain, changed, truth, doc


@pytest.fixture(scope="module")
def campus(influxdb, tmp_path_factory) -> Iterator[Campus]:
    tmp: Path = tmp_path_factory.mktemp("measures")
    db = "t_" + uuid.uuid4().hex[:12]
    common = {
        **CAMPUS,
        "influxdb": {"url": f"http://127.0.0.1:{influxdb.port}", "database": db},
        "database": {"url": f"sqlite:///{tmp}/measures.sqlite"},
    }
    cfg = parse_config(common, "test-config", environ={})
    cfg2 = parse_config({**common, "energy_factors": OVERRIDE}, "test-config", environ={})
    meters = sim_meters_for(cfg, 5)
    readings: list[Reading] = []
    at: dict[tuple[str, int], float] = {}
    for ts in range(START - 2 * 3600, END + 3 * 3600, 3600):
        for m in meters:
            readings.extend(m.readings(ts))
            if ts in (START, END):
                at[(m.id, ts)] = round(m.register, 4)
    truth = {m.id: at[(m.id, END)] - at[(m.id, START)] for m in meters}
    apps = [make_app(cfg), make_app(cfg2)]
    apps[0].state.store.ensure_database()
    write_readings(apps[0].state.store, readings)
    headers = {"Authorization": f"Bearer {admin_token(cfg, 'operator')}"}  # one store: one token serves both
    with TestClient(apps[0], headers=headers) as a, TestClient(apps[1], headers=headers) as b:
        yield Campus(a, b, truth, common)
    for app in apps:
        app.state.store.close()
        app.state.engine.dispose()


def get(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    r = client.get(path, params=params)
    assert r.status_code == 200, (path, params, r.text)
    return r.json()


def consumption(client: TestClient, measure: str, scope: str = "campus") -> dict[str, Any]:
    return get(client, "/api/v1/consumption", scope=scope, period="day", start="2026-01-01",
               end="2026-02-01", measure=measure)  # fmt: skip


def test_consumption_in_kgce_and_co2_is_the_native_figure_times_the_cited_factor(campus: Campus):
    native = consumption(campus.plain, "native")
    assert native["measure"] == "native"
    by_kind = {s["kind"]: s for s in native["series"]}
    assert set(by_kind) == {"electricity", "water", "gas", "heat"}
    for kind, s in by_kind.items():
        truth = sum(v for m, v in campus.truth.items() if m in s["meters"])
        assert truth > 0 and s["total"] == pytest.approx(truth, rel=1e-6), kind
    for measure, table, unit in (("kgce", KGCE, "kgce"), ("co2", CO2, "kgCO2")):
        conv = consumption(campus.plain, measure)
        assert conv["measure"] == measure
        for s in conv["series"]:
            n = by_kind[s["kind"]]
            assert s["unit"] == unit and s["native_unit"] == n["unit"]
            assert s["total"] == pytest.approx(n["total"] * table[s["kind"]], rel=1e-5, abs=1e-3), (
                measure,
                s["kind"],
            )
            for p, q in zip(s["points"], n["points"], strict=True):
                assert p["value"] == pytest.approx(q["value"] * table[s["kind"]], rel=1e-5, abs=1e-3)
                assert p["completeness"] == q["completeness"] and p["cost"] == q["cost"]
    one = consumption(campus.plain, "kgce", scope="building:canteen")
    gas = next(s for s in one["series"] if s["kind"] == "gas")
    assert gas["total"] == pytest.approx(campus.truth["g-canteen"] * KGCE["gas"], rel=1e-5)
    bad = campus.plain.get("/api/v1/consumption", params={"measure": "tce"})
    assert bad.status_code == 422 and "measure" in bad.text


def test_summary_rankings_and_report_in_kgce_and_co2(campus: Campus):
    c = campus.plain
    for measure, table, unit in (("kgce", KGCE, "kgce"), ("co2", CO2, "kgCO2")):
        n = get(c, "/api/v1/buildings/lab/summary", at="2026-01-20T12:00")
        k = get(c, "/api/v1/buildings/lab/summary", at="2026-01-20T12:00", measure=measure)
        for a, b in zip(n["kinds"], k["kinds"], strict=True):
            f = table[a["kind"]]
            assert b["unit"] == unit and b["native_unit"] == a["unit"]
            for span, keys in (("today", ("value",)), ("month", ("value", "projected"))):
                for key in keys:
                    assert b[span][key] == pytest.approx(a[span][key] * f, rel=1e-5, abs=1e-3), (
                        measure,
                        span,
                        key,
                    )
            assert b["month"]["completeness"] == a["month"]["completeness"]
        for kind in ("electricity", "water", "gas", "heat"):
            for metric in ("intensity", "per_capita"):
                rn = get(c, "/api/v1/rankings", month=MONTH, metric=metric, kind=kind)["rankings"]
                rk = get(c, "/api/v1/rankings", month=MONTH, metric=metric, kind=kind, measure=measure)
                assert rk["measure"] == measure
                rk = rk["rankings"]
                assert [r["building"] for r in rk] == [r["building"] for r in rn]
                f = table[kind] / (1000.0 if kind == "water" and metric == "per_capita" else 1.0)
                # both figures are rounded to 4 decimals, the converted one from the unrounded native one
                for a, b in zip(rn, rk, strict=True):
                    assert b["value"] == pytest.approx(a["value"] * f, rel=1e-5, abs=5e-5 * (f + 1)), (
                        measure,
                        kind,
                        metric,
                    )
                    assert b["consumption"] == pytest.approx(
                        a["consumption"] * table[kind], rel=1e-5, abs=1e-3
                    )
                    assert b["unit"].startswith(unit + "/") and b["rank"] == a["rank"]
    rep_n = get(c, "/api/v1/reports/monthly", month=MONTH)
    rep_k = get(c, "/api/v1/reports/monthly", month=MONTH, measure="kgce")
    assert rep_n["measure"] == "native" and "totals" not in rep_n and rep_k["measure"] == "kgce"
    for a, b in zip(rep_n["rows"], rep_k["rows"], strict=True):
        f = KGCE[a["kind"]]
        assert (b["scope_id"], b["category"]) == (a["scope_id"], a["category"]) and b["unit"] == "kgce"
        assert b["consumption"] == pytest.approx(a["consumption"] * f, rel=1e-5, abs=1e-3)
        assert (
            b["cost"] == a["cost"] and b["co2_kg"] == a["co2_kg"] and b["completeness"] == a["completeness"]
        )
    # totals: comprehensive energy use (water, a working medium, is not in it by default)
    totals = {(t["scope"], t["scope_id"]): t for t in rep_k["totals"]}
    lab = sum(
        campus.truth[m] * KGCE[k] for m, k in (("e-lab", "electricity"), ("g-lab", "gas"), ("h-lab", "heat"))
    )
    assert totals[("building", "lab")]["total"] == pytest.approx(lab, rel=1e-5)
    assert sorted(totals[("building", "lab")]["carriers"]) == ["electricity", "gas", "heat"]
    carrier = {"e": "electricity", "g": "gas", "h": "heat"}
    every = sum(v * KGCE[carrier[m[0]]] for m, v in campus.truth.items() if m[0] in carrier)
    assert totals[("campus", "")]["total"] == pytest.approx(every, rel=1e-5)
    co2 = get(c, "/api/v1/reports/monthly", month=MONTH, measure="co2")
    co2_totals = {(t["scope"], t["scope_id"]): t for t in co2["totals"]}
    assert "water" in co2_totals[("campus", "")]["carriers"]
    text = c.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "csv", "measure": "co2"}).text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and {r["unit"] for r in rows} == {"kgCO2"}
    page = c.get("/api/v1/reports/monthly", params={"month": MONTH, "format": "html", "measure": "kgce"}).text
    assert "in standard coal (kgce)" in page and "<td>kgce</td>" in page


# The amounts a measure converts; every other field (completeness, cost, co2_kg, area...) stays put.
SCALED = {
    "value",
    "total",
    "amount",
    "consumption",
    "intensity",
    "per_capita_day",
    "target",
    "quota",
    "projected",
}


def _leaves(obj: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every scalar of a JSON document by its path; list items are keyed by what they describe."""
    out: dict[tuple[Any, ...], Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_leaves(v, (*path, k)))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            key: Any = i
            if isinstance(v, dict):
                key = (
                    tuple(
                        v.get(k)
                        for k in ("kind", "carrier", "scope", "scope_id", "category", "building")
                        if k in v
                    )
                    or i
                )
            out.update(_leaves(v, (*path, key)))
    else:
        out[path] = obj
    return out


def _carrier(path: tuple[Any, ...], body: dict[str, Any]) -> str | None:
    for p in path:
        if isinstance(p, tuple):
            for x in p:
                if x in KGCE:
                    return x
    return body.get("kind")


def test_an_override_changes_every_figure_that_depends_on_it_and_nothing_else(campus: Campus):
    """Gas kgce 1.2143 -> 1.33 and heat CO2 0.396 -> 0.3: only gas figures in kgce and heat figures in
    CO2 move, by exactly the ratio of the factors; native figures and every other carrier stay put."""
    ratio = {("kgce", "gas"): 1.33 / KGCE["gas"], ("co2", "heat"): 0.3 / CO2["heat"]}
    queries: list[tuple[str, dict[str, Any]]] = [
        (
            "/api/v1/consumption",
            {"scope": "campus", "period": "day", "start": "2026-01-01", "end": "2026-02-01"},
        ),
        ("/api/v1/buildings/lab/summary", {"at": "2026-01-20T12:00"}),
        ("/api/v1/reports/monthly", {"month": MONTH}),
        *[
            ("/api/v1/rankings", {"month": MONTH, "kind": k, "metric": m})
            for k in KGCE
            for m in ("intensity", "per_capita")
        ],
    ]
    requests = [(p, {**q, "measure": m}) for m in ("native", "kgce", "co2") for p, q in queries]
    moved: dict[tuple[str, str], int] = {}
    for path, params in requests:
        a = get(campus.plain, path, **params)
        b = get(campus.changed, path, **params)
        la, lb = _leaves(a), _leaves(b)
        assert la.keys() == lb.keys(), path
        for key, va in la.items():
            vb = lb[key]
            if key[0] == "totals" or (key[0] == "units" and key[-1] == "total"):
                continue  # sums over carriers: checked below
            carrier = _carrier(key, a)
            r = ratio.get((params["measure"], carrier or ""))
            if r is None or key[-1] not in SCALED or not va:
                assert vb == va, (path, params, key, va, vb)
            else:
                assert vb == pytest.approx(va * r, rel=1e-4, abs=1e-3), (path, params, key)  # 3-4 decimals
                moved[(params["measure"], carrier or "")] = (
                    moved.get((params["measure"], carrier or ""), 0) + 1
                )
        if path.endswith("monthly") and params["measure"] == "kgce":
            rows_a = {(x["scope"], x["scope_id"], x["category"]): x for x in a["rows"]}
            rows_b = {(x["scope"], x["scope_id"], x["category"]): x for x in b["rows"]}
            for ta, tb in zip(a["totals"], b["totals"], strict=True):
                g = (ta["scope"], ta["scope_id"], "03000")
                delta = rows_b[g]["consumption"] - rows_a[g]["consumption"] if g in rows_a else 0.0
                assert tb["total"] == pytest.approx(ta["total"] + delta, rel=1e-6, abs=1e-3), ta["scope_id"]
        if path.endswith("monthly") and params["measure"] in ("kgce", "co2"):
            moved_carrier = "gas" if params["measure"] == "kgce" else "heat"
            for ua, ub in zip(a["units"], b["units"], strict=True):
                ga = next((x["amount"] for x in ua["carriers"] if x["carrier"] == moved_carrier), 0.0)
                gb = next((x["amount"] for x in ub["carriers"] if x["carrier"] == moved_carrier), 0.0)
                assert ub["total"] == pytest.approx(ua["total"] + gb - ga, rel=1e-6, abs=1e-3), ua["unit"]
    assert moved[("kgce", "gas")] > 20 and moved[("co2", "heat")] > 20, moved


def test_electricity_co2_is_set_in_one_place():
    with pytest.raises(ConfigError, match="set electricity CO2 factors in accounting.tariffs.co2_factors"):
        parse_config(
            {
                **CAMPUS,
                "energy_factors": {"co2": [{"carrier": "electricity", "kg_per_unit": 0.5, "source": "x"}]},
            },
            "campus.yaml",
            environ={},
        )


def test_units_are_a_scope_of_consumption_in_every_measure(campus: Campus):
    """``scope=unit:<id>``: named meters in full, a building share by its floor-area fraction."""
    c = campus.plain
    native = {s["kind"]: s for s in consumption(c, "native", scope="unit:science")["series"]}
    assert native["gas"]["total"] == pytest.approx(0.6 * campus.truth["g-lab"], rel=1e-6)
    assert native["heat"]["total"] == pytest.approx(
        0.6 * campus.truth["h-lab"] + campus.truth["h-dorm"], rel=1e-6
    )
    assert native["electricity"]["total"] == pytest.approx(0.6 * campus.truth["e-lab"], rel=1e-6)
    assert all(p["completeness"] == 1.0 for p in native["gas"]["points"])
    co2 = {s["kind"]: s for s in consumption(c, "co2", scope="unit:science")["series"]}
    assert co2["heat"]["total"] == pytest.approx(native["heat"]["total"] * CO2["heat"], rel=1e-5)
    catering = {s["kind"]: s for s in consumption(c, "kgce", scope="unit:catering")["series"]}
    assert set(catering) == {"electricity", "water", "gas"}
    assert catering["gas"]["total"] == pytest.approx(campus.truth["g-canteen"] * KGCE["gas"], rel=1e-5)
    # the monthly report lists every unit's month, in any measure, with its total
    n_units = {u["unit"]: u for u in get(c, "/api/v1/reports/monthly", month=MONTH)["units"]}
    k_units = {u["unit"]: u for u in get(c, "/api/v1/reports/monthly", month=MONTH, measure="kgce")["units"]}
    sci_n = {x["carrier"]: x for x in n_units["science"]["carriers"]}
    assert (
        sci_n["heat"]["amount"] == pytest.approx(native["heat"]["total"], rel=1e-6)
        and sci_n["heat"]["unit"] == "kWh"
    )
    assert n_units["science"]["total"] is None  # no sum across native units
    sci_k = {x["carrier"]: x for x in k_units["science"]["carriers"]}
    assert sci_k["gas"]["amount"] == pytest.approx(0.6 * campus.truth["g-lab"] * KGCE["gas"], rel=1e-5)
    assert k_units["science"]["total"] == pytest.approx(
        sum(sci_k[c]["amount"] for c in ("electricity", "gas", "heat")), rel=1e-6
    )  # water, a working medium, is not in comprehensive energy use
    r = c.get("/api/v1/consumption", params={"scope": "unit:nobody"})
    assert r.status_code == 404 and "unit 'nobody' is not in the campus config" in r.text


def test_monthly_report_command_takes_the_measure(campus: Campus, tmp_path: Path):
    import json

    import yaml
    from typer.testing import CliRunner

    from campusmon.cli import app

    path = tmp_path / "campus.yaml"
    path.write_text(yaml.safe_dump(campus.doc, allow_unicode=True))
    out = tmp_path / "report.json"
    args = ["report", "monthly", "--month", MONTH, "--measure", "kgce", "--no-targets", "--config", str(path)]
    res = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    body = json.loads(out.read_text())
    api = get(campus.plain, "/api/v1/reports/monthly", month=MONTH, measure="kgce")
    assert body["measure"] == "kgce" and body["totals"] == api["totals"]
    assert [r["consumption"] for r in body["rows"]] == [r["consumption"] for r in api["rows"]]
    bad = CliRunner().invoke(app, ["report", "monthly", "--measure", "tce", "--config", str(path)])
    assert bad.exit_code != 0 and "'tce' is not native, kgce or co2" in bad.output
