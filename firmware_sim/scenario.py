"""Labelled waste scenarios: a simulated campus week with known waste events, and how to score alerts on it.

A scenario is a small campus (its own buildings, meters, calendar and quotas) plus events, each
saying which meter wastes how much from when to when, which rules should catch it and by when.
Two weeks of clean history come first so rules that learn a baseline have one. Buildings with no
event are the quiet ones: any alert there is a false alarm.

Time is simulated and passed in, so a week is generated in about a second; readings go to InfluxDB
directly (``write``) or over MQTT (``publish``) as a real fleet would send them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import typer

from campusmon.config import CampusConfig, parse_config
from campusmon.quantities import MeterKind
from campusmon.reading import Reading
from firmware_sim.profiles import SimMeter, peak_for, shape

log = logging.getLogger(__name__)

DAY = 86400
HOUR = 3600
HISTORY_DAYS = 14
ROOM_PEAK_W = 300.0
ROOM_INTERVAL_S = 60
MAIN_INTERVAL_S = 900
SATURDAY = date(2024, 1, 6)  # any Saturday: vacation days borrow its load shape
WEDNESDAY = date(2024, 1, 3)  # make-up workdays borrow a weekday's shape


@dataclass(frozen=True, slots=True)
class WasteEvent:
    """One injected waste event and what catching it means."""

    name: str
    meter: str
    extra: float  # W (electricity) or m3/h (water) added; 0 for an outage
    start: int
    end: int
    rules: tuple[str, ...]  # any of these, on one of ``subjects``, by ``detect_by`` = detected
    detect_by: int
    subjects: tuple[str, ...]
    also: tuple[str, ...] = ()  # other rules the event may legitimately trigger on its subjects
    offline: bool = False
    mirror: tuple[str, ...] = ()  # meters upstream that see the same extra (a sub-meter's parent)
    # When the extra is on, if not the whole of start..end (taps left running on three nights).
    spans: tuple[tuple[int, int], ...] = ()

    def active(self, t: int) -> bool:
        if self.spans:
            return any(a <= t < b for a, b in self.spans)
        return self.start <= t < self.end

    def related(self, rule: str, subject: str, first_seen: int, grace_s: int) -> bool:
        return (
            subject in self.subjects
            and rule in self.rules + self.also
            and self.start <= first_seen <= self.end + grace_s
        )


@dataclass
class Scenario:
    name: str
    description: str
    week_start: int  # local Monday 00:00 of the event week
    config: dict[str, Any]
    events: list[WasteEvent]
    quiet_buildings: list[str]
    end: int
    seed: int = 7
    targets: list[dict[str, Any]] = field(default_factory=list)
    # The simulated load follows the calendar: a building open at weekends but closed on a holiday
    # rests at its night base load that day, and a make-up workday runs a weekday.
    calendar_days: bool = False

    @property
    def history_start(self) -> int:
        return self.week_start - HISTORY_DAYS * DAY

    def campus_dict(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The scenario's campus, with connection sections (mqtt, influxdb, database...) taken from ``base``."""
        skip = ("buildings", "meters", "accounting", "alerts")
        data = {k: v for k, v in (base or {}).items() if k not in skip}
        data.update(copy.deepcopy(self.config))
        if base and isinstance(base.get("alerts"), dict):
            # Notification channels of the real campus still apply; rule settings are the scenario's.
            keep = {
                k: v for k, v in base["alerts"].items() if k in ("webhooks", "smtp", "mqtt", "public_url")
            }
            data["alerts"] = {**data.get("alerts", {}), **keep}
        return data

    def campus(
        self, base: dict[str, Any] | None = None, environ: dict[str, str] | None = None
    ) -> CampusConfig:
        env = {} if environ is None else environ
        return parse_config(self.campus_dict(base), f"scenario {self.name}", environ=env)


