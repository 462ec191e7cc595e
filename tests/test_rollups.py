"""Hourly rollups against the raw computation and the simulator's truth, through the real servers.

The rollups apply the consumption policy once per reading and keep it up incrementally (late and
out-of-order readings, restarts). Every figure read from them must equal the figure derived from the
raw registers, and both must equal the simulated truth within the accounting's 0.1 %.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from api.accounting import periods, service
from api.accounting.campus import Scope
from api.accounting.rolled import RolledCurve, month_by_hour_of_day
from api.accounting.settings import parse_accounting
from campusmon import rollups
from campusmon.config import CampusConfig, parse_config
from campusmon.db import RollupDirty, RollupWatermark, init_db
from campusmon.deadletter import DeadLetters
from campusmon.influx import open_store, tag_lookup
from campusmon.ingest import Ingestor, Message
from campusmon.reading import Reading
from campusmon.wire import METER_TOPIC
from firmware_sim.month import month_bounds
from tests.test_consumption_truth import MONTH, campus_config, faulty_month

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def day_totals(rows: list[rollups.HourRow], bounds: list[int]) -> list[float]:
    """Rolled-up hours summed into the periods ``[bounds[k], bounds[k+1])``."""
    out = [0.0] * (len(bounds) - 1)
    k = 0
    for r in rows:
        t = int(r.hour.timestamp())
        while k < len(out) and t >= bounds[k + 1]:
            k += 1
        if k < len(out) and t >= bounds[k]:
            out[k] += r.value
    return out


def day_bounds(cfg: CampusConfig, start: int, end: int) -> list[int]:
    bks = periods.buckets(start, end, "day", cfg.site.tz)
    return [b.start for b in bks] + [bks[-1].end]


def deliver(store: Any, sessions: Any, batch: list[Reading]) -> None:
    """Store a batch and mark its meters for the rollups, as the ingest path does."""
    out = store.write(batch)
    assert not out.rejected, out.rejected[:1]
    marks: dict[str, int] = {}
    for r in batch:
        marks[r.meter] = min(marks.get(r.meter, r.ts), r.ts)
    rollups.mark_dirty(sessions, marks)


# --- the ground-truth month, delivered day by day with late and duplicated readings ---------------


@pytest.fixture(scope="module")
def month(influxdb, tmp_path_factory) -> Iterator[tuple[CampusConfig, Any, Any, Any]]:
    cfg = campus_config(influxdb.port, str(tmp_path_factory.mktemp("rollups")))
    sim = faulty_month(cfg)
    store = open_store(cfg)
    store.ensure_database()
    _engine, sessions = init_db(cfg.database.url)
    sent = [r for r in sim.readings if r.meter != "e-empty-1"]
    # Delivery: a day's readings (in the simulator's shuffled order) after that day, and one in 30
    # readings a day later still; a pass of the maintainer after every delivery.
    rng = random.Random(13)
    by_day: dict[int, list[Reading]] = {}
    for r in sent:
        late = 1 if rng.random() < 1 / 30 else 0
        by_day.setdefault(r.ts // DAY + 1 + late, []).append(r)
    m = rollups.RollupMaintainer(cfg, store, sessions)
    for d in sorted(by_day):
        deliver(store, sessions, by_day[d])
        stats = m.pass_once(now=d * DAY + 600)
        assert stats.series > 0
    yield cfg, store, sessions, sim
    store.close()


def test_the_month_was_rolled_up_incrementally_with_late_readings(month) -> None:
    cfg, _store, sessions, sim = month
    with sessions() as s:
        wms = list(s.scalars(select(RollupWatermark)))
        assert not list(s.scalars(select(RollupDirty)))
    assert {w.meter for w in wms} == {m.id for m in cfg.meters}
    registers = [w for w in wms if w.quantity in ("energy_kwh", "volume_m3") and w.meter != "e-empty-1"]
    assert len(registers) == len(cfg.meters) - 1
    assert all(w.until_ts >= sim.end for w in registers), [(w.meter, w.until_ts - sim.end) for w in registers]


def test_every_daily_and_monthly_total_equals_the_raw_computation_and_the_truth(month) -> None:
    cfg, store, sessions, sim = month
    start, end = month_bounds(MONTH, cfg)
    bounds = day_bounds(cfg, start, end)
    ids = [m.id for m in cfg.meters]
    hours = rollups.read_hourly(store, ids, start, end, sessions)
    raw = service.fetch_curves(store, cfg, cfg.meters, start, end, parse_accounting(cfg), use_rollups=False)
    replaced_day = (cfg.meter("e-teach-1"), 11)
    for m in cfg.meters:
        got = day_totals(hours[m.id], bounds)
        want = raw[m.id].deltas(bounds)
        assert len(got) == 31
        for k, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == pytest.approx(w, rel=1e-9, abs=1e-9), (m.id, k)
            if m.id == "e-empty-1" or (m, k) == replaced_day:
                continue  # never sent; the replacement's day holds one estimated interval
            true = sim.true_between(m.id, bounds[k], bounds[k + 1])
            assert g == pytest.approx(true, rel=1e-3), (m.id, k, g, true)
        assert sum(got) == pytest.approx(raw[m.id].between(start, end), rel=1e-9, abs=1e-9)
        if m.id != "e-empty-1":
            assert sum(got) == pytest.approx(sim.truth[m.id], rel=1e-3), m.id
    # The flags say what the policy did, hour by hour.
    flat = {mid: rows for mid, rows in hours.items()}
    assert sum(r.rollovers for r in flat["e-dorm-1"]) >= 2
    assert sum(r.quarantined for r in flat["e-dorm-1"]) == 1
    assert sum(r.resets for r in flat["e-teach-1"]) == 1
    gap = [r for r in flat["w-dorm-1"] if r.estimated_share > 0]
    # The 6-hour gap: the interval across it (6 h plus the readings on its edges) is estimated.
    assert sum(r.estimated_share == 1.0 for r in gap) == 6 and all(r.readings == 0 for r in gap[1:-1])
    assert 6 < sum(r.estimated_share for r in gap) < 6.5
    for mid in ids:
        got_readings = sum(r.readings for r in flat[mid])
        assert got_readings == raw[mid].count_in(start, end), mid


def test_what_window_rules_read_per_hour_equals_the_series_built_from_raw(month) -> None:
    """``known``, readings and the first and last reading's time, hour by hour, as the rules' raw
    series has them (``api.alerts.series``): the window rules seed their hour book from these."""
    from api.alerts.series import Timeline, build_series
    from api.alerts.source import fetch_registers
    from api.alerts.window import calendar

    cfg, store, sessions, sim = month
    start, end = month_bounds(MONTH, cfg)
    hours = rollups.read_hourly(store, [m.id for m in cfg.meters], start, end, sessions)
    cal = calendar(cfg)
    tl = Timeline.build(start, end, cfg.site.tz, cal)
    # From a week either side: the rollups know the readings around the month, so the raw series must too.
    pts = fetch_registers(store, cfg.meters, start - 7 * DAY, end + 7 * DAY)
    checked = unknown = 0
    for m in cfg.meters:
        b = cfg.building(m.building)
        assert b is not None
        series = build_series(m, b, tl, pts.get(m.id, ()), [False] * len(tl))
        rows = {int(r.hour.timestamp()): r for r in hours[m.id] if r.quantity == rollups_register(m)}
        received = list(series.curve.received)
        for i, t in enumerate(tl.starts):
            r = rows.get(t)
            if r is None:
                assert not series.known[i] and not series.samples[i], (m.id, i)
                continue
            assert r.known == bool(series.known[i]), (m.id, i)
            assert r.readings == series.samples[i], (m.id, i)
            if r.readings:
                inside = [x for x in received if t <= x < tl.end_of(i)]
                assert (t + r.first_s, t + r.last_s) == (inside[0], inside[-1]), (m.id, i)
            checked += 1
            unknown += not r.known
    assert checked > 24 * 28 * (len(cfg.meters) - 1)
    assert unknown >= 6  # the 6-hour gap of w-dorm-1 at least


def rollups_register(m: Any) -> str:
    from api.alerts.series import REGISTER

    return REGISTER[m.kind]


def test_the_monthly_report_from_rollups_equals_the_one_from_raw_registers(month) -> None:
    cfg, store, _sessions, _sim = month
    # With the example campus's time-of-use electricity and water tariffs, so costs are compared too.
    example = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())["accounting"]
    cfg = cfg.model_copy(update={"accounting": example})
    acct = parse_accounting(cfg)
    start, end = month_bounds(MONTH, cfg)
    curves = service.fetch_curves(store, cfg, cfg.meters, start, end, acct, use_rollups=True)
    assert all(isinstance(c, RolledCurve) and c.tail is None for c in curves.values())  # no raw register read
    # A closed month is summed by InfluxDB per meter and hour of day.
    grid = service.Grid.build([periods.month_range(MONTH, cfg.site.tz)], cfg, acct)
    assert month_by_hour_of_day(store, cfg, acct, grid) is not None
    from_rollups = service.monthly_report(store, cfg, acct, MONTH)
    from_raw = service.monthly_report(store, cfg, acct, MONTH, use_rollups=False)
    assert len(from_rollups.rows) == len(from_raw.rows)
    for a, b in zip(from_rollups.rows, from_raw.rows, strict=True):
        assert (a.scope, a.scope_id, a.category) == (b.scope, b.scope_id, b.category)
        assert a.consumption == pytest.approx(b.consumption, rel=1e-9, abs=1e-9), a
        assert (a.cost is None) == (b.cost is None)
        assert a.cost is not None or a.consumption == 0, a
        if a.cost is not None:
            assert a.cost == pytest.approx(b.cost, rel=1e-9, abs=1e-9)
        assert a.estimated == pytest.approx(b.estimated, rel=1e-9, abs=1e-9)
        assert (a.readings_received, a.readings_expected, a.resets, a.quarantined, a.rollovers) == (
            b.readings_received,
            b.readings_expected,
            b.resets,
            b.quarantined,
            b.rollovers,
        ), a.scope_id
    assert [e["kind"] for e in from_rollups.events] == [e["kind"] for e in from_raw.events]


# --- hypothesis: random histories, late and out-of-order delivery -----------------------------

T0 = 1_793_491_200  # 2026-11-01 00:00 +08:00


@st.composite
def histories(draw: Any) -> tuple[list[Reading], list[list[Reading]]]:
    """A meter's readings (15 min, jitter, gaps, a wrap, resets, spikes) and the batches they arrive in."""
    n = draw(st.integers(150, 400))
    reg = draw(st.floats(0, 9990))
    t = T0 + draw(st.integers(0, 3600))
    out: list[Reading] = []
    for _ in range(n):
        step = draw(st.sampled_from([900] * 12 + [1800, 2700, 6 * 3600]))
        t += step
        ts = t + draw(st.integers(0, 30))
        reg += draw(st.floats(0, 12)) * step / 900
        event = draw(st.sampled_from(["none"] * 40 + ["reset", "spike"]))
        if event == "reset":
            reg = draw(st.floats(0, 5))
        shown = round(reg % 10000.0, 2)  # the register wraps after 9999.99
        if event == "spike":
            shown = shown * 1000 + 12345.0
        out.append(Reading("m", "energy_kwh", shown, ts))
    # Delivery: in order in blocks of a few hours, some readings held back one to three blocks,
    # some delivered twice.
    size = draw(st.integers(4, 30))
    blocks = [out[i : i + size] for i in range(0, len(out), size)]
    batches: list[list[Reading]] = [[] for _ in range(len(blocks) + 3)]
    for i, block in enumerate(blocks):
        for r in block:
            delay = draw(st.sampled_from([0] * 10 + [1, 2, 3]))
            batches[i + delay].append(r)
            if draw(st.integers(0, 30)) == 0:
                batches[i + delay + 1 if i + delay + 1 < len(batches) else i + delay].append(r)
    return out, [b for b in batches if b]


