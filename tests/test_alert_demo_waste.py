"""The demo's injected waste is found by the window rules, whatever the time of day the demo starts.

Eight days of the simulated campus of deploy/campus.yaml, written straight into a real InfluxDB
the way ``campusmon demo`` publishes it, with the demo's waste (a running toilet in teach-1, the
library's lights left on) in the last hours; a backtest over the last day must find both and
nothing on the clean buildings.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from api.alerts.backtest import backtest
from campusmon.config import CampusConfig
from campusmon.demo import inject_waste, waste_start
from campusmon.influx import InfluxStore, open_store
from campusmon.services import Server
from firmware_sim.profiles import sim_meters_for

CAMPUS = Path(__file__).resolve().parent.parent / "deploy" / "campus.yaml"
HISTORY_H = 8 * 24
STEP_S = 900
WASTE_METERS = {"w-teach-1-toilets", "w-teach-1-main", "e-library-light", "e-library-main"}


def _campus(make_config: Callable[..., CampusConfig], influx: Server) -> CampusConfig:
    doc = yaml.safe_load(CAMPUS.read_text())
    data = {k: doc[k] for k in ("site", "buildings", "gateways", "meters", "accounting")}
    return make_config(influx=influx, data=data)


def _write(store: InfluxStore, meters: list, start: int, end: int) -> None:
    batch = []
    for ts in range(start - start % STEP_S, end, STEP_S):
        for m in meters:
            batch.extend(m.readings(ts))
    out = store.write(batch)
    assert out.stored == len(batch) and not out.rejected


@pytest.mark.parametrize(
    "local",
    [
        "2026-11-24T05:05",  # a Tuesday just before dawn: the last whole night ended minutes ago
        "2026-11-19T14:00",  # a Thursday afternoon
    ],
)
def test_backtest_finds_the_demo_waste(
    influxdb: Server, make_config: Callable[..., CampusConfig], local: str
) -> None:
    cfg = _campus(make_config, influxdb)
    now = int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(cfg.site.timezone)).timestamp())
    store = open_store(cfg)
    store.ensure_database()
    meters = sim_meters_for(cfg, 1)
    since = waste_start(now, HISTORY_H)
    _write(store, meters, now - HISTORY_H * 3600, since)
    assert "running toilet" in inject_waste(meters, cfg)
    _write(store, meters, since, now - 60)

    result = backtest(cfg, store, now - 86400, now, step_s=STEP_S)
    found = {(a["rule"], a["subject"]["id"]) for a in result.alerts}
    assert {
        ("leak.continuous_flow", "w-teach-1-toilets"),
        ("leak.night_flow", "w-teach-1-toilets"),
        ("after_hours.usage", "e-library-light"),
    } <= found, found
    assert {m for _r, m in found} <= WASTE_METERS, found

    # A window-only backtest reports the register readings it judged, not zero.
    only = backtest(cfg, store, now - 3600, now, rules=["leak.night_flow"], step_s=STEP_S)
    assert only.readings >= len(cfg.meters) * 4
    store.close()


def test_the_live_feed_raises_the_demo_waste_on_its_first_pass(
    influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    """Thursday 09:30, opening time: the library's night lay before the rule engine started; its first pass catches up."""
    from api.alerts.window import WindowEvaluator
    from campusmon.db import init_db

    cfg = _campus(make_config, influxdb)
    now = int(
        datetime.fromisoformat("2026-11-24T05:05").replace(tzinfo=ZoneInfo(cfg.site.timezone)).timestamp()
    )
    store = open_store(cfg)
    store.ensure_database()
    meters = sim_meters_for(cfg, 1)
    since = waste_start(now, HISTORY_H)
    _write(store, meters, now - HISTORY_H * 3600, since)
    inject_waste(meters, cfg)
    _write(store, meters, since, now - 60)
    _e, sessions = init_db(cfg.database.url)
    ev = WindowEvaluator(cfg, store, sessions, clock=lambda: float(now))
    opened = {(e["alert"]["rule"], e["alert"]["subject"]["id"]) for e in ev.run() if e["type"] == "opened"}
    store.close()
    assert ("after_hours.usage", "e-library-light") in opened, opened
    assert ev.last_pass["passes"] > 1
