"""Alert precision through the real InfluxDB: cold starts, commissioning, and catching up on unjudged hours.

Readings are integrated from rate functions and written to a real InfluxDB (register and rate, as
meters send them); backtests and the live evaluator read them back through the project's own path.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from api.alerts.backtest import backtest
from api.alerts.window import WindowEvaluator
from campusmon.config import CampusConfig
from campusmon.db import init_db
from campusmon.influx import InfluxStore, open_store
from campusmon.reading import Reading
from campusmon.services import Server

TZ = ZoneInfo("Asia/Shanghai")
H = 3600
DAY = 86400
S = int(datetime(2025, 10, 6, tzinfo=TZ).timestamp())  # a Monday, 00:00 local


def local(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, TZ)


def office_kw(ts: int) -> float:
    lt = local(ts)
    return 40.0 if lt.weekday() < 5 and 8 <= lt.hour < 18 else 4.0


def write_meter(
    store: InfluxStore, meter: str, rate: Callable[[int], float], start: int, end: int, step: int = 900
) -> None:
    """Register (kWh) and power (W) readings every ``step`` from ``start`` to ``end``."""
    batch: list[Reading] = []
    reg = 1000.0
    for ts in range(start, end, step):
        batch.append(Reading(meter, "energy_kwh", round(reg, 3), ts))
        batch.append(Reading(meter, "power_w", round(rate(ts) * 1000, 1), ts))
        reg += rate(ts) * step / 3600
    out = store.write(batch)
    assert out.stored == len(batch) and not out.rejected


def campus(
    make_config: Callable[..., CampusConfig],
    influx: Server,
    meters: list[str],
    alerts: dict[str, Any] | None = None,
) -> CampusConfig:
    return make_config(
        influx=influx,
        data={
            "site": {"name": "Test campus", "timezone": "Asia/Shanghai"},
            "buildings": [{"id": "b1", "name": "Office 1", "type": "office", "floor_area_m2": 4000}],
            "meters": [
                {"id": m, "building": "b1", "kind": "electricity", "category": "01000"} for m in meters
            ],
            "alerts": alerts or {},
        },
    )


def test_a_backtest_that_starts_with_the_data_raises_nothing_but_the_never_reported_meter(
    influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    """First readings arrive 10 minutes in; one configured meter never reports at all."""
    cfg = campus(make_config, influxdb, ["e1", "e2", "e3", "e-ghost"])
    store = open_store(cfg)
    store.ensure_database()
    for m in ("e1", "e2", "e3"):
        write_meter(store, m, office_kw, S + 600, S + 3 * DAY)
    res = backtest(cfg, store, S, S + 3 * DAY, step_s=300)
    store.close()
    got = [(a["rule"], a["subject"]["id"]) for a in res.alerts]
    assert got == [("data.never_reported", "campus")], got
    a = res.alerts[0]
    first = int(datetime.fromisoformat(a["first_seen"]).timestamp())
    assert S + 24 * H <= first <= S + 24 * H + 300  # after the grace period from the backtest's start
    assert a["detail"]["meters"] == ["e-ghost"] and "e-ghost" in a["message"]
    assert a["evidence"]["meters"] == ["e-ghost"]


def test_a_commissioned_date_starts_the_grace_period(
    influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    cfg = campus(
        make_config,
        influxdb,
        ["e1", "e-ghost", "e-later"],
        alerts={"commissioned": {"e-ghost": local(S - 2 * DAY).strftime("%Y-%m-%d")}},
    )
    # On the meter itself: in service only from tomorrow, so not yet overdue.
    later = next(m for m in cfg.meters if m.id == "e-later")
    later.commissioned = local(S + DAY).date()
    store = open_store(cfg)
    store.ensure_database()
    write_meter(store, "e1", office_kw, S, S + DAY)
    res = backtest(cfg, store, S, S + DAY, rules=["data.*"], step_s=900)
    store.close()
    assert [(a["rule"], a["first_seen"][:16]) for a in res.alerts] == [
        ("data.never_reported", local(S + 900).isoformat()[:16])
    ]
    assert res.alerts[0]["detail"]["meters"] == ["e-ghost"]


def test_the_live_evaluator_counts_a_silent_new_meter_from_when_it_first_saw_it(
    influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    cfg = campus(make_config, influxdb, ["e1", "e-new"], alerts={"schedule": {"interval_s": 900}})
    store = open_store(cfg)
    store.ensure_database()
    write_meter(store, "e1", office_kw, S - 7 * DAY, S + 3 * DAY)
    _e, sessions = init_db(cfg.database.url)
    now = [float(S)]
    ev = WindowEvaluator(cfg, store, sessions, clock=lambda: now[0])
    opened: list[tuple[int, str]] = []
    for ts in range(S, S + 2 * DAY, 3600):
        now[0] = float(ts)
        opened += [(ts, e["alert"]["rule"]) for e in ev.run() if e["type"] == "opened"]
    store.close()
    assert [r for _ts, r in opened] == ["data.never_reported"], opened
    assert S + 24 * H <= opened[0][0] <= S + 25 * H


def test_after_a_night_without_passes_the_live_feed_raises_what_a_backtest_raises(
    influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    """The rule engine stops on a weekday evening; lights are left on all night; it restarts at 09:00."""
    waste = (S + 8 * DAY + 19 * H, S + 9 * DAY + 7 * H)  # Tuesday 19:00 to Wednesday 07:00

    def rate(ts: int) -> float:
        return office_kw(ts) + (15.0 if waste[0] <= ts < waste[1] else 0.0)

    cfg = campus(make_config, influxdb, ["e1"], alerts={"schedule": {"interval_s": 900}})
    store = open_store(cfg)
    store.ensure_database()
    write_meter(store, "e1", rate, S - 14 * DAY, S + 10 * DAY)
    _e, sessions = init_db(cfg.database.url)
    stop, restart = S + 8 * DAY + 17 * H, S + 9 * DAY + 9 * H
    now = [float(stop)]
    first = WindowEvaluator(cfg, store, sessions, clock=lambda: now[0])
    assert [e for e in first.run() if e["type"] == "opened"] == []
    # A new process after the night: it has judged nothing since ``stop``.
    now[0] = float(restart)
    again = WindowEvaluator(cfg, store, sessions, clock=lambda: now[0])
    live = [e["alert"] for e in again.run() if e["type"] == "opened"]
    bt = backtest(cfg, store, stop, restart, step_s=900).alerts
    store.close()

    def key(a: dict[str, Any]) -> tuple:
        return (a["rule"], a["subject"]["id"], a["since"], a["first_seen"])

    assert sorted(map(key, live)) == sorted(map(key, bt))
    assert [a["rule"] for a in live] == ["after_hours.usage"]
    assert local(int(datetime.fromisoformat(live[0]["since"]).timestamp())).hour == 19