class ScenarioMeter(SimMeter):
    """A simulated meter that knows the campus calendar: on vacation and holidays its building runs a weekend day."""

    holiday_like: Callable[[date], bool] | None = None
    # The local time whose load a closed holiday borrows (None: not such a day).
    closed_like: Callable[[datetime], datetime | None] | None = None
    working_weekend: Callable[[date], bool] | None = None
    room_start: int = 0

    def rate_at(self, ts: int) -> float:
        local = datetime.fromtimestamp(ts, self.tz)
        if self.building_type != "dorm":
            like = self.closed_like(local) if self.closed_like is not None else None
            if like is None and self.working_weekend is not None and self.working_weekend(local.date()):
                like = datetime.combine(WEDNESDAY, local.time())
            if like is not None:
                jitter = 1.0 + self.noise * (self._rng.random() * 2 - 1)
                return (
                    max(0.0, self.peak * shape(self.kind, self.building_type, like) * jitter)
                    + self.extra_load
                )
        if self.holiday_like is None or self.building_type == "dorm" or not self.holiday_like(local.date()):
            return super().rate_at(ts)
        as_weekend = datetime.combine(SATURDAY, local.time())
        base = self.peak * shape(self.kind, self.building_type, as_weekend)
        jitter = 1.0 + self.noise * (self._rng.random() * 2 - 1)
        return max(0.0, base * jitter) + self.extra_load


def _monday_before(ts: int, tz: ZoneInfo, min_days: int) -> date:
    d = datetime.fromtimestamp(ts, tz).date() - timedelta(days=min_days)
    return d - timedelta(days=d.weekday())


def _local(d: date, tz: ZoneInfo, hours: float = 0.0) -> int:
    return int(datetime.combine(d, datetime.min.time(), tzinfo=tz).timestamp() + hours * HOUR)


def campus_week(week_start: date, tz_name: str = "Asia/Shanghai") -> Scenario:
    """The standard week: seven kinds of waste in five buildings, three quiet buildings."""
    tz = ZoneInfo(tz_name)
    W = week_start
    assert W.weekday() == 0, "the event week starts on a Monday"

    def at(day: float, hours: float = 0.0) -> int:
        return _local(W + timedelta(days=int(day)), tz, hours + (day - int(day)) * 24)

    buildings = [
        ("dorm-1", "dorm", 6000, 480),
        ("dorm-2", "dorm", 5000, 400),
        ("teach-1", "classroom", 9000, 0),
        ("teach-2", "classroom", 6000, 0),
        ("teach-3", "classroom", 7000, 0),
        ("lab-1", "lab", 8000, 100),
        ("canteen-1", "canteen", 1500, 40),
        ("admin-1", "office", 3000, 80),
    ]
    meters: list[dict[str, Any]] = []
    for bid, _t, _a, _o in buildings:
        meters.append({"id": f"e-{bid}", "building": bid, "kind": "electricity", "category": "01000"})
        meters.append({"id": f"w-{bid}", "building": bid, "kind": "water", "category": "02000"})
    meters.append(
        {
            "id": "w-teach-1-wc",
            "building": "teach-1",
            "kind": "water",
            "category": "02000",
            "parent": "w-teach-1",
        }
    )
    for bid, room in (("dorm-1", "301"), ("dorm-1", "302"), ("dorm-2", "101"), ("dorm-2", "102")):
        meters.append(
            {
                "id": f"e-{bid}-r{room}",
                "building": bid,
                "kind": "electricity",
                "category": "01A10",
                "room": f"{bid}-{room}",
                "interval_s": ROOM_INTERVAL_S,
                "rated_current_a": 10,
            }
        )
    config: dict[str, Any] = {
        "site": {"name": "Scenario campus", "timezone": tz_name},
        "buildings": [
            {"id": b, "name": b.replace("-", " ").title(), "type": t, "floor_area_m2": a, "occupants": o}
            for b, t, a, o in buildings
        ],
        "meters": meters,
        "accounting": {
            "calendar": {
                "terms": [
                    {
                        "name": "autumn term",
                        "start": (W - timedelta(days=90)).isoformat(),
                        "end": (W + timedelta(days=4)).isoformat(),
                    }
                ],
                "opening_hours": {"classroom": {"term": ["07:00-22:00"], "vacation": []}},
            },
        },
        "alerts": {"cost": {"currency": "CNY", "electricity_per_kwh": 0.6, "water_per_m3": 4.1}},
    }
    end = at(9)
    events = [
        WasteEvent(
            "night leak in the lab building",
            "w-lab-1",
            0.25,
            at(1, 22),
            at(3, 10),
            ("leak.night_flow",),
            at(2, 7),
            ("w-lab-1",),
            # Water flowing in the empty lab at night is also after-hours use.
            ("leak.continuous_flow", "spike.baseline", "leak.balance", "after_hours.water"),
        ),
        WasteEvent(
            "running toilet in teaching building 1",
            "w-teach-1-wc",
            0.03,
            at(2, 14),
            end,
            ("leak.continuous_flow", "leak.night_flow"),
            at(3, 16),
            ("w-teach-1-wc", "w-teach-1"),
            ("leak.balance",),
            mirror=("w-teach-1",),
        ),
        WasteEvent(
            "lights left on over the weekend in teaching building 2",
            "e-teach-2",
            15000.0,
            at(4, 18),
            at(7, 7),
            ("after_hours.usage",),
            at(5, 6),
            ("e-teach-2",),
            ("after_hours.baseload_creep",),
        ),
        WasteEvent(
            "air conditioning on in empty teaching building 1 during the vacation",
            "e-teach-1",
            40000.0,
            at(7, 9),
            at(8, 18),
            ("after_hours.usage",),
            at(7, 14),
            ("e-teach-1",),
            ("after_hours.baseload_creep", "spike.baseline"),
        ),
        WasteEvent(
            "kettle in dorm room 301",
            "e-dorm-1-r301",
            1800.0,
            at(2, 21.5),
            at(2, 21.5) + 240,
            ("dorm.high_power",),
            at(2, 21.5) + 30 + ROOM_INTERVAL_S + 1,
            ("dorm-1-301",),
            ("dorm.over_cap",),
        ),
        WasteEvent(
            "canteen kitchen equipment left running: daily quota overrun",
            "e-canteen-1",
            30000.0,
            at(3, 6),
            at(4),
            ("quota.exceeded",),
            at(4, 1),
            ("canteen-1", "e-canteen-1"),
            ("quota.forecast", "spike.baseline", "after_hours.usage", "after_hours.baseload_creep"),
        ),
        WasteEvent(
            "lab electricity meter offline",
            "e-lab-1",
            0.0,
            at(4, 10),
            at(5, 12),
            ("data.offline",),
            at(4, 12),
            ("e-lab-1",),
            ("data.completeness",),
            offline=True,
        ),
    ]
    scn = Scenario(
        "campus-week",
        "seven labelled waste events in one simulated week, three quiet buildings",
        at(0),
        config,
        events,
        ["dorm-2", "teach-3", "admin-1"],
        end,
    )
    scn.targets = [quota_target(scn)]
    return scn


