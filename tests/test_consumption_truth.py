"""Ground truth: a simulated month with every counter fault, through InfluxDB, against true consumption."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api.accounting import service
from api.accounting.campus import Scope
from api.accounting.settings import parse_accounting
from campusmon.config import CampusConfig, parse_config
from campusmon.influx import open_store
from campusmon.quantities import MeterKind
from campusmon.reading import Reading
from firmware_sim.month import Faults, SimMonth, month_bounds, simulate_month, write_readings

MONTH = "2026-10"
DAY = 86400

# A campus where every fault happens somewhere: a small BCD register that wraps three times, a spike
# on it, a meter replaced mid-month, a 6-hour gap on a water meter, and a building that never reports.
CAMPUS: dict[str, Any] = {
    "site": {"name": "Test campus", "timezone": "Asia/Shanghai"},
    "buildings": [
        {"id": "dorm-1", "name": "Dorm 1", "type": "dorm", "floor_area_m2": 6000, "occupants": 480,
         "group": "living"},
        {"id": "teach-1", "name": "Teaching 1", "type": "classroom", "floor_area_m2": 9000,
         "group": "teaching"},
        {"id": "lib-1", "name": "Library", "type": "library", "floor_area_m2": 5000, "occupants": 40,
         "group": "teaching"},
        {"id": "empty-1", "name": "New office", "type": "office", "floor_area_m2": 1200, "occupants": 30},
    ],
    "meters": [
        {"id": "e-dorm-1", "building": "dorm-1", "kind": "electricity", "category": "01000",
         "rollover": 9999.99, "max_rate": 200_000},
        {"id": "e-dorm-1-ac", "building": "dorm-1", "kind": "electricity", "category": "01B00",
         "parent": "e-dorm-1"},
        {"id": "w-dorm-1", "building": "dorm-1", "kind": "water", "category": "02000", "max_rate": 60},
        {"id": "e-teach-1", "building": "teach-1", "kind": "electricity", "category": "01000",
         "max_rate": 600_000},
        {"id": "e-teach-1-light", "building": "teach-1", "kind": "electricity", "category": "01A10",
         "parent": "e-teach-1"},
        {"id": "w-teach-1", "building": "teach-1", "kind": "water", "category": "02000"},
        {"id": "e-lib-1", "building": "lib-1", "kind": "electricity", "category": "01000"},
        {"id": "e-empty-1", "building": "empty-1", "kind": "electricity", "category": "01000"},
    ],
}  # fmt: skip


def campus_config(influx_port: int, tmp: str, data: dict[str, Any] | None = None) -> CampusConfig:
    base = {**CAMPUS, **(data or {})}
    base["influxdb"] = {"url": f"http://127.0.0.1:{influx_port}", "database": "t_" + uuid.uuid4().hex[:12]}
    base["database"] = {"url": f"sqlite:///{tmp}/acct-{uuid.uuid4().hex[:8]}.sqlite"}
    return parse_config(base, "test-config", environ={})


def faulty_month(cfg: CampusConfig, month: str = MONTH, seed: int = 7) -> SimMonth:
    start, _ = month_bounds(month, cfg)
    faults = Faults(
        start_register={"e-dorm-1": 9000.0},
        replaced_at={"e-teach-1": start + 11 * DAY + 14 * 3600 + 7 * 60},  # mid-afternoon, between readings
        gaps={"w-dorm-1": (start + 5 * DAY + 6 * 3600, start + 5 * DAY + 12 * 3600)},
        spikes={"e-dorm-1": [start + 3 * DAY + 10 * 3600]},
        duplicate_share=0.03,
        shuffle=True,
        jitter_s=30,
    )
    _, end = month_bounds(month, cfg)
    midnights_and_noons = list(range(start, end + 1, DAY // 2))  # Asia/Shanghai has no DST
    return simulate_month(cfg, month, seed=seed, faults=faults, marks=midnights_and_noons)


@pytest.fixture(scope="module")
def written(influxdb, tmp_path_factory) -> Iterator[tuple[CampusConfig, Any, SimMonth]]:
    cfg = campus_config(influxdb.port, str(tmp_path_factory.mktemp("acct")))
    sim = faulty_month(cfg)
    store = open_store(cfg)
    store.ensure_database()
    write_readings(store, [r for r in sim.readings if r.meter != "e-empty-1"])
    yield cfg, store, sim
    store.close()


def _rows(report: service.MonthlyReport) -> dict[tuple[str, str, str], service.ReportRow]:
    return {(r.scope, r.scope_id, r.category): r for r in report.rows}


def test_faults_were_really_injected(written):
    _, _, sim = written
    text = "\n".join(sim.injected)
    assert text.count("e-dorm-1: rollover") >= 2
    assert "e-teach-1: replaced" in text and "w-dorm-1: gap of 6 h" in text and "e-dorm-1: spike" in text
    assert "duplicate readings" in text and "out of order" in text


def test_every_building_month_total_matches_the_truth(written):
    cfg, store, sim = written
    rep = service.monthly_report(store, cfg, parse_accounting(cfg), MONTH)
    rows = _rows(rep)
    for kind, code in ((MeterKind.ELECTRICITY, "01000"), (MeterKind.WATER, "02000")):
        for building, true in sim.building_truth(cfg, kind).items():
            if building == "empty-1":
                continue  # simulated but never sent
            row = rows.get(("building", building, code))  # no row for a kind a building does not meter
            got = row.consumption if row else 0.0
            assert got == pytest.approx(true, rel=1e-3, abs=1e-9), (building, kind, got, true)
    # A sub-item row is its own meter, not the building total.
    assert rows[("building", "dorm-1", "01B00")].consumption == pytest.approx(
        sim.truth["e-dorm-1-ac"], rel=1e-3
    )
    assert rows[("building", "teach-1", "01A00")].consumption == pytest.approx(
        sim.truth["e-teach-1-light"], rel=1e-3
    )
    # Groups and the campus add main meters only.
    living = sim.truth["e-dorm-1"]
    teaching = sim.truth["e-teach-1"] + sim.truth["e-lib-1"]
    assert rows[("group", "living", "01000")].consumption == pytest.approx(living, rel=1e-3)
    assert rows[("group", "teaching", "01000")].consumption == pytest.approx(teaching, rel=1e-3)
    assert rows[("campus", "", "01000")].consumption == pytest.approx(living + teaching, rel=1e-3)


def test_faults_are_visible_in_the_report(written):
    cfg, store, _ = written
    rows = _rows(service.monthly_report(store, cfg, parse_accounting(cfg), MONTH))
    dorm, teach = rows[("building", "dorm-1", "01000")], rows[("building", "teach-1", "01000")]
    assert dorm.rollovers >= 2 and dorm.quarantined == 1 and dorm.resets == 0
    assert teach.resets == 1 and teach.estimated > 0 and teach.rollovers == 0


def test_completeness_counts_readings_and_a_silent_building_is_zero_not_an_error(written):
    cfg, store, _ = written
    rows = _rows(service.monthly_report(store, cfg, parse_accounting(cfg), MONTH))
    water = rows[("building", "dorm-1", "02000")]
    assert water.readings_expected == 31 * 96
    assert water.readings_received == 31 * 96 - 24  # the 6-hour gap
    assert not water.low_completeness
    empty = rows[("building", "empty-1", "01000")]
    assert (empty.consumption, empty.completeness, empty.readings_received) == (0.0, 0.0, 0)
    assert empty.low_completeness
    assert empty.intensity == 0.0


def test_series_of_a_building_matches_the_report_and_the_truth(written):
    cfg, store, sim = written
    start, end = month_bounds(MONTH, cfg)
    out = service.consumption_series(
        store, cfg, parse_accounting(cfg), Scope("building", "teach-1"), "day", start, end
    )
    elec = next(s for s in out["series"] if s["kind"] == "electricity")
    assert elec["meters"] == ["e-teach-1"]
    assert len(elec["points"]) == 31
    assert sum(p["value"] for p in elec["points"]) == pytest.approx(sim.truth["e-teach-1"], rel=1e-3)
    assert [e["kind"] for e in out["events"]] == ["reset"]
    for k, p in enumerate(elec["points"]):
        true = sim.true_between("e-teach-1", start + k * DAY, start + (k + 1) * DAY)
        # The day of the replacement holds one estimated interval; every other day is exact.
        assert p["value"] == pytest.approx(true, rel=1e-2 if k == 11 else 1e-4), (k, p["label"])


def test_one_request_reads_every_meter(written):
    cfg, _, _ = written
    stmts = service.statements(cfg, cfg.meters, 0, DAY, parse_accounting(cfg))
    # Per kind: the period, the nearest reading before, the nearest after; no per-meter query.
    assert len(stmts) == 6
    assert all('GROUP BY "meter"' in s and "=~" not in s for s in stmts)


def test_a_result_streamed_in_pieces_is_joined_again(influxdb, make_config):
    """More readings than one piece of a chunked response holds: nothing is lost or overwritten."""
    one_meter = {"buildings": [{"id": "b"}], "meters": [{"id": "m", "building": "b", "kind": "electricity"}]}
    cfg = make_config(influx=influxdb, data=one_meter)
    store = open_store(cfg)
    store.ensure_database()
    t0 = 1_790_000_000
    write_readings(store, [Reading("m", "energy_kwh", float(i), t0 + 60 * i) for i in range(25_000)])
    q = f'SELECT "energy_kwh" FROM "electricity" WHERE time >= {t0}s GROUP BY "meter"'
    streamed, whole = store.query(q, chunked=True), store.query(q)
    assert len(streamed) == 1 and streamed == whole
    assert len(streamed[0]["values"]) == 25_000
    curves = service.fetch_curves(store, cfg, cfg.meters, t0, t0 + 60 * 25_000, parse_accounting(cfg))
    assert curves["m"].total == 24_999.0 and curves["m"].count_in(t0, t0 + 60 * 25_000) == 25_000
    store.close()