@pytest.fixture(scope="module")
def hyp_env(influxdb, tmp_path_factory) -> tuple[Any, str, Any]:
    tmp = tmp_path_factory.mktemp("hyp")
    url = f"sqlite:///{tmp}/campus.sqlite"
    _e, sessions = init_db(url)
    return influxdb, url, sessions


def _one_meter(influx_port: int, db_url: str, mid: str, influx_db: str) -> dict[str, Any]:
    return {
        "site": {"name": "t", "timezone": "Asia/Shanghai"},
        "buildings": [{"id": "b"}],
        "meters": [
            {"id": mid, "building": "b", "kind": "electricity", "rollover": 9999.99, "max_rate": 200_000}
        ],
        "influxdb": {"url": f"http://127.0.0.1:{influx_port}", "database": influx_db},
        "database": {"url": db_url},
    }


def _one_meter_config(influx_port: int, db_url: str, mid: str, influx_db: str) -> CampusConfig:
    return parse_config(_one_meter(influx_port, db_url, mid, influx_db), "test-config", environ={})


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(history=histories())
def test_random_histories_delivered_late_and_out_of_order_equal_the_raw_computation(
    hyp_env: tuple[Any, str, Any], history: tuple[list[Reading], list[list[Reading]]]
) -> None:
    influxdb, url, sessions = hyp_env
    readings, batches = history
    mid = "m-" + uuid.uuid4().hex[:10]
    cfg = _one_meter_config(influxdb.port, url, mid, "hyp")
    store = open_store(cfg)
    store.ensure_database()
    m = rollups.RollupMaintainer(cfg, store, sessions)
    seen = 0
    for b in batches:
        batch = [Reading(mid, r.quantity, r.value, r.ts) for r in b]
        deliver(store, sessions, batch)
        seen = max(seen, *(r.ts for r in batch))
        m.pass_once(now=seen + 60)
    wm = rollups.watermarks(sessions, [mid])[(mid, "energy_kwh")]
    start = periods.floor(readings[0].ts, "day", cfg.site.tz)
    end = periods.floor(wm.until_ts, "day", cfg.site.tz)
    if end <= start:
        store.close()
        return
    bounds = day_bounds(cfg, start, end)
    hours = rollups.read_hourly(store, [mid], start, end, sessions)[mid]
    # The reference: the policy once over every reading stored, in time order.
    raw = service.fetch_curves(
        store, cfg, cfg.meters, start, seen + 1, parse_accounting(cfg), use_rollups=False
    )[mid]
    got = day_totals(hours, bounds)
    want = raw.deltas(bounds)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-9), (k, bounds[k])
    first_hour = periods.floor(min(r.ts for r in readings), "hour", cfg.site.tz)
    hb = list(range(first_hour, end + 1, 3600))  # Asia/Shanghai: every hour is 3600 s
    want_h = raw.deltas(hb)
    got_h = {int(r.hour.timestamp()): r for r in hours}
    assert set(got_h) == set(hb[:-1])
    for k in range(len(hb) - 1):
        r = got_h[hb[k]]
        assert r.value == pytest.approx(want_h[k], rel=1e-9, abs=1e-9), hb[k]
        assert r.readings == raw.count_in(hb[k], hb[k + 1]), hb[k]
    store.close()