def quiet_month(week_start: date, tz_name: str = "Asia/Shanghai") -> Scenario:
    """No events at all: four weeks of the same campus, for the false-alarm rate."""
    scn = campus_week(week_start, tz_name)
    return Scenario(
        "quiet-month",
        "the campus-week campus for four weeks with no waste events",
        scn.week_start,
        scn.config,
        [],
        [b["id"] for b in scn.config["buildings"]],
        scn.week_start + 28 * DAY,
        targets=[quota_target(scn)],
    )


def term_end(week_start: date, tz_name: str = "Asia/Shanghai") -> Scenario:
    """Three weeks across the end of a term: a make-up workday, a public holiday, the summer vacation.

    Three kinds of waste the rules once missed: taps left running in the canteen from closing until
    03:00 on three nights, air conditioning in a lab closed on a public holiday with no earlier
    holiday in the data, and a gateway with five meters going silent for 8 hours. Four buildings
    stay quiet, among them a library that is open at weekends and closed on the holiday.
    """
    tz = ZoneInfo(tz_name)
    W = week_start
    assert W.weekday() == 0, "the first week starts on a Monday"

    def at(day: float, hours: float = 0.0) -> int:
        return _local(W + timedelta(days=int(day)), tz, hours + (day - int(day)) * 24)

    makeup = W + timedelta(days=6)  # Sunday of week 1, worked in exchange for the holiday
    holiday = W + timedelta(days=7)  # Monday of week 2
    vacation = (W + timedelta(days=14), W + timedelta(days=60))  # summer vacation from week 3
    buildings = [
        ("canteen-1", "canteen", 1500, 40),
        ("lab-1", "lab", 800, 40),
        ("teach-1", "classroom", 6000, 0),
        ("teach-2", "classroom", 5000, 0),
        ("lib-1", "library", 4000, 40),
        ("admin-1", "office", 3000, 80),
        ("dorm-1", "dorm", 6000, 480),
    ]
    meters: list[dict[str, Any]] = []
    for bid, _t, _a, _o in buildings:
        gw = f"gw-{bid}"
        meters.append(
            {"id": f"e-{bid}", "building": bid, "kind": "electricity", "category": "01000", "gateway": gw}
        )
        meters.append(
            {"id": f"w-{bid}", "building": bid, "kind": "water", "category": "02000", "gateway": gw}
        )
    # Teaching building 1: five meters behind one gateway.
    meters += [
        {
            "id": "e-teach-1-ac",
            "building": "teach-1",
            "kind": "electricity",
            "category": "01B00",
            "gateway": "gw-teach-1",
        },
        {
            "id": "e-teach-1-light",
            "building": "teach-1",
            "kind": "electricity",
            "category": "01A00",
            "gateway": "gw-teach-1",
        },
        {
            "id": "w-teach-1-wc",
            "building": "teach-1",
            "kind": "water",
            "category": "02000",
            "parent": "w-teach-1",
            "gateway": "gw-teach-1",
        },
    ]
    config: dict[str, Any] = {
        "site": {"name": "Term-end campus", "timezone": tz_name},
        "buildings": [
            {"id": b, "name": b.replace("-", " ").title(), "type": t, "floor_area_m2": a, "occupants": o}
            for b, t, a, o in buildings
        ],
        "gateways": [
            {"id": f"gw-{b}", "name": f"{b.replace('-', ' ').title()} gateway", "building": b}
            for b, *_r in buildings
        ],
        "meters": meters,
        "accounting": {
            "calendar": {
                "terms": [
                    {
                        "name": "spring term",
                        "start": (W - timedelta(days=120)).isoformat(),
                        "end": (W + timedelta(days=11)).isoformat(),
                    }
                ],
                "vacations": [
                    {
                        "name": "summer vacation",
                        "start": vacation[0].isoformat(),
                        "end": vacation[1].isoformat(),
                    }
                ],
                "holidays": [{"name": "public holiday", "date": holiday.isoformat()}],
                "workdays": [makeup.isoformat()],
                # The simulator runs a weekend day in the vacation: the library keeps its weekend hours
                # then, and closes on the public holiday.
                "opening_hours": {
                    "library": {
                        "term": ["07:30-22:30"],
                        "vacation": ["08:00-22:00"],
                        "weekend": ["08:00-22:00"],
                        "holiday": [],
                    }
                },
            },
        },
        "alerts": {"cost": {"currency": "CNY", "electricity_per_kwh": 0.6, "water_per_m3": 4.1}},
    }
    nights = [(at(d, 20.5), at(d + 1, 3)) for d in (1, 2, 3)]  # Tuesday to Thursday of week 1
    teach_1 = [m["id"] for m in meters if m.get("gateway") == "gw-teach-1"]
    events = [
        WasteEvent(
            "canteen water running after closing until 03:00 on three nights",
            "w-canteen-1",
            0.5,
            nights[0][0],
            nights[-1][1],
            ("after_hours.water",),
            nights[0][0] + 6 * HOUR,
            ("w-canteen-1",),
            spans=tuple(nights),
        ),
        WasteEvent(
            "air conditioning in the lab, closed on the public holiday",
            "e-lab-1",
            20000.0,
            at(7, 8),
            at(7, 20),
            ("after_hours.usage",),
            at(7, 13),
            ("e-lab-1",),
            ("after_hours.baseload_creep", "spike.baseline"),
        ),
        WasteEvent(
            "gateway of teaching building 1 silent for 8 hours",
            teach_1[0],
            0.0,
            at(16, 9),
            at(16, 17),
            ("data.gateway_offline",),
            at(16, 11),
            ("gw-teach-1",),
            ("data.completeness", "data.offline"),
            offline=True,
            mirror=tuple(teach_1[1:]),
        ),
    ]
    return Scenario(
        "term-end",
        "three weeks across the end of a term (make-up workday, public holiday, summer vacation): "
        "water running after closing, a closed holiday's air conditioning, a gateway outage",
        at(0),
        config,
        events,
        ["teach-2", "lib-1", "admin-1", "dorm-1"],
        at(21),
        calendar_days=True,
    )


