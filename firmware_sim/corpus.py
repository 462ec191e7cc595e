"""A big clean corpus: 50 meters over 60 days with everything that is not waste, to measure false alerts.

No waste is injected. What it does have, because real campuses have it: weekends, a public-holiday
week with make-up workdays, a vacation, a meter replacement, a 6-hour gateway outage, meters that
rest every night and meters that never rest, irregular reading intervals (300, 600 and 900 s, a
few readings lost) and +-30 s clock jitter. The replacement and the outage are labelled data
incidents (docs/alerts.md#labelled-incidents): alerts about them are right, anything else is a
false alert. The backtest starts when the data starts, so cold start is included.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from campusmon.config import CampusConfig, parse_config
from campusmon.quantities import MeterKind
from campusmon.reading import Reading
from firmware_sim.profiles import SimMeter, peak_for, shape

DAY = 86400
HOUR = 3600
DAYS = 60
JITTER_S = 30
SATURDAY = date(2024, 1, 6)
WEDNESDAY = date(2024, 1, 3)
# (id, type, floor area m2, occupants): 16 buildings, 3 meters each, plus 2 water sub-meters = 50.
BUILDINGS = [
    ("admin-1", "office", 3000, 80),
    ("admin-2", "admin", 2500, 60),
    ("teach-1", "classroom", 9000, 0),
    ("teach-2", "classroom", 6000, 0),
    ("teach-3", "classroom", 7000, 0),
    ("teach-4", "classroom", 5000, 0),
    ("lab-1", "lab", 8000, 100),
    ("lab-2", "lab", 6000, 60),
    ("lib-1", "library", 7000, 50),
    ("canteen-1", "canteen", 1500, 40),
    ("canteen-2", "canteen", 1200, 30),
    ("sports-1", "sports", 4000, 20),
    ("dorm-1", "dorm", 6000, 480),
    ("dorm-2", "dorm", 5000, 400),
    ("dorm-3", "dorm", 5500, 440),
    ("dorm-4", "dorm", 4500, 360),
]
INTERVALS = (900, 600, 300)


@dataclass
class Corpus:
    start: int  # local Monday 00:00: the data and the backtest start here
    config: dict[str, Any]
    labels: dict[str, Any]
    replacement: tuple[str, int]  # meter, when its register restarts
    outage: tuple[str, int, int]  # gateway, start, end
    seed: int = 11
    loss: float = 0.01  # share of readings lost on the way
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + DAYS * DAY

    def campus(self, base: dict[str, Any] | None = None) -> CampusConfig:
        data = {k: v for k, v in (base or {}).items() if k not in ("buildings", "meters", "gateways")}
        data.update(self.config)
        return parse_config(data, "corpus", environ={})


def clean_corpus(first_monday: date, tz_name: str = "Asia/Shanghai") -> Corpus:
    """The corpus starting on ``first_monday``; the holiday week is the 5th, the vacation the last 11 days."""
    assert first_monday.weekday() == 0
    tz = ZoneInfo(tz_name)
    d0 = first_monday

    def at(day: float, hours: float = 0.0) -> int:
        return int(
            datetime.combine(d0 + timedelta(days=int(day)), datetime.min.time(), tzinfo=tz).timestamp()
            + hours * HOUR
        )

    meters: list[dict[str, Any]] = []
    gateways = []
    for n, (bid, _t, _a, _o) in enumerate(BUILDINGS):
        gw = f"gw-{bid}"
        gateways.append({"id": gw, "building": bid})
        iv = INTERVALS[n % 3]
        meters.append(
            {
                "id": f"e-{bid}",
                "building": bid,
                "kind": "electricity",
                "category": "01000",
                "interval_s": iv,
                "gateway": gw,
            }
        )
        meters.append(
            {
                "id": f"w-{bid}",
                "building": bid,
                "kind": "water",
                "category": "02000",
                "interval_s": 900,
                "gateway": gw,
            }
        )
        meters.append(
            {
                "id": f"e-{bid}-hvac",
                "building": bid,
                "kind": "electricity",
                "category": "01000",
                "parent": f"e-{bid}",
                "interval_s": INTERVALS[(n + 1) % 3],
                "gateway": gw,
            }
        )
    for bid in ("teach-1", "dorm-1"):
        meters.append(
            {
                "id": f"w-{bid}-wc",
                "building": bid,
                "kind": "water",
                "category": "02000",
                "parent": f"w-{bid}",
                "gateway": f"gw-{bid}",
            }
        )
    holiday = (d0 + timedelta(days=28), d0 + timedelta(days=34))  # the 5th week, Monday to Sunday
    makeup = [d0 + timedelta(days=26), d0 + timedelta(days=35)]  # the Saturday before, the Sunday after
    vacation = (d0 + timedelta(days=49), d0 + timedelta(days=DAYS + 30))
    config = {
        "site": {"name": "Clean corpus campus", "timezone": tz_name},
        "buildings": [
            {"id": b, "name": b.replace("-", " ").title(), "type": t, "floor_area_m2": a, "occupants": o}
            for b, t, a, o in BUILDINGS
        ],
        "gateways": gateways,
        "meters": meters,
        "accounting": {
            "calendar": {
                "terms": [
                    {
                        "name": "autumn term",
                        "start": (d0 - timedelta(days=20)).isoformat(),
                        "end": (vacation[0] - timedelta(days=1)).isoformat(),
                    }
                ],
                "vacations": [
                    {
                        "name": "winter vacation",
                        "start": vacation[0].isoformat(),
                        "end": vacation[1].isoformat(),
                    }
                ],
                "holidays": [
                    {
                        "name": "national holiday",
                        "start": holiday[0].isoformat(),
                        "end": holiday[1].isoformat(),
                    }
                ],
                "workdays": [d.isoformat() for d in makeup],
                # The simulator runs a weekend day on holidays: the library and the labs, open at
                # weekends, open on holidays too (closed all day, their weekend load would be waste).
                "opening_hours": {
                    "library": {
                        "term": ["07:30-22:30"],
                        "vacation": ["08:00-17:00"],
                        "weekend": ["08:00-22:00"],
                        "holiday": ["08:00-22:00"],
                    },
                    "lab": {
                        "term": ["08:00-22:00"],
                        "vacation": ["08:00-18:00"],
                        "weekend": ["09:00-17:00"],
                        "holiday": ["09:00-17:00"],
                    },
                },
            }
        },
        "alerts": {"cost": {"currency": "CNY", "electricity_per_kwh": 0.6, "water_per_m3": 4.1}},
    }
    replacement = ("e-lab-2", at(20, 10.3))
    outage = ("gw-teach-3", at(38, 9), at(38, 15))
    out_meters = [m["id"] for m in meters if m["gateway"] == outage[0]]
    tzs = lambda ts: datetime.fromtimestamp(ts, tz).isoformat()  # noqa: E731
    incidents = [
        {
            "name": "meter replaced",
            "meter": replacement[0],
            "start": tzs(replacement[1] - HOUR),
            "end": tzs(replacement[1] + HOUR),
            "rules": ["data.counter_backwards"],
        }
    ] + [
        {
            # One gateway, one alert: its meters' own offline alerts are folded into the gateway's.
            "name": f"gateway outage: {outage[0]} ({', '.join(out_meters)})",
            "building": next(g["building"] for g in gateways if g["id"] == outage[0]),
            "start": tzs(outage[1]),
            "end": tzs(outage[2]),
            "rules": ["data.gateway_offline"],
            "also": ["data.offline", "data.completeness"],
        }
    ]
    return Corpus(
        at(0),
        config,
        {"grace_h": 24, "incidents": incidents},
        replacement,
        outage,
        meta={"holiday": holiday, "makeup": makeup, "vacation": vacation},
    )


class CorpusMeter(SimMeter):
    """Runs its building's weekend on holidays and vacation days, and a weekday on make-up workdays."""

    resting: set[date]
    working: set[date]

    def rate_at(self, ts: int) -> float:
        local = datetime.fromtimestamp(ts, self.tz)
        d = local.date()
        if self.building_type == "dorm" or (d not in self.resting and d not in self.working):
            return super().rate_at(ts)
        like = SATURDAY if d in self.resting else WEDNESDAY
        base = self.peak * shape(self.kind, self.building_type, datetime.combine(like, local.time()))
        jitter = 1.0 + self.noise * (self._rng.random() * 2 - 1)
        return max(0.0, base * jitter)


