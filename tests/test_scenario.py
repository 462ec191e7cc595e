"""Whole scenarios against the real InfluxDB: every labelled event caught in time, quiet buildings quiet.

The campus week is written once per module; the backtest CLI and API, the live MQTT path
(collector + instant rules) and the false-alarm rate over a quiet month all read the same data.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from api.alerts.backtest import backtest
from campusmon.db import init_db
from campusmon.influx import open_store
from firmware_sim import scenario as sc
from tests.auth_helpers import admin_headers

WEEK = date(2025, 11, 3)


def scenario_config(tmp: Path, influx_port: int, db: str, scn: sc.Scenario, **extra: Any) -> tuple[Any, Path]:
    base = {
        "influxdb": {"url": f"http://127.0.0.1:{influx_port}", "database": db},
        "database": {"url": f"sqlite:///{tmp}/campus.sqlite"},
        **extra,
    }
    path = tmp / "scenario.yaml"
    path.write_text(yaml.safe_dump(scn.campus_dict(base), sort_keys=False))
    return scn.campus(base), path


@pytest.fixture(scope="module")
def week(influxdb, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("week")
    scn = sc.campus_week(WEEK)
    cfg, path = scenario_config(tmp, influxdb.port, "scn_" + uuid.uuid4().hex[:8], scn)
    store = open_store(cfg)
    store.ensure_database()
    n = sc.write(scn, cfg, store)
    _e, sessions = init_db(cfg.database.url)
    sc.install_targets(scn, cfg, sessions)
    yield scn, cfg, path, store, sessions, n
    store.close()


def test_the_week_has_every_event_kind_and_quiet_buildings(week) -> None:
    scn, cfg, _path, _store, _s, n = week
    names = " ".join(e.name for e in scn.events)
    for words in (
        "night leak",
        "running toilet",
        "lights left on over the weekend",
        "air conditioning",
        "vacation",
        "kettle",
        "quota",
        "offline",
    ):
        assert words in names
    assert set(scn.quiet_buildings) == {"dorm-2", "teach-3", "admin-1"}
    assert not any(cfg.meter(e.meter).building in scn.quiet_buildings for e in scn.events)  # type: ignore[union-attr]
    assert n > 100_000


def test_backtest_cli_catches_every_event_in_time_and_stays_quiet_elsewhere(week) -> None:
    from campusmon.cli import app

    scn, cfg, path, _store, _s, _n = week
    res = CliRunner().invoke(
        app,
        [
            "alerts",
            "backtest",
            "--config",
            str(path),
            "--start",
            str(scn.week_start),
            "--end",
            str(scn.end),
            "--step",
            "900",
            "--format",
            "jsonl",
        ],
    )
    assert res.exit_code == 0, res.output
    alerts = [json.loads(line) for line in res.stdout.splitlines() if line.startswith('{"id"')]
    card = sc.score(scn, cfg, alerts, scn.week_start, scn.end)
    assert card.missed == [] and card.recall == 1.0, card.as_dict()
    assert card.late == [], {k: v for k, v in card.detected.items() if not v["on_time"]}
    assert card.unexplained == [], [(a["rule"], a["subject"]) for a in card.unexplained]
    assert card.false_alerts == [] and card.false_per_1000_meter_days <= 1.0
    kettle = card.detected["kettle in dorm room 301"]
    assert kettle["delay_s"] <= 30 + sc.ROOM_INTERVAL_S  # within one reading interval of lasting 30 s
    leak = card.detected["night leak in the lab building"]
    assert leak["delay_s"] < 10 * 3600  # by the morning after
    for a in alerts:  # every alert speaks plainly
        assert a["message"].count("Check:") == 1 and a["building_name"] in a["message"]
        assert ("per day" in a["message"]) == (a["waste"]["per_day"] is not None)


def test_backtest_results_stay_out_of_the_live_feed_unless_committed(week) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    scn, cfg, _path, _store, _s, _n = week
    day = scn.week_start + 2 * 86400
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as c:
        r = c.post(
            "/api/v1/alerts/backtest", json={"start": str(day), "end": str(day + 86400), "rules": ["dorm.*"]}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert {a["rule"] for a in body["alerts"]} == {"dorm.high_power", "dorm.over_cap"}
        assert body["summary"]["committed"] == 0
        assert c.get("/api/v1/alerts", params={"source": "all"}).json()["count"] == 0
        r = c.post(
            "/api/v1/alerts/backtest",
            json={
                "start": str(day),
                "end": str(day + 86400),
                "rules": ["dorm.*"],
                "commit": True,
                "include_alerts": False,
            },
        )
        assert r.json()["summary"]["committed"] == 2 and "alerts" not in r.json()
        assert c.get("/api/v1/alerts").json()["count"] == 0  # the live view
        committed = c.get("/api/v1/alerts", params={"source": "backtest"}).json()["alerts"]
        assert {a["rule"] for a in committed} == {"dorm.high_power", "dorm.over_cap"}
        assert (
            c.post("/api/v1/alerts/backtest", json={"start": str(day), "end": str(day - 1)}).status_code
            == 422
        )
        assert (
            c.post(
                "/api/v1/alerts/backtest",
                json={"start": str(day), "end": str(day + 1), "rules": ["dorm.toaster"]},
            ).status_code
            == 422
        )


def test_live_mqtt_path_raises_the_kettle_alert_within_one_reading(week, mosquitto, tmp_path: Path) -> None:
    """Meters publish, the collector stores and runs the instant rules: the alert exists in the feed."""
    from api.alerts.instant import hooks_for
    from api.alerts.store import AlertStore
    from collectors.mqtt_collector import MqttCollector

    scn, _cfg, _path, store, _s, _n = week
    kettle = next(e for e in scn.events if e.meter == "e-dorm-1-r301")
    base = {
        "influxdb": {"url": store.cfg.url, "database": store.cfg.database},  # type: ignore[attr-defined]
        "database": {"url": f"sqlite:///{tmp_path}/live.sqlite"},
        "mqtt": {
            "port": mosquitto.port,
            "client_id": "scn-live-" + uuid.uuid4().hex[:6],
            "flush_interval_s": 0.1,
        },
    }
    cfg = scn.campus(base)
    hooks = tuple(hooks_for(cfg))
    col = MqttCollector(cfg, hooks=hooks).start()
    try:
        assert col.wait_connected(10)
        sent = sc.publish(
            scn,
            cfg,
            "127.0.0.1",
            mosquitto.port,
            "scn-pub-" + uuid.uuid4().hex[:6],
            until=kettle.end + 600,
            since=kettle.start - 3600,
            meters={"e-dorm-1-r301", "e-dorm-1-r302"},
        )
        assert sent > 100
        live = AlertStore(cfg, hooks[0].acfg, init_db(cfg.database.url)[1])
        deadline = time.monotonic() + 20
        items: list = []
        while time.monotonic() < deadline and not items:
            items = live.query(rule="dorm.high_power")[0]
            time.sleep(0.2)
    finally:
        col.stop()
    assert len(items) == 1 and items[0]["subject"]["id"] == "dorm-1-301"
    first = int(__import__("datetime").datetime.fromisoformat(items[0]["first_seen"]).timestamp())
    assert kettle.start + 30 <= first <= kettle.start + 30 + sc.ROOM_INTERVAL_S


@pytest.mark.slow
def test_quiet_month_false_alarm_rate(influxdb, tmp_path: Path) -> None:
    scn = sc.quiet_month(date(2025, 9, 1))
    cfg, _path = scenario_config(tmp_path, influxdb.port, "quiet_" + uuid.uuid4().hex[:8], scn)
    store = open_store(cfg)
    store.ensure_database()
    sc.write(scn, cfg, store)
    _e, sessions = init_db(cfg.database.url)
    sc.install_targets(scn, cfg, sessions)
    res = backtest(cfg, store, scn.week_start, scn.end, None, 1800, sessions)
    store.close()
    card = sc.score(scn, cfg, res.alerts, scn.week_start, scn.end)
    assert card.clean_meter_days >= 500
    assert card.false_per_1000_meter_days <= 1.0, [
        (a["rule"], a["subject"], a["first_seen"]) for a in res.alerts
    ]


@pytest.fixture(scope="module")
def week_alerts(week) -> list[dict[str, Any]]:
    scn, cfg, _path, store, sessions, _n = week
    return backtest(cfg, store, scn.week_start, scn.end, None, 900, sessions).alerts


def _at(iso: str | None) -> int:
    from datetime import datetime

    assert iso is not None
    return int(datetime.fromisoformat(iso).timestamp())


def test_every_alert_carries_the_evidence_it_was_judged_on(week, week_alerts) -> None:
    assert week_alerts
    for a in week_alerts:
        ev = a["evidence"]
        for k in ("meter", "quantity", "start", "end", "value", "threshold", "baseline", "baseline_method"):
            assert k in ev, (a["rule"], k)
        assert ev["end"] is not None and ev["baseline_method"], a["rule"]
        if a["meter"] is not None:
            assert ev["meter"] == a["meter"]


def test_message_facts_equal_the_simulated_truth(week, week_alerts) -> None:
    """Start time, kind of day, duration and waste of each injected event, with the tolerance per figure."""
    from datetime import datetime

    from api.accounting.settings import calendar_for
    from api.alerts.rules.electricity import EMPTY_WORDS

    scn, cfg, _path, _store, _s, _n = week
    cal = calendar_for(cfg)
    tz = cfg.site.tz
    ev = {e.meter: e for e in scn.events}

    def alert(rule: str, subject: str) -> dict[str, Any]:
        hits = [a for a in week_alerts if a["rule"] == rule and a["subject"]["id"] == subject]
        assert len(hits) == 1, (rule, subject, len(hits))
        return hits[0]

    def first_empty(e: sc.WasteEvent) -> int:
        b = cfg.building(cfg.meter(e.meter).building)  # type: ignore[union-attr]
        t = e.start
        while cal.is_occupied(b, datetime.fromtimestamp(t, tz)):  # type: ignore[arg-type]
            t += 3600
        return t

    # Lights left on from Friday 18:00: the building empties at closing (22:00), then the weekend.
    lights = ev["e-teach-2"]
    a = alert("after_hours.usage", "e-teach-2")
    assert _at(a["since"]) == first_empty(lights)  # exact to the hour
    # Truth from the calendar: why each empty hour of the event was empty (Friday is a closing, not a weekend).
    b2 = cfg.building("teach-2")
    why: list[str] = []
    for t in range(first_empty(lights), lights.end, 3600):
        lt = datetime.fromtimestamp(t, tz)
        w = EMPTY_WORDS[cal.day_kind(lt.date())]
        if not cal.is_occupied(b2, lt) and w not in why:  # type: ignore[arg-type]
            why.append(w)
    assert why[:2] == ["after closing", "weekend"]
    assert a["detail"]["empty_because"] == why
    assert f"({', then '.join(why)})" in a["message"]
    assert f"since {datetime.fromtimestamp(first_empty(lights), tz):%a %d %b %Y %H:%M}" in a["message"]
    truth = lights.extra / 1000 * 24  # kWh per whole empty day
    assert abs(a["waste"]["per_day"] - truth) <= 0.1 * truth  # 10 %: the usual load is noisy
    # Air conditioning in the vacation: empty all day, so the last 24 h are 24 h of waste.
    ac = ev["e-teach-1"]
    a = alert("after_hours.usage", "e-teach-1")
    assert _at(a["since"]) == first_empty(ac) and a["detail"]["empty_because"] == ["vacation"]
    assert abs(a["waste"]["per_day"] - ac.extra / 1000 * 24) <= 0.1 * ac.extra / 1000 * 24
    # The kettle: how long the step had lasted when the alert fired (30 s, one reading interval late at most).
    kettle = ev["e-dorm-1-r301"]
    a = alert("dorm.high_power", "dorm-1-301")
    assert _at(a["since"]) == kettle.start
    assert 30 <= a["detail"]["lasted_s"] <= 30 + sc.ROOM_INTERVAL_S
    assert f"stayed there for {a['detail']['lasted_s']} s" in a["message"]
    # The night leak: 0.25 m3/h above the usual night flow, all day long.
    leak = ev["w-lab-1"]
    a = alert("leak.night_flow", "w-lab-1")
    assert abs(a["waste"]["per_day"] - leak.extra * 24) <= 0.15 * leak.extra * 24
    assert leak.start <= _at(a["since"]) <= leak.start + 6 * 3600


def _labels(scn: sc.Scenario, cfg: Any) -> dict[str, Any]:
    """The scenario's events as a campus would label them (docs/alerts.md#labelled-incidents)."""
    from datetime import datetime

    tz = cfg.site.tz
    out = []
    for e in scn.events:
        where = (
            {"meter": e.meter} if e.subjects == (e.meter,) else {"building": cfg.meter(e.meter).building}  # type: ignore[union-attr]
        )
        out.append(
            {
                "name": e.name,
                **where,
                "start": datetime.fromtimestamp(e.start, tz).isoformat(),
                "end": datetime.fromtimestamp(e.end, tz).isoformat(),
                "rules": list(e.rules),
                "also": list(e.also),
            }
        )
    return {"grace_h": 24, "incidents": out}


