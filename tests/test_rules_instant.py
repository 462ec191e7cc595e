"""Instant rules: dorm appliances, room caps and overload, as pure steps and through the live hook."""

from __future__ import annotations

import random
from pathlib import Path

from api.alerts.lifecycle import Action, decide
from api.alerts.rules import instant as r
from api.alerts.rules.base import Level, Severity
from campusmon.config import parse_config
from campusmon.reading import Reading

T0 = 1_760_000_000


def trace(step, samples):
    """Run a step function over samples with the store's lifecycle; returns (opens, clears, steps)."""
    st: dict = {}
    is_open, ok = False, 0
    opens, clears, steps = [], [], []
    for s in samples:
        res = step(st, s)
        st = res.state
        steps.append(res)
        act = decide(is_open, ok, False, res.level, 1)
        if act is Action.OPEN:
            is_open, ok = True, 0
            opens.append(s[0])
        elif act is Action.CLEAR:
            is_open = False
            clears.append(s[0])
    return opens, clears, steps


def hp(p: r.HighPowerParams | None = None):
    p = p or r.HighPowerParams()
    return lambda st, s: r.high_power(st, s[0], s[1], s[2] if len(s) > 2 else None, p)


def room_day(rng: random.Random, kettle: tuple[int, int] | None = None, kw: float = 1.8, every: int = 10):
    out = []
    for i in range(0, 3 * 3600, every):
        ts = T0 + i
        p = 150 + 100 * (i > 3600) + rng.uniform(-30, 30)
        if kettle and kettle[0] <= ts < kettle[1]:
            p += kw * 1000
        out.append((ts, p))
    return out


def test_kettle_fires_once_it_has_lasted_30_s_and_clears_when_switched_off() -> None:
    kettle = (T0 + 5000, T0 + 5000 + 240)
    opens, clears, _ = trace(hp(), room_day(random.Random(1), kettle))
    assert opens == [kettle[0] + 30]  # 10 s readings: the 4th reading of the step is 30 s in
    assert clears == [kettle[1]]


def test_a_short_burst_does_not_fire() -> None:
    opens, _, _ = trace(hp(), room_day(random.Random(2), (T0 + 5000, T0 + 5020)))
    assert opens == []


def test_ordinary_room_load_never_fires() -> None:
    rng = random.Random(3)
    # Laptops, lamps, a fan switching on and off: steps of up to 300 W.
    samples = [(T0 + i * 10, 100 + 300 * (rng.random() < 0.3) + rng.uniform(-20, 20)) for i in range(5000)]
    assert trace(hp(), samples)[0] == []


def test_inductive_loads_are_not_resistive_appliances() -> None:
    samples = [(T0 + i * 10, 200 + (1000 if 100 <= i < 200 else 0), 0.6) for i in range(300)]
    assert trace(hp(), samples)[0] == []
    samples = [(T0 + i * 10, 200 + (1000 if 100 <= i < 200 else 0), 0.99) for i in range(300)]
    assert len(trace(hp(), samples)[0]) == 1


def test_high_power_does_not_flap_at_the_step_size() -> None:
    # 200 W base, then a load hovering around +800 W (790..810): one alert, no clear until it is off.
    samples = [(T0 + i * 10, 200.0) for i in range(10)]
    samples += [(T0 + 100 + i * 10, 200 + (810 if i % 2 else 790)) for i in range(60)]
    samples += [(T0 + 700 + i * 10, 200.0) for i in range(10)]
    opens, clears, _ = trace(hp(), samples)
    assert len(opens) == 1 and clears == [T0 + 700]


def test_readings_one_minute_apart_fire_at_the_second_reading() -> None:
    kettle = (T0 + 600, T0 + 840)
    opens, _, _ = trace(hp(), room_day(random.Random(4), kettle, every=60))
    assert opens == [kettle[0] + 60]


def test_over_cap_fires_and_has_hysteresis() -> None:
    p = r.OverCapParams(cap_w=1500, duration_s=30)
    step = lambda st, s: r.over_cap(st, s[0], s[1], p)  # noqa: E731
    samples = [(T0 + i * 10, 1000.0) for i in range(10)]
    samples += [(T0 + 100 + i * 10, 1480 + 40 * (i % 2)) for i in range(60)]  # 1480 / 1520
    samples += [(T0 + 700 + i * 10, 1000.0) for i in range(10)]
    opens, clears, _ = trace(step, samples)
    assert len(opens) == 1 and opens[0] >= T0 + 100 + 30 and clears == [T0 + 700]


def test_overload_critical_over_105_percent_and_warning_over_90_percent() -> None:
    p = r.OverloadParams()
    step = lambda st, s: r.overload(st, s[0], s[1], 10.0, p)  # noqa: E731
    samples = [(T0 + i * 10, 5.0) for i in range(10)]
    samples += [(T0 + 100 + i * 10, 11.0) for i in range(5)]  # 110 % -> critical at once
    samples += [(T0 + 150 + i * 10, 9.5) for i in range(5)]  # back to 95 %: stays open as a warning
    samples += [(T0 + 200 + i * 10, 5.0) for i in range(5)]  # clears
    opens, clears, steps = trace(step, samples)
    assert opens == [T0 + 100] and clears == [T0 + 200]
    assert steps[10].severity is Severity.CRITICAL and steps[15].severity is Severity.WARNING
    # 95 % for less than 5 minutes is no warning yet; for 5 minutes it is.
    warn = [(T0 + i * 10, 9.5) for i in range(40)]
    opens, _, steps = trace(step, warn)
    assert opens == [T0 + 300] and steps[-1].level is Level.FIRING