SCENARIOS: dict[str, Callable[[date, str], Scenario]] = {
    "campus-week": campus_week,
    "quiet-month": quiet_month,
    "term-end": term_end,
}


def make(
    name: str, week_start: date | None = None, now: int | None = None, tz_name: str = "Asia/Shanghai"
) -> Scenario:
    """A scenario by name; by default its event week starts on the Monday at least ten days before ``now``."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    if week_start is None:
        import time

        days = 10 if name == "campus-week" else 30
        week_start = _monday_before(int(now if now is not None else time.time()), ZoneInfo(tz_name), days)
    return SCENARIOS[name](week_start, tz_name)


# -- generation ----------------------------------------------------------------------------------------------


def sim_meters(scn: Scenario, cfg: CampusConfig) -> list[ScenarioMeter]:
    from api.accounting.settings import calendar_for

    cal = calendar_for(cfg)

    def holiday_like(d: date) -> bool:
        return cal.day_kind(d) in ("vacation", "holiday")

    out = []
    for m in cfg.meters:
        b = cfg.building(m.building)
        assert b is not None
        if m.room is not None:
            peak, start = ROOM_PEAK_W, scn.week_start - DAY
        else:
            share = 0.3 if m.parent else 1.0
            peak, start = peak_for(m.kind, b.type, b.floor_area_m2, b.occupants, share), scn.history_start
        reg0 = 1000.0 + (sum(map(ord, m.id)) % 500) if m.kind is MeterKind.ELECTRICITY else 100.0
        sm = ScenarioMeter(m.id, m.kind, b.type, peak, cfg.site.tz, scn.seed, start=reg0)
        sm.holiday_like = holiday_like
        if scn.calendar_days:
            sm.closed_like = _closed_holiday(cal, b)
            sm.working_weekend = lambda d: d.weekday() >= 5 and cal.day_kind(d) == "term"
        sm.room_start = start
        out.append(sm)
    return out


def readings(
    scn: Scenario, cfg: CampusConfig, step_s: int = ROOM_INTERVAL_S
) -> Iterator[tuple[int, list[Reading]]]:
    """(ts, readings sent at ts) in time order, events applied, outages withheld."""
    meters = sim_meters(scn, cfg)
    intervals = {m.id: m.interval_s for m in cfg.meters}
    extra_of: dict[str, list[WasteEvent]] = {}
    for e in scn.events:
        for mid in (e.meter, *e.mirror):
            extra_of.setdefault(mid, []).append(e)
    t = scn.history_start
    while t <= scn.end:
        batch: list[Reading] = []
        for sm in meters:
            if t < sm.room_start or t % intervals[sm.id]:
                continue
            evs = extra_of.get(sm.id, ())
            sm.extra_load = sum(e.extra for e in evs if e.active(t) and not e.offline)
            rs = sm.readings(t)
            if any(e.offline and e.active(t) for e in evs):
                continue
            batch.extend(rs)
        if batch:
            yield t, batch
        t += step_s


def _closed_holiday(cal: Any, b: Any) -> Callable[[datetime], datetime | None]:
    """A holiday borrows a Saturday's load; a building open at weekends but closed on the holiday
    keeps the Saturday's closed hours and rests at the Saturday's night load in its open hours."""
    weekend = cal.hours_for(b.type).weekend

    def like(local: datetime) -> datetime | None:
        if not weekend or cal.day_kind(local.date()) != "holiday" or cal.opening_hours_on(b, local.date()):
            return None
        sat = datetime.combine(SATURDAY, local.time())
        return sat.replace(hour=3) if cal.is_occupied(b, sat) else sat

    return like


def quota_target(scn: Scenario) -> dict[str, Any]:
    """A daily electricity quota for the canteen 5 % above its busiest clean day (so only the event breaks it)."""
    cfg = scn.campus()
    clean = Scenario(scn.name, "", scn.week_start, scn.config, [], [], scn.week_start + 7 * DAY, scn.seed)
    tz = cfg.site.tz
    per_day: dict[date, list[float]] = {}
    for _t, batch in readings(clean, cfg, MAIN_INTERVAL_S):
        for r in batch:
            if r.meter == "e-canteen-1" and r.quantity == "energy_kwh":
                per_day.setdefault(datetime.fromtimestamp(r.ts, tz).date(), []).append(r.value)
    days = sorted(per_day)[1:-1]
    used = [max(per_day[d]) - min(per_day[d]) for d in days]
    return {
        "name": "canteen daily electricity quota",
        "scope": "building",
        "scope_id": "canteen-1",
        "kind": "electricity",
        "type": "quota",
        "period": "day",
        "value": round(1.05 * max(used) * 96 / 95, 1),
    }


def write(
    scn: Scenario,
    cfg: CampusConfig,
    store: Any,
    batch_lines: int = 5000,
    progress: Callable[[int], None] | None = None,
    since: int | None = None,
    until: int | None = None,
) -> int:
    """Write the scenario (the readings taken in ``[since, until)``, default all) into InfluxDB;
    returns the number of readings."""
    buf: list[Reading] = []
    n = 0
    for t, batch in readings(scn, cfg):
        if (since is not None and t < since) or (until is not None and t >= until):
            continue
        buf.extend(batch)
        if len(buf) >= batch_lines:
            _store(store, buf)
            n += len(buf)
            buf = []
            if progress is not None:
                progress(t)
    if buf:
        _store(store, buf)
        n += len(buf)
    return n


def _store(store: Any, buf: list[Reading]) -> None:
    out = store.write(buf)
    if out.rejected:
        raise RuntimeError(f"InfluxDB refused {len(out.rejected)} scenario readings: {out.rejected[0][1]}")


def publish(
    scn: Scenario,
    cfg: CampusConfig,
    host: str,
    port: int,
    client_id: str = "campusmon-scenario",
    until: int | None = None,
    since: int | None = None,
    meters: set[str] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> int:
    """Send the scenario over MQTT as the meters would (SenML per meter per reading); returns messages sent."""
    from campusmon.wire import METER_TOPIC, encode_senml
    from firmware_sim.mqtt_meters import BackpressurePublisher

    pub = BackpressurePublisher(host, port, client_id)
    n = 0
    try:
        for t, batch in readings(scn, cfg):
            if until is not None and t > until:
                break
            if since is not None and t < since:
                continue
            by_meter: dict[str, list[Reading]] = {}
            for r in batch:
                if meters is None or r.meter in meters:
                    by_meter.setdefault(r.meter, []).append(r)
            for mid, rs in by_meter.items():
                pub.publish(METER_TOPIC.format(meter_id=mid), encode_senml(rs))
                n += 1
            if on_step is not None:
                on_step(t)
    finally:
        pub.close()
    return n


def install_targets(scn: Scenario, cfg: CampusConfig, sessions: Any) -> list[int]:
    """Put the scenario's quotas into the accounting targets table (replacing same-named ones)."""
    from api.accounting import target_repo
    from api.accounting.targets import validate_spec

    ids = []
    with sessions() as s:
        for t in target_repo.all_targets(s):
            if t.name in {x["name"] for x in scn.targets}:
                target_repo.delete(s, t.id, "scenario")
        for spec in scn.targets:
            ids.append(target_repo.create(s, validate_spec(spec, cfg), "scenario")["id"])
    return ids