# --- a reading a day late -------------------------------------------------------------------


def _payload(mid: str, ts: int, v: float) -> Message:
    body = json.dumps({"meter": mid, "ts": ts, "energy_kwh": v}).encode()
    return Message(METER_TOPIC.format(meter_id=mid), body, "test")


def test_a_reading_a_day_late_changes_exactly_its_hours_in_the_rollup_and_the_report(
    influxdb, tmp_path: Path
) -> None:
    mid = "e-late"
    cfg = _one_meter_config(
        influxdb.port, f"sqlite:///{tmp_path}/c.sqlite", mid, "late_" + uuid.uuid4().hex[:8]
    )
    tz = cfg.site.tz
    store = open_store(cfg)
    store.ensure_database()
    _e, sessions = init_db(cfg.database.url)
    ing = Ingestor(cfg, store, DeadLetters(sessions), "test")  # the real ingest path marks the rollups
    day0 = periods.floor(int(time.time()) - 4 * DAY, "day", tz)
    h10 = day0 + 10 * 3600
    late_ts = h10 + 3600  # 11:00 local, between 10:30 and 11:15
    rate = 3.0  # kWh per 15 min
    msgs = []
    for k in range(3 * 96):
        ts = day0 + k * 900
        if ts in (late_ts - 900, late_ts):
            continue  # 10:45 never comes; 11:00 comes a day late
        msgs.append(_payload(mid, ts, 100.0 + rate * k))
    for i in range(0, len(msgs), 96):
        ing.process(msgs[i : i + 96])
    m = rollups.RollupMaintainer(cfg, store, sessions)
    m.pass_once(now=day0 + 3 * DAY)
    bucket = (day0, day0 + DAY)
    acct = parse_accounting(cfg)
    scope = Scope("meter", mid)

    def hourly() -> dict[int, rollups.HourRow]:
        rows = rollups.read_hourly(store, [mid], day0, day0 + 2 * DAY, sessions)[mid]
        return {int(r.hour.timestamp()): r for r in rows}

    def report() -> list[dict[str, Any]]:
        out = service.consumption_series(store, cfg, acct, scope, "hour", *bucket, now=day0 + 3 * DAY)
        return out["series"][0]["points"]

    before, rep_before = hourly(), report()
    assert len(before) == 48
    # 10:30 -> 11:15 is one interval of 3 x rate, spread linearly: 2/3 in hour 10, 1/3 in hour 11.
    assert before[h10].value == pytest.approx(4 * rate, rel=1e-9)
    assert before[h10 + 3600].value == pytest.approx(4 * rate, rel=1e-9)
    # The reading arrives a day later, with more consumption before 11:00 than the line said.
    k_late = (late_ts - day0) // 900
    true_late = 100.0 + rate * k_late + 1.5
    ing.process([_payload(mid, late_ts, true_late)])
    m.pass_once(now=day0 + 3 * DAY + 900)
    after, rep_after = hourly(), report()
    changed = {
        h
        for h in before
        if abs(before[h].value - after[h].value) > 1e-9 or before[h].readings != after[h].readings
    }
    assert changed == {h10, h10 + 3600}
    v1030 = 100.0 + rate * (k_late - 2)
    v1115 = 100.0 + rate * (k_late + 1)
    before_10 = before[h10].value
    assert after[h10].value == pytest.approx(
        before_10 - (v1115 - v1030) * 2 / 3 + (true_late - v1030), rel=1e-9
    )
    assert after[h10 + 3600].value == pytest.approx(rate * 3 + (v1115 - true_late), rel=1e-9)
    assert after[h10 + 3600].readings == before[h10 + 3600].readings + 1
    # The report moves by exactly the same hours, and its day total does not move.
    diff = [
        k for k, (a, b) in enumerate(zip(rep_before, rep_after, strict=True))
        if a["value"] != b["value"] or a["readings"] != b["readings"]
    ]  # fmt: skip
    assert diff == [10, 11]
    assert rep_after[10]["value"] == pytest.approx(after[h10].value, abs=1e-4)
    assert rep_after[11]["value"] == pytest.approx(after[h10 + 3600].value, abs=1e-4)
    assert sum(p["value"] for p in rep_after) == pytest.approx(sum(p["value"] for p in rep_before), abs=1e-3)
    # A damaged hour is put right by `campusmon rollups rebuild`, and nothing else moves.
    from typer.testing import CliRunner

    from campusmon.cli import app

    tags = "".join(f",{k}={v}" for k, v in tag_lookup(cfg)(mid).items() if v)
    damaged = f"energy_hourly,meter={mid}{tags},kind=electricity,quantity=energy_kwh value=-1.0 {h10}"
    store.write_derived([damaged], "forever")
    assert hourly()[h10].value == -1.0
    path = tmp_path / "campus.yaml"
    path.write_text(yaml.safe_dump(_one_meter(influxdb.port, cfg.database.url, mid, cfg.influxdb.database)))
    day = periods.local_date(day0, tz).isoformat()
    res = CliRunner().invoke(
        app, ["rollups", "rebuild", "--config", str(path), "--start", day, "--meters", mid]
    )
    assert res.exit_code == 0, res.output
    assert "rebuilt 2 series of 1 meters" in res.output
    rebuilt = hourly()
    assert set(rebuilt) == set(after)
    for h, r in after.items():
        assert (
            rebuilt[h].value == pytest.approx(r.value, rel=1e-9, abs=1e-9)
            and rebuilt[h].readings == r.readings
        )
    bad = CliRunner().invoke(
        app, ["rollups", "rebuild", "--config", str(path), "--start", day, "--meters", "nope"]
    )
    assert bad.exit_code == 2 and "unknown meter(s): nope" in bad.output
    store.close()