DORM = {
    "buildings": [{"id": "d1", "name": "Dorm 1", "type": "dorm"}, {"id": "o1", "type": "office"}],
    "meters": [
        {
            "id": "e-r1",
            "building": "d1",
            "kind": "electricity",
            "room": "d1-101",
            "interval_s": 10,
            "rated_current_a": 10,
        },
        {"id": "e-o1", "building": "o1", "kind": "electricity", "room": "o1-1", "interval_s": 10},
    ],
}


def test_hook_alerts_rooms_in_dorms_only_and_ignores_replayed_readings(tmp_path: Path) -> None:
    from api.alerts.instant import InstantRules

    cfg = parse_config({**DORM, "database": {"url": f"sqlite:///{tmp_path}/a.sqlite"}}, "t", environ={})
    rules = InstantRules(cfg)
    batch = []
    for i in range(12):
        p = 150.0 + (2000 if i >= 3 else 0)
        batch += [Reading("e-r1", "power_w", p, T0 + i * 10), Reading("e-o1", "power_w", p, T0 + i * 10)]
    events = rules.on_readings(batch)
    opened = [e for e in events if e["type"] == "opened"]
    assert {(e["alert"]["rule"], e["alert"]["subject"]["id"]) for e in opened} == {
        ("dorm.high_power", "d1-101"),
        ("dorm.over_cap", "d1-101"),
    }
    hp_alert = next(e["alert"] for e in opened if e["alert"]["rule"] == "dorm.high_power")
    assert hp_alert["first_seen"].startswith("2025-10-09") and hp_alert["severity"] == "critical"
    assert "kettle" in hp_alert["message"] and "d1-101" in hp_alert["message"]
    # The same batch again (a redelivery) changes nothing; the appliance switching off clears both.
    assert rules.on_readings(batch) == []
    off = rules.on_readings([Reading("e-r1", "power_w", 150.0, T0 + 200)])
    assert sorted(e["type"] for e in off) == ["cleared", "cleared"]


def test_overload_through_the_hook_uses_the_largest_phase(tmp_path: Path) -> None:
    from api.alerts.instant import InstantRules

    cfg = parse_config({**DORM, "database": {"url": f"sqlite:///{tmp_path}/a.sqlite"}}, "t", environ={})
    rules = InstantRules(cfg)
    ev = rules.on_readings(
        [Reading("e-r1", "current_l1_a", 4.0, T0), Reading("e-r1", "current_l2_a", 11.0, T0)]
    )
    assert [(e["type"], e["alert"]["rule"], e["alert"]["severity"]) for e in ev] == [
        ("opened", "overload.current", "critical")
    ]
    assert "11 A against a rated 10 A" in ev[0]["alert"]["message"]


def test_concurrent_batches_keep_every_rooms_state(tmp_path: Path) -> None:
    """HTTP ingest calls the hook from a thread pool: no batch may fail and no room's step be lost."""
    import sys
    import threading

    from api.alerts.instant import InstantRules

    rooms = 48
    meters = [
        {"id": f"e-r{i}", "building": "d1", "kind": "electricity", "room": f"d1-{i}", "interval_s": 10}
        for i in range(rooms)
    ]
    data = {"buildings": DORM["buildings"], "meters": meters}
    cfg = parse_config({**data, "database": {"url": f"sqlite:///{tmp_path}/a.sqlite"}}, "t", environ={})
    rules = InstantRules(cfg, rules=["dorm.high_power"])
    workers = 6
    errors: list[BaseException] = []
    opened: list[str] = []
    start = threading.Barrier(workers)

    def feed(w: int) -> None:
        start.wait()
        # Each worker owns its rooms and sends them one reading at a time: 3 at base, then a kettle.
        for i in range(12):
            p = 150.0 + (2000 if i >= 3 else 0)
            for m in range(w, rooms, workers):
                try:
                    for e in rules.on_readings([Reading(f"e-r{m}", "power_w", p, T0 + i * 10)]):
                        if e["type"] == "opened":
                            opened.append(e["alert"]["subject"]["id"])
                except BaseException as e:  # what the hook raised is what ingest would have lost
                    errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so the race shows up in every run
    try:
        threads = [threading.Thread(target=feed, args=(w,)) for w in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert errors == []
    assert sorted(opened) == sorted(f"d1-{i}" for i in range(rooms))
    # The state kept for the next batch (and a restart) is every room's last reading.
    states = {k[1]: v["ts"] for k, v in rules._state.items()}
    assert states == {f"room:d1-{i}@d1": T0 + 110 for i in range(rooms)}
