"""The alert lifecycle in the relational store: dedup, hysteresis, people's actions, silences, restarts."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from api.alerts.config import parse_alerts
from api.alerts.instant import InstantRules
from api.alerts.lifecycle import Action, decide
from api.alerts.models import Alert
from api.alerts.rules.base import Finding, Level, Severity, Subject
from api.alerts.store import AlertStore
from campusmon.config import CampusConfig, parse_config
from campusmon.db import init_db
from campusmon.reading import Reading

T0 = 1_760_000_000
CAMPUS = {
    "buildings": [
        {"id": "d1", "name": "Dorm 1", "type": "dorm"},
        {"id": "t1", "name": "Teaching 1", "type": "classroom"},
    ],
    "meters": [
        {"id": "w1", "building": "t1", "kind": "water"},
        {"id": "e-r1", "building": "d1", "kind": "electricity", "room": "d1-101", "interval_s": 10},
    ],
}


def make(db_url: str, alerts: dict | None = None) -> tuple[CampusConfig, AlertStore]:
    """Every test here runs on SQLite and on a real PostgreSQL (the ``db_url`` fixture)."""
    cfg = parse_config(
        {**CAMPUS, "database": {"url": db_url}, "alerts": alerts or {}},
        "t",
        environ={},
    )
    _e, sessions = init_db(cfg.database.url)
    clock = [float(T0)]
    store = AlertStore(cfg, parse_alerts(cfg), sessions, clock=lambda: clock[0])
    store.clock_box = clock  # type: ignore[attr-defined]
    return cfg, store


def leak(
    level: Level, ts: int, value: float = 0.3, severity: Severity | None = None, clear_after: int = 1
) -> Finding:
    return Finding(
        "leak.night_flow",
        Subject("meter", "w1", "t1"),
        level,
        ts,
        since=ts - 3600,
        value=value,
        threshold=0.05,
        unit="m3/h",
        waste_per_day=value * 24,
        waste_unit="m3",
        meter="w1",
        detail={"night_min_flow_m3h": value, "baseline_m3h": 0.01},
        severity=severity,
        clear_after=clear_after,
    )


def test_decision_table() -> None:
    F, OK, H = Level.FIRING, Level.OK, Level.HOLD
    assert decide(False, 0, False, F, 1) is Action.OPEN
    assert decide(True, 3, False, F, 1) is Action.UPDATE
    assert decide(False, 0, True, F, 1) is Action.NOTHING  # cleared by hand: latched
    assert decide(False, 0, False, F, 1, suppressed=True) is Action.NOTHING  # maintenance window
    assert decide(True, 0, False, OK, 2) is Action.COUNT_OK
    assert decide(True, 1, False, OK, 2) is Action.CLEAR
    assert decide(False, 0, True, OK, 1) is Action.UNLATCH
    assert decide(True, 1, False, H, 2) is Action.RESET_OK
    assert decide(False, 0, False, H, 1) is Action.NOTHING


def test_one_open_alert_per_rule_and_subject_updated_not_duplicated(db_url: str) -> None:
    cfg, store = make(db_url)
    ev = store.apply([leak(Level.FIRING, T0)])
    assert [e["type"] for e in ev] == ["opened"]
    a = ev[0]["alert"]
    assert (
        a["status"] == "active"
        and a["acknowledged"] is False
        and a["subject"] == {"kind": "meter", "id": "w1"}
    )
    assert a["building"] == "t1" and a["severity"] == "major" and a["waste"]["unit"] == "m3"
    for k in range(1, 5):
        assert store.apply([leak(Level.FIRING, T0 + k * 3600, 0.3 + k / 100)]) == []
    items, _ = store.query()
    assert len(items) == 1 and items[0]["value"] == pytest.approx(0.34)
    assert items[0]["last_seen"] > items[0]["first_seen"]
    # The database itself refuses a second open alert for the same key.
    with store.sessions() as s, s.begin(), pytest.raises(IntegrityError):
        row = s.get(Alert, a["id"])
        s.add(Alert(**{c.name: getattr(row, c.name) for c in Alert.__table__.columns if c.name != "id"}))
        s.flush()


def test_severity_change_is_an_event_and_clearing_needs_consecutive_oks(db_url: str) -> None:
    _cfg, store = make(db_url)
    store.apply([leak(Level.FIRING, T0, clear_after=2)])
    ev = store.apply([leak(Level.FIRING, T0 + 60, severity=Severity.CRITICAL, clear_after=2)])
    assert [(e["type"], e["alert"]["change"]) for e in ev] == [
        ("severity", {"from": "major", "to": "critical"})
    ]
    assert store.apply([leak(Level.OK, T0 + 120, clear_after=2)]) == []  # one OK
    assert store.apply([leak(Level.HOLD, T0 + 180, clear_after=2)]) == []  # back in the band: streak resets
    assert store.apply([leak(Level.OK, T0 + 240, clear_after=2)]) == []
    ev = store.apply([leak(Level.OK, T0 + 300, clear_after=2)])
    assert [e["type"] for e in ev] == ["cleared"]
    a = ev[0]["alert"]
    assert a["status"] == "cleared" and a["cleared_by"] == "rule" and a["cleared_at"] is not None
    # A new occurrence is a new alert.
    ev = store.apply([leak(Level.FIRING, T0 + 400)])
    assert ev[0]["type"] == "opened" and ev[0]["alert_id"] != a["id"]


def test_people_ack_assign_note_and_clear_with_latch(db_url: str) -> None:
    _cfg, store = make(db_url)
    a = store.apply([leak(Level.FIRING, T0)])[0]["alert"]
    acked = store.ack(a["id"], "li.wei")
    assert acked["acknowledged"] is True and acked["acked_by"] == "li.wei" and acked["status"] == "active"
    assert store.ack(a["id"], "li.wei")["acked_at"] == acked["acked_at"]  # idempotent
    assert store.assign(a["id"], "plumbing team", "li.wei")["assignee"] == "plumbing team"
    noted = store.add_note(a["id"], "zhang", "toilet on floor 3 running; valve ordered")
    assert noted["notes"][0]["text"].startswith("toilet") and noted["notes"][0]["author"] == "zhang"
    cleared = store.clear(a["id"], "zhang")
    assert (
        cleared["status"] == "cleared"
        and cleared["cleared_by"] == "zhang"
        and cleared["acknowledged"] is True
    )
    # Still leaking: a hand-cleared alert does not come straight back ...
    assert store.apply([leak(Level.FIRING, T0 + 3600)]) == []
    # ... until the condition has ended once.
    store.apply([leak(Level.OK, T0 + 7200)])
    assert [e["type"] for e in store.apply([leak(Level.FIRING, T0 + 10800)])] == ["opened"]
    types = [e["type"] for e in store.events_after(0)]
    assert types == ["opened", "acknowledged", "assigned", "note", "cleared", "opened"]
    ids = [e["id"] for e in store.events_after(0)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert store.ack(999, "x") is None


def test_silence_mutes_notifications_and_maintenance_stops_alerts(db_url: str) -> None:
    mute = {
        "kind": "silence",
        "rules": ["leak.*"],
        "buildings": ["t1"],
        "start": "2025-10-09T00:00:00+08:00",
        "end": "2025-10-10T00:00:00+08:00",
    }
    maint = {
        "kind": "maintenance",
        "subjects": ["w1"],
        "start": "2025-10-10T00:00:00+08:00",
        "end": "2025-10-11T00:00:00+08:00",
    }
    alerts = {"silences": [mute, maint], "webhooks": [{"name": "ops", "url": "http://127.0.0.1:9/hook"}]}
    _cfg, store = make(db_url, alerts)
    t_mute = 1759939200 + 3600  # 2025-10-09 09:00 +08:00
    ev = store.apply([leak(Level.FIRING, t_mute)])
    assert ev[0]["alert"]["silenced"] is True
    from api.alerts.notify.dispatcher import deliveries_json

    assert deliveries_json(store.sessions) == []  # muted: nothing to deliver
    store.apply([leak(Level.OK, t_mute + 3600)])
    assert store.apply([leak(Level.FIRING, 1760025600 + 3600)]) == []  # in maintenance: nothing opens
    ev = store.apply([leak(Level.FIRING, 1760112000 + 3600)])  # after it
    assert ev[0]["type"] == "opened" and ev[0]["alert"]["silenced"] is False
    assert sorted(d["channel"] for d in deliveries_json(store.sessions)) == ["mqtt", "webhook:ops"]


def test_query_filters_and_cursor_pagination(db_url: str) -> None:
    _cfg, store = make(db_url)
    for k in range(7):
        f = leak(Level.FIRING, T0 + k)
        f.subject = Subject("meter", f"w{k}", "t1" if k % 2 else "d1")
        store.apply([f])
    store.ack(3, "x")
    page, cur = store.query(limit=3)
    assert [a["id"] for a in page] == [7, 6, 5] and cur
    page2, cur2 = store.query(limit=3, cursor=cur)
    page3, cur3 = store.query(limit=3, cursor=cur2)
    assert [a["id"] for a in page2] == [4, 3, 2] and [a["id"] for a in page3] == [1] and cur3 is None
    assert [a["id"] for a in store.query(building="t1")[0]] == [6, 4, 2]
    assert [a["id"] for a in store.query(status="active_ack")[0]] == [3]
    assert len(store.query(status="active_unack")[0]) == 6
    assert store.query(rule="dorm.*")[0] == [] and len(store.query(rule="leak.*")[0]) == 7
    with pytest.raises(ValueError, match="status"):
        store.query(status="open-ish")
    with pytest.raises(ValueError, match="cursor"):
        store.query(cursor="garbage!")


def test_restart_keeps_alerts_and_rule_state(db_url: str) -> None:
    cfg, store = make(db_url)
    f = leak(Level.FIRING, T0)
    f.state = {"baseline": 0.01}
    store.apply([f])
    # A new process: the alert is still open (updated, not re-opened) and the frozen baseline is back.
    _e, sessions = init_db(cfg.database.url)
    again = AlertStore(cfg, parse_alerts(cfg), sessions)
    assert again.state("leak.night_flow", Subject("meter", "w1", "t1")) == {"baseline": 0.01}
    assert again.apply([leak(Level.FIRING, T0 + 3600)]) == []
    assert len(again.query(status="active")[0]) == 1


def test_instant_rule_state_survives_a_restart_mid_step(db_url: str) -> None:
    cfg, _store = make(db_url)
    first = InstantRules(cfg)
    rs = [Reading("e-r1", "power_w", 150.0, T0 + i * 10) for i in range(5)]
    rs += [Reading("e-r1", "power_w", 2100.0, T0 + 50 + i * 10) for i in range(2)]  # step begins, 10 s old
    assert first.on_readings(rs) == []
    # The collector restarts; the next readings continue the same step and it fires 30 s after it began.
    second = InstantRules(cfg)
    assert second.on_readings([Reading("e-r1", "power_w", 2100.0, T0 + 70)]) == []
    ev = second.on_readings([Reading("e-r1", "power_w", 2100.0, T0 + 80)])
    hp = [e for e in ev if e["alert"]["rule"] == "dorm.high_power"]
    assert hp and hp[0]["alert"]["since"] is not None
    assert hp[0]["alert"]["detail"]["lasted_s"] == 30


def test_a_hand_clear_in_another_process_latches_and_unlatches_there(db_url: str) -> None:
    cfg, collector = make(db_url)  # the process that runs the rule
    api = AlertStore(cfg, parse_alerts(cfg), collector.sessions)  # the API process
    collector.latch_refresh_s = 0.0
    a = collector.apply([leak(Level.FIRING, T0)])[0]["alert"]
    api.clear(a["id"], "warden")
    assert collector.apply([leak(Level.FIRING, T0 + 60)]) == []  # latched: no new alert
    assert collector.apply([leak(Level.OK, T0 + 120)]) == []  # the condition ends: unlatched
    assert [e["type"] for e in collector.apply([leak(Level.FIRING, T0 + 180)])] == ["opened"]


def test_a_cleared_alert_releases_the_baseline_its_rule_froze(db_url: str) -> None:
    """The next alert is judged against a baseline learned afresh, not the one frozen by the first."""
    _cfg, store = make(db_url)
    subject = Subject("meter", "w1", "t1")
    f = leak(Level.FIRING, T0)
    f.state = {"baseline": 0.01}
    store.apply([f])
    store.apply([leak(Level.OK, T0 + 86400)])  # the clearing finding carries no state of its own
    assert "baseline" not in store.state("leak.night_flow", subject)
    # Every rule that freezes state while open lets go of it; what it learns over time is kept.
    for rule, frozen, kept in (
        ("leak.continuous_flow", {"resting": True}, {}),
        ("leak.balance", {"baseline": 0.1}, {}),
        ("after_hours.baseload_creep", {"long_term": 3.0}, {"days": {"2025-10-01": 2.5}}),
    ):
        g = leak(Level.FIRING, T0 + 2 * 86400)
        g.rule, g.state = rule, {**frozen, **kept}
        store.apply([g])
        ok = leak(Level.OK, T0 + 3 * 86400)
        ok.rule = rule
        store.apply([ok])
        assert store.state(rule, subject) == kept, rule


def test_a_hand_clear_releases_the_frozen_baseline_too(db_url: str) -> None:
    _cfg, store = make(db_url)
    f = leak(Level.FIRING, T0)
    f.state = {"baseline": 0.01}
    a = store.apply([f])[0]["alert"]
    store.clear(a["id"], "warden")
    assert store.state("leak.night_flow", Subject("meter", "w1", "t1")) == {}


def test_alert_json_rounds_for_display_and_keeps_full_precision_in_the_evidence(db_url: str) -> None:
    _cfg, store = make(db_url)
    f = leak(Level.FIRING, T0, value=0.11999999999989086)
    a = store.apply([f])[0]["alert"]
    assert a["value"] == 0.12 and "0.11999" not in a["message"]
    ev = a["evidence"]
    assert ev["value"] == 0.11999999999989086 and ev["meter"] == "w1" and ev["threshold"] == 0.05
    assert ev["start"] == T0 - 3600 and ev["end"] == T0 and ev["baseline_method"]


def test_a_kettle_message_states_how_long_the_step_lasted_when_it_fired(db_url: str) -> None:
    """Truth: the kettle switched on at T0 + 50 and the alert fired 30 s later; it then ran 5 minutes."""
    cfg, store = make(db_url)
    rules = InstantRules(cfg, store=store)
    rs = [Reading("e-r1", "power_w", 150.0, T0 + i * 10) for i in range(5)]
    rs += [Reading("e-r1", "power_w", 1950.0, T0 + 50 + i * 10) for i in range(31)]
    rules.on_readings(rs)
    a = store.query(rule="dorm.high_power")[0][0]
    assert a["detail"]["lasted_s"] == 30
    assert "stayed there for 30 s" in a["message"], a["message"]