def sim_meters(corpus: Corpus, cfg: CampusConfig) -> list[CorpusMeter]:
    from api.accounting.settings import calendar_for

    cal = calendar_for(cfg)
    days = [
        datetime.fromtimestamp(corpus.start, cfg.site.tz).date() + timedelta(days=i) for i in range(DAYS + 1)
    ]
    resting = {d for d in days if cal.day_kind(d) in ("holiday", "vacation")}
    working = {d for d in days if d.weekday() >= 5 and cal.day_kind(d) == "term"}
    out = []
    for m in cfg.meters:
        b = cfg.building(m.building)
        assert b is not None
        share = 0.3 if m.parent else 1.0
        peak = peak_for(m.kind, b.type, b.floor_area_m2, b.occupants, share)
        reg0 = 1000.0 + (sum(map(ord, m.id)) % 500) if m.kind is MeterKind.ELECTRICITY else 100.0
        sm = CorpusMeter(m.id, m.kind, b.type, peak, cfg.site.tz, corpus.seed, start=reg0)
        sm.resting, sm.working = resting, working
        out.append(sm)
    return out


def readings(corpus: Corpus, cfg: CampusConfig) -> Iterator[Reading]:
    """Every reading of the corpus, meter by meter, with jitter, losses, the replacement and the outage."""
    rng = random.Random(corpus.seed)
    gw_of = {m.id: m.gateway for m in cfg.meters}
    iv_of = {m.id: m.interval_s for m in cfg.meters}
    gw, o_start, o_end = corpus.outage
    for sm in sim_meters(corpus, cfg):
        iv = iv_of[sm.id]
        replaced = False
        for slot in range(corpus.start + iv, corpus.end, iv):
            ts = slot + rng.randint(-JITTER_S, JITTER_S)
            sm.advance(ts)
            if sm.id == corpus.replacement[0] and not replaced and ts >= corpus.replacement[1]:
                sm.register, replaced = 0.0, True  # a new meter starts from zero
            if gw_of[sm.id] == gw and o_start <= ts < o_end:
                continue
            if rng.random() < corpus.loss:
                continue
            yield from sm.readings(ts)


def write(corpus: Corpus, cfg: CampusConfig, store: Any, batch: int = 20000) -> int:
    """Write the corpus into InfluxDB; returns the number of readings."""
    buf: list[Reading] = []
    n = 0
    for r in readings(corpus, cfg):
        buf.append(r)
        if len(buf) >= batch:
            out = store.write(buf)
            if out.rejected:
                raise RuntimeError(f"InfluxDB refused corpus readings: {out.rejected[0][1]}")
            n += len(buf)
            buf = []
    if buf:
        out = store.write(buf)
        if out.rejected:
            raise RuntimeError(f"InfluxDB refused corpus readings: {out.rejected[0][1]}")
        n += len(buf)
    return n