# -- scoring -------------------------------------------------------------------------------------------------


@dataclass
class Scorecard:
    detected: dict[str, dict[str, Any]] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    false_alerts: list[dict[str, Any]] = field(default_factory=list)  # on quiet buildings
    unexplained: list[dict[str, Any]] = field(default_factory=list)  # in event buildings, matching no event
    clean_meter_days: float = 0.0

    @property
    def recall(self) -> float:
        total = len(self.detected) + len(self.missed)
        return len(self.detected) / total if total else 1.0

    @property
    def false_per_1000_meter_days(self) -> float:
        return 1000 * len(self.false_alerts) / self.clean_meter_days if self.clean_meter_days else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "recall": self.recall,
            "detected": self.detected,
            "missed": self.missed,
            "late": self.late,
            "false_alerts": len(self.false_alerts),
            "unexplained": len(self.unexplained),
            "clean_meter_days": self.clean_meter_days,
            "false_per_1000_meter_days": round(self.false_per_1000_meter_days, 3),
        }


def _ts(iso: str | None) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else 0


def labels(scn: Scenario, cfg: CampusConfig, grace_h: float = 24) -> dict[str, Any]:
    """The scenario's events as a campus would label them, for ``--labels`` (docs/alerts.md#labelled-incidents)."""
    tz = cfg.site.tz
    out = []
    for e in scn.events:
        m = cfg.meter(e.meter)
        assert m is not None
        where = {"meter": e.meter} if e.subjects == (e.meter,) else {"building": m.building}
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
    return {"grace_h": grace_h, "incidents": out}