def test_a_months_sums_are_kept_by_each_pass_and_a_late_reading_puts_them_right(
    influxdb, tmp_path: Path
) -> None:
    """Each rollup pass adds the hours it appends to their month's sums per hour of day
    (``rollup_months``), which the monthly report reads instead of asking InfluxDB; a late reading's
    pass drops them, and the next report sums the month from the rollups again and keeps it."""
    from campusmon.db import RollupMonth

    mid = "e-month"
    cfg = _one_meter_config(
        influxdb.port, f"sqlite:///{tmp_path}/c.sqlite", mid, "month_" + uuid.uuid4().hex[:8]
    )
    example = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())["accounting"]
    cfg = cfg.model_copy(update={"accounting": example})  # time-of-use prices: costs depend on the hour
    tz = cfg.site.tz
    store = open_store(cfg)
    store.ensure_database()
    _e, sessions = init_db(cfg.database.url)
    ing = Ingestor(cfg, store, DeadLetters(sessions), "test")
    month = periods.local_date(int(time.time()) - 62 * DAY, tz).strftime("%Y-%m")
    bucket = periods.month_range(month, tz)
    late_ts = bucket.start + 10 * DAY + 11 * 3600
    sent = [
        (ts, 100.0 + 3.0 * k + (k % 96) * 0.01 * k)
        for k, ts in enumerate(range(bucket.start - 3600, bucket.end + 3600, 900))
        if ts != late_ts
    ]
    m = rollups.RollupMaintainer(cfg, store, sessions)
    for i in range(0, len(sent), 700):  # a pass after every stretch: the sums grow pass by pass
        part = sent[i : i + 700]
        ing.process([_payload(mid, ts, v) for ts, v in part])
        m.pass_once(now=part[-1][0] + 600)
    acct = parse_accounting(cfg)
    at = bucket.end + 3 * 3600

    def kept() -> list[RollupMonth]:
        with sessions() as s:
            return list(s.scalars(select(RollupMonth).where(RollupMonth.month_start == bucket.start)))

    def same_as_raw() -> Any:
        got = service.monthly_report(store, cfg, acct, month, now=at)
        raw = service.monthly_report(store, cfg, acct, month, use_rollups=False, now=at)
        for a, b in zip(got.rows, raw.rows, strict=True):
            assert a.consumption == pytest.approx(b.consumption, rel=1e-9, abs=1e-9), a
            assert a.cost == pytest.approx(b.cost, rel=1e-9, abs=1e-9), a
            assert a.readings_received == b.readings_received, a
        return got

    # Kept by the passes, complete, and what InfluxDB sums from the rollups.
    (row,) = kept()
    assert (row.meter, row.quantity, row.month_end, row.covered_until) == (
        mid,
        "energy_kwh",
        bucket.end,
        bucket.end,
    )
    by_passes = json.loads(row.by_hod)
    with sessions.begin() as s:
        s.execute(delete(RollupMonth))
    same_as_raw()  # sums the month in InfluxDB and keeps it
    (row,) = kept()
    assert json.loads(row.by_hod) == pytest.approx(by_passes, rel=1e-9)
    assert sum(by_passes) == pytest.approx(row.value, rel=1e-12)
    # Read back: the kept sums answer, InfluxDB is not asked again (a damaged sum shows in the report).
    with sessions.begin() as s:
        r = s.get(RollupMonth, (mid, "energy_kwh", bucket.start))
        assert r is not None
        r.by_hod = json.dumps([x * 2 for x in json.loads(r.by_hod)])
    doubled = service.monthly_report(store, cfg, acct, month, now=at)
    raw = service.monthly_report(store, cfg, acct, month, use_rollups=False, now=at)
    assert doubled.rows[0].consumption == pytest.approx(2 * raw.rows[0].consumption, rel=1e-9)
    # A late reading: its pass drops the month's sums, the next report sums again, as the raw one.
    k_late = (late_ts - bucket.start + 3600) // 900
    ing.process([_payload(mid, late_ts, 100.0 + 3.0 * k_late + (k_late % 96) * 0.01 * k_late + 1.5)])
    m.pass_once(now=at)
    assert kept() == []
    same_as_raw()
    (again,) = kept()
    assert again.readings == row.readings + 1
    assert json.loads(again.by_hod) != pytest.approx(by_passes, rel=1e-9)
    store.close()