def test_backtest_cli_scores_labelled_incidents(week, tmp_path: Path) -> None:
    from campusmon.cli import app

    scn, cfg, path, _store, _s, _n = week
    labels = tmp_path / "incidents.json"
    labels.write_text(json.dumps(_labels(scn, cfg)))
    args = [
        "alerts",
        "backtest",
        "--config",
        str(path),
        "--start",
        str(scn.week_start),
        "--end",
        str(scn.end),
    ]
    res = CliRunner().invoke(app, [*args, "--step", "900", "--labels", str(labels)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stderr.strip().splitlines()[-1])
    score = summary["score"]
    assert score["incidents"] == len(scn.events) and score["recall"] == 1.0, score
    assert score["false_per_1000_meter_days"] <= 1.0, score["false"]
    by_name = {p["name"]: p for p in score["per_incident"]}
    card = sc.score(
        scn,
        cfg,
        [json.loads(x) for x in res.stdout.splitlines() if x.startswith('{"id"')],
        scn.week_start,
        scn.end,
    )
    for name, d in card.detected.items():  # the delays agree with the scenario's own scorecard
        assert by_name[name]["delay_s"] == d["delay_s"], name
    bad = labels.with_name("bad.json")
    bad.write_text(
        json.dumps([{"meter": "w-lab-1", "start": "2025-11-04", "end": "2025-11-03", "rules": ["x.y"]}])
    )
    res = CliRunner().invoke(app, [*args, "--labels", str(bad)])
    assert res.exit_code == 2 and "end is before start" in res.output


def test_backtest_api_scores_labelled_incidents(week) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app

    scn, cfg, _path, _store, _s, _n = week
    kettle = next(e for e in scn.events if e.meter == "e-dorm-1-r301")
    day = kettle.start - kettle.start % 86400
    labels = [i for i in _labels(scn, cfg)["incidents"] if i["name"] == kettle.name]
    with TestClient(create_app(cfg, start_jobs=False), headers=admin_headers(cfg)) as c:
        body = {"start": str(day), "end": str(day + 86400), "rules": ["dorm.high_power"], "labels": labels}
        r = c.post("/api/v1/alerts/backtest", json=body)
        assert r.status_code == 200, r.text
        score = r.json()["score"]
        assert score["recall"] == 1.0 and score["false_alerts"] == 0
        assert 30 <= score["per_incident"][0]["delay_s"] <= 30 + sc.ROOM_INTERVAL_S
        bad = c.post("/api/v1/alerts/backtest", json={**body, "labels": [{"meter": "x", "rules": []}]})
        assert bad.status_code == 422 and "labels" in bad.text