def score(
    scn: Scenario,
    cfg: CampusConfig,
    alerts: Sequence[dict[str, Any]],
    start: int,
    end: int,
    grace_s: int = DAY,
) -> Scorecard:
    """Match alerts (JSON as the API returns them) to the scenario's events."""
    card = Scorecard()
    for e in scn.events:
        hits = sorted(
            (
                a
                for a in alerts
                if a["rule"] in e.rules
                and a["subject"]["id"] in e.subjects
                and e.start <= _ts(a["first_seen"]) <= e.end + grace_s
            ),
            key=lambda a: _ts(a["first_seen"]),
        )
        if not hits:
            card.missed.append(e.name)
            continue
        first = hits[0]
        seen = _ts(first["first_seen"])
        card.detected[e.name] = {
            "alert": first["id"],
            "rule": first["rule"],
            "delay_s": seen - e.start,
            "on_time": seen <= e.detect_by,
        }
        if seen > e.detect_by:
            card.late.append(e.name)
    quiet = set(scn.quiet_buildings)
    for a in alerts:
        seen = _ts(a["first_seen"])
        if any(e.related(a["rule"], a["subject"]["id"], seen, grace_s) for e in scn.events):
            continue
        (card.false_alerts if a["building"] in quiet else card.unexplained).append(a)
    n_quiet = sum(1 for m in cfg.meters if m.building in quiet)
    card.clean_meter_days = n_quiet * (end - start) / DAY
    return card


