"""When to read: poll groups aligned to the wall clock, a daily time sync, periodic status.

Readings of a 15-minute group start at :00, :15, :30, :45 local time, so every gateway on campus
samples the same instants and consumption intervals line up without interpolation. Alignment
comes from an interval trigger anchored at a local midnight: fire times are anchor + k * interval.
APScheduler 3.x (4.x is still a pre-release, docs/references.md#apscheduler); jobs coalesce and
never overlap, and a sweep that overruns its interval is coalesced again by the bus engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from datetime import time as dtime
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

_ANCHOR_DAY = datetime(2020, 1, 1)


def anchor(tz: ZoneInfo) -> datetime:
    """A local midnight in the past: the grid every aligned interval counts from."""
    return _ANCHOR_DAY.replace(tzinfo=tz)


def poll_trigger(interval_s: int, tz: ZoneInfo) -> IntervalTrigger:
    return IntervalTrigger(seconds=interval_s, start_date=anchor(tz), timezone=tz)


def daily_trigger(at: dtime, tz: ZoneInfo) -> CronTrigger:
    return CronTrigger(hour=at.hour, minute=at.minute, second=at.second, timezone=tz)


def next_fire(trigger: IntervalTrigger | CronTrigger, now: datetime) -> datetime:
    """The first fire time at or after ``now``: what the scheduler will use."""
    t = trigger.get_next_fire_time(None, now)
    assert t is not None
    return t


class Scheduler:
    def __init__(self, timezone: str) -> None:
        self.tz = ZoneInfo(timezone)
        self._s = BackgroundScheduler(
            timezone=self.tz,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )

    def add_poll_group(self, name: str, interval_s: int, fire: Callable[[], None]) -> None:
        grace = max(1, min(60, interval_s // 2))
        self._s.add_job(fire, poll_trigger(interval_s, self.tz), id=f"poll:{name}", name=f"poll group {name}",
                        misfire_grace_time=grace)  # fmt: skip

    def add_daily(self, name: str, at: dtime, fire: Callable[[], None]) -> None:
        self._s.add_job(fire, daily_trigger(at, self.tz), id=name, name=name)

    def add_every(self, name: str, seconds: float, fire: Callable[[], None]) -> None:
        self._s.add_job(fire, IntervalTrigger(seconds=seconds, timezone=self.tz), id=name, name=name)

    def start(self) -> None:
        self._s.start()
        for job in self._s.get_jobs():
            log.info("scheduled %s: next at %s", job.name, job.next_run_time)

    def shutdown(self) -> None:
        if self._s.running:
            self._s.shutdown(wait=False)

    def next_run_times(self) -> dict[str, datetime | None]:
        return {j.id: getattr(j, "next_run_time", None) for j in self._s.get_jobs()}