# --- SIGKILL of the worker that keeps the rollups ---------------------------------------------------


def _worker(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "campusmon.cli", "worker", "--config", str(cfg_path), "--log-level", "INFO"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"worker exited ({proc.returncode}) while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_worker_killed_mid_stream_resumes_to_what_a_full_rebuild_gives(influxdb, tmp_path: Path) -> None:
    meters = [
        {"id": f"e-{i:02d}", "building": "b", "kind": "electricity", "max_rate": 100_000} for i in range(12)
    ]
    meters += [{"id": f"w-{i:02d}", "building": "b", "kind": "water"} for i in range(4)]
    base = {
        "site": {"name": "t", "timezone": "Asia/Shanghai"},
        "buildings": [{"id": "b"}],
        "meters": meters,
        "influxdb": {"url": f"http://127.0.0.1:{influxdb.port}", "database": "kill_" + uuid.uuid4().hex[:8]},
        "database": {"url": f"sqlite:///{tmp_path}/campus.sqlite"},
        "worker": {"rollup_interval_s": 1, "rollup_shards": 2},
        "alerts": {"enabled": False},
    }
    path = tmp_path / "campus.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    cfg = parse_config(base, str(path), environ={})
    store = open_store(cfg)
    store.ensure_database()
    _e, sessions = init_db(cfg.database.url)
    tz = cfg.site.tz
    t0 = periods.floor(int(time.time()) - 3 * DAY, "day", tz)
    rng = random.Random(5)
    regs = {m["id"]: rng.uniform(0, 1000) for m in meters}
    stream: list[list[Reading]] = []
    for h in range(48):
        batch = []
        for k in range(12):
            ts = t0 + h * 3600 + k * 300 + rng.randint(0, 20)
            for mid in regs:
                regs[mid] += rng.uniform(0, 2)
                q = "energy_kwh" if mid.startswith("e") else "volume_m3"
                batch.append(Reading(mid, q, round(regs[mid], 3), ts))
        rng.shuffle(batch)
        stream.append(batch)
    # Some readings of the first day arrive with the second day's.
    held = [r for r in stream[5] if rng.random() < 0.3]
    stream[5] = [r for r in stream[5] if r not in held]
    stream[30] += held

    def advanced() -> int:
        with sessions() as s:
            return sum(1 for w in s.scalars(select(RollupWatermark)) if w.until_ts > t0)

    log = tmp_path / "worker.log"
    proc = _worker(path, log)
    try:
        for b in stream[:4]:
            deliver(store, sessions, b)
        _wait(lambda: advanced() > 0, "a first rollup pass", proc)
        for b in stream[4:10]:
            deliver(store, sessions, b)
        i = 10
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        for b in stream[i:]:
            deliver(store, sessions, b)
        last = max(r.ts for b in stream for r in b)
        final = periods.floor(last, "hour", tz)
        proc = _worker(path, log)

        def caught_up() -> bool:
            with sessions() as s:
                wms = list(s.scalars(select(RollupWatermark)))
                dirty = list(s.scalars(select(RollupDirty)))
            regs = [w for w in wms if w.quantity in ("energy_kwh", "volume_m3")]
            return not dirty and len(regs) == len(meters) and all(w.until_ts >= final for w in regs)

        _wait(caught_up, "the restarted worker to catch up", proc, timeout=180)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    ids = [m["id"] for m in meters]
    kept = rollups.read_hourly(store, ids, t0, t0 + 3 * DAY, sessions)
    # A full rebuild from nothing: another relational store and another retention policy.
    fresh = cfg.model_copy(
        update={
            "database": cfg.database.model_copy(update={"url": f"sqlite:///{tmp_path}/fresh.sqlite"}),
            "influxdb": cfg.influxdb.model_copy(update={"rollup_retention_policy": "rebuilt"}),
        }
    )
    fstore = open_store(fresh)
    _e2, fsessions = init_db(fresh.database.url)
    rollups.RollupMaintainer(fresh, fstore, fsessions).pass_once(now=last + 60)
    rebuilt = rollups.read_hourly(fstore, ids, t0, t0 + 3 * DAY, fsessions)
    for mid in ids:
        assert len(kept[mid]) == len(rebuilt[mid]) == 47, (mid, len(kept[mid]), len(rebuilt[mid]))
        for a, b in zip(kept[mid], rebuilt[mid], strict=True):
            assert a.hour == b.hour and a.readings == b.readings and a.estimated_share == b.estimated_share
            assert a.value == pytest.approx(b.value, rel=1e-9, abs=1e-9), (mid, a.hour)
    assert "started" in log.read_text()
    store.close()
    fstore.close()


def test_building_summaries_and_daily_series_from_rollups_equal_the_raw_ones(month) -> None:
    cfg, store, _sessions, _sim = month
    example = yaml.safe_load((ROOT / "deploy" / "campus.yaml").read_text())["accounting"]
    cfg = cfg.model_copy(update={"accounting": example})
    raw_cfg = cfg.model_copy(update={"rollups": cfg.rollups.model_copy(update={"enabled": False})})
    acct = parse_accounting(cfg)
    start, end = month_bounds(MONTH, cfg)
    at = start + 19 * DAY + 12 * 3600  # a whole hour in the middle of the month

    def close(a: Any, b: Any, where: str) -> None:
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                close(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                close(x, y, f"{where}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-6, abs=2e-4), where
        else:
            assert a == b, where

    for b in ("dorm-1", "teach-1"):
        got = service.building_summary(store, cfg, acct, b, now=at)
        want = service.building_summary(store, raw_cfg, acct, b, now=at)
        assert got["kinds"] and got["kinds"][0]["month"]["value"] > 0
        close(got, want, b)
    for scope in (Scope("campus"), Scope("building", "teach-1")):
        got = service.consumption_series(store, cfg, acct, scope, "day", start, end, now=end + DAY)
        want = service.consumption_series(
            store, cfg, acct, scope, "day", start, end, now=end + DAY, use_rollups=False
        )
        close(got, want, scope.label)


def test_hours_after_the_watermark_come_from_raw_registers_exactly(month) -> None:
    """A figure reaching past the newest final hour: stored hours, then the raw tail from the resume point."""
    cfg, store, _sessions, _sim = month
    acct = parse_accounting(cfg)
    _start, end = month_bounds(MONTH, cfg)
    lo, hi = end - 2 * DAY, end + 2 * DAY
    curves = service.fetch_curves(store, cfg, cfg.meters, lo, hi, acct, use_rollups=True, upto=hi)
    sent = [m for m in cfg.meters if m.id != "e-empty-1"]
    assert all(isinstance(curves[m.id], RolledCurve) and curves[m.id].tail is not None for m in sent)
    for scope in (Scope("campus"), Scope("building", "dorm-1"), Scope("meter", "w-dorm-1")):
        for period in ("hour", "day"):
            got = service.consumption_series(store, cfg, acct, scope, period, lo, hi, now=hi)
            want = service.consumption_series(
                store, cfg, acct, scope, period, lo, hi, now=hi, use_rollups=False
            )
            for a, b in zip(got["series"], want["series"], strict=True):
                assert a["total"] == pytest.approx(b["total"], rel=1e-9, abs=1e-4), (scope.label, period)
                assert [p["readings"] for p in a["points"]] == [p["readings"] for p in b["points"]]
                for p, q in zip(a["points"], b["points"], strict=True):
                    assert p["value"] == pytest.approx(q["value"], rel=1e-9, abs=1e-4), (
                        scope.label,
                        p["label"],
                    )
            assert [e["ts"] for e in got["events"]] == [e["ts"] for e in want["events"]]