# -- live replay ---------------------------------------------------------------------------------------------


def replay_live(
    scn: Scenario,
    cfg: CampusConfig,
    influx: Any,
    sessions: Any,
    speed: float = 3600.0,
    step_s: int = 900,
    on_pass: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> int:
    """Play the event week into the live alert store at ``speed`` simulated seconds per second.

    Readings must already be in InfluxDB (``write`` or ``publish``); instant rules see them in time
    order and window rules run every ``step_s`` of simulated time, so alerts appear in the live
    feed (and its SSE stream and notifications) as they would have during the week.
    """
    import time

    from api.alerts.config import alerts_config
    from api.alerts.instant import InstantRules
    from api.alerts.store import AlertStore
    from api.alerts.window import WindowEvaluator

    acfg = alerts_config(cfg)
    sim_now = [float(scn.week_start)]
    store = AlertStore(cfg, acfg, sessions, clock=lambda: sim_now[0])
    window = WindowEvaluator(cfg, influx, sessions, store=store, acfg=acfg, clock=lambda: sim_now[0])
    instant = InstantRules(cfg, store=store, acfg=acfg, clock=lambda: sim_now[0])
    pending: list[Reading] = []
    n = 0
    started = time.monotonic()
    watched = {m.id for m in cfg.meters if m.room is not None or m.rated_current_a is not None}
    next_pass = scn.week_start + step_s
    for t, batch in readings(scn, cfg):
        if t < scn.week_start:
            continue
        pending.extend(r for r in batch if r.meter in watched)
        if t < next_pass and t < scn.end:
            continue
        sim_now[0] = float(t)
        events = instant.on_readings(pending)
        pending = []
        events += window.run(now=t)
        n += len(events)
        if on_pass is not None:
            on_pass(t, events)
        next_pass = t + step_s
        lag = (t - scn.week_start) / speed - (time.monotonic() - started)
        if lag > 0:
            time.sleep(lag)
    return n


# -- command line --------------------------------------------------------------------------------------------


def sim_scenario(
    list_: bool = typer.Option(False, "--list", help="list the scenarios"),
    run: str | None = typer.Option(None, "--run", help="scenario to run"),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="campus.yaml whose InfluxDB, MQTT and database to use"
    ),
    week_start: str | None = typer.Option(
        None, help="Monday of the event week (default: at least 10 days ago)"
    ),
    via: str = typer.Option(
        "direct", help="direct (write to InfluxDB) or mqtt (publish; a collector must run)"
    ),
    write_config: Path | None = typer.Option(
        None, help="write the scenario campus config here (for the API/collector)"
    ),
    backtest: bool = typer.Option(True, help="backtest the week and print a scorecard"),
    commit: bool = typer.Option(False, help="put the backtest's alerts into the live feed"),
    live: bool = typer.Option(False, help="replay the week into the live feed in accelerated time"),
    speed: float = typer.Option(3600.0, help="--live: simulated seconds per real second"),
) -> None:
    """Simulated campus weeks with labelled waste events: --list, or --run NAME."""
    import json
    import os

    if list_ or not run:
        for name, fn in SCENARIOS.items():
            scn = fn(date(2025, 11, 3), "Asia/Shanghai")
            typer.echo(f"{name}: {scn.description}")
            for e in scn.events:
                typer.echo(f"  - {e.name} ({e.meter}; caught by {' or '.join(e.rules)})")
        return
    from campusmon.config import ConfigError, read_yaml

    base: dict[str, Any] = {}
    try:
        if config is not None or os.environ.get("CAMPUSMON_CONFIG"):
            base = read_yaml(Path(config or os.environ["CAMPUSMON_CONFIG"])) or {}
        ws = date.fromisoformat(week_start) if week_start else None
        scn = make(run, ws)
        cfg = scn.campus(base, dict(os.environ))
    except (ConfigError, KeyError, ValueError) as e:
        typer.secho(str(e), err=True, fg="red")
        raise typer.Exit(2) from None
    if write_config is not None:
        import yaml

        write_config.write_text(yaml.safe_dump(scn.campus_dict(base), sort_keys=False, allow_unicode=True))
        typer.echo(f"scenario campus config written to {write_config}")
    from campusmon.db import init_db
    from campusmon.influx import StoreUnavailable, open_store

    store = open_store(cfg)
    _engine, sessions = init_db(cfg.database.url)
    tz = cfg.site.tz
    try:
        store.ensure_database()
        if via == "mqtt":
            n = publish(scn, cfg, cfg.mqtt.host, cfg.mqtt.port)
            typer.echo(f"published {n} messages over MQTT to {cfg.mqtt.host}:{cfg.mqtt.port}")
        else:
            n = write(scn, cfg, store)
            typer.echo(f"wrote {n} readings to InfluxDB {cfg.influxdb.url} ({cfg.influxdb.database})")
        install_targets(scn, cfg, sessions)
        typer.echo(f"\n{scn.name}: event week from {datetime.fromtimestamp(scn.week_start, tz):%Y-%m-%d}")
        for e in scn.events:
            typer.echo(
                f"  {datetime.fromtimestamp(e.start, tz):%a %d %H:%M} {e.name}: {e.meter}, "
                f"expect {' or '.join(e.rules)} by {datetime.fromtimestamp(e.detect_by, tz):%a %d %H:%M}"
            )
        if backtest:
            from api.alerts.backtest import backtest as run_backtest

            res = run_backtest(cfg, store, scn.week_start, scn.end, None, None, sessions, commit=commit)
            card = score(scn, cfg, res.alerts, scn.week_start, scn.end)
            typer.echo(
                json.dumps({"backtest": res.summary(), "score": card.as_dict()}, indent=2, default=str)
            )
        if live:
            typer.echo(f"replaying the week into the live feed at x{speed:g} ...")
            total = replay_live(
                scn,
                cfg,
                store,
                sessions,
                speed,
                on_pass=lambda t, evs: [
                    typer.echo(
                        f"  {datetime.fromtimestamp(t, tz):%a %H:%M} {e['type']} {e['alert']['title']}"
                    )
                    for e in evs
                ],
            )
            typer.echo(f"{total} alert events")
    except StoreUnavailable as e:
        typer.secho(f"InfluxDB unavailable: {e}", err=True, fg="red")
        raise typer.Exit(1) from None
    finally:
        store.close()
