"""The alert objects of an API process, and the scheduled jobs when the API runs them itself.

``start_alert_jobs(app)`` is called from the API's lifespan. With ``api.run_jobs`` (auto: on
SQLite) it returns the running scheduler, whose ``shutdown`` also closes what the jobs opened;
otherwise None, and ``campusmon worker`` processes run the jobs (campusmon/worker.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from api.alerts.config import AlertsConfig, alerts_config
from api.alerts.fanout import EventBus
from api.alerts.instant import InstantRules
from api.alerts.notify.dispatcher import Dispatcher
from api.alerts.store import AlertStore
from api.alerts.window import WindowEvaluator
from campusmon.coordination import Coordinator, SharedStateRefused, jobs_in_api
from campusmon.worker import ScheduledJobs, rollups_module, units_for

log = logging.getLogger(__name__)


@dataclass
class AlertServices:
    acfg: AlertsConfig
    store: AlertStore
    dispatcher: Dispatcher
    evaluator: WindowEvaluator
    instant: InstantRules
    bus: EventBus = field(default_factory=EventBus)


def alert_services(app: Any) -> AlertServices:
    """The alert objects of an app, made once (routes work without the scheduler too)."""
    svc = getattr(app.state, "alerts", None)
    if svc is None:
        cfg = app.state.cfg
        acfg = alerts_config(cfg)
        store = AlertStore(cfg, acfg, app.state.sessions)
        bus = EventBus(store, cfg.database.url, cfg.api.sse_poll_s)
        store.listeners.append(bus.notify)
        svc = AlertServices(
            acfg=acfg,
            store=store,
            dispatcher=Dispatcher(cfg, acfg, app.state.sessions),
            evaluator=WindowEvaluator(cfg, app.state.store, app.state.sessions, store=store, acfg=acfg),
            instant=InstantRules(cfg, store=store, acfg=acfg),
            bus=bus,
        )
        app.state.alerts = svc
        _load_targets(cfg, app.state.sessions)
        if not getattr(app.state, "reading_hooks", None) and acfg.settings.enabled:
            app.state.reading_hooks = (svc.instant,)  # HTTP ingest runs the instant rules too
    return svc


def _load_targets(cfg: Any, sessions: Any) -> None:
    """Quotas declared under ``targets:`` in the config go into the targets store at start."""
    import os

    from campusmon.config import ConfigError

    try:
        from api.alerts.targets_config import load_config_targets

        counts = load_config_targets(cfg, sessions, os.environ.get("CAMPUSMON_CONFIG", "campus.yaml"))
    except ImportError:
        return  # no accounting capability, no targets store
    except ConfigError as e:
        log.error("targets in the config not loaded:\n%s", e)
        return
    if any(counts[k] for k in ("created", "updated")):
        log.info("targets from the config: %s", counts)


class AlertScheduler(AsyncIOScheduler):
    services: AlertServices | None = None
    coordinator: Coordinator | None = None

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait=wait)
        if self.coordinator is not None:
            self.coordinator.close()
        if self.services is not None:
            self.services.dispatcher.close()


async def _window_pass(jobs: ScheduledJobs) -> None:
    try:
        await asyncio.to_thread(jobs.window_pass)
    except Exception:
        log.exception("window rule pass failed")


async def _deliver(jobs: ScheduledJobs) -> None:
    try:
        await asyncio.to_thread(jobs.deliver)
    except Exception:
        log.exception("alert delivery run failed")


async def _rollups(jobs: ScheduledJobs) -> None:
    try:
        await asyncio.to_thread(jobs.rollups)
    except Exception:
        log.exception("rollup pass failed")


async def _tick(coord: Coordinator) -> None:
    try:
        await asyncio.to_thread(coord.tick)
    except Exception as e:
        log.warning("lease renewal failed (%s); retrying", e)


def start_alert_jobs(app: Any) -> AlertScheduler | None:
    cfg = app.state.cfg
    if not jobs_in_api(cfg):
        log.info("scheduled jobs are left to `campusmon worker` (api.run_jobs: %s)", cfg.api.run_jobs)
        return None
    svc = alert_services(app)
    jobs = ScheduledJobs(cfg, app.state.store, app.state.sessions, svc)
    coord = Coordinator(cfg, app.state.engine, app.state.sessions, units_for(cfg, svc.acfg), role="API")
    try:
        coord.start()
    except SharedStateRefused as e:
        log.warning("this API runs no scheduled jobs: %s", e)
        return None
    jobs.attach(coord)
    sched = AlertScheduler(
        timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
    )
    sched.services = svc
    sched.coordinator = coord
    st = svc.acfg.settings
    if coord.backend != "sqlite":
        sched.add_job(_tick, IntervalTrigger(seconds=coord.renew_s), args=[coord], id="leases")
    if st.enabled:
        first = datetime.now(UTC) + timedelta(seconds=5)
        sched.add_job(
            _window_pass,
            IntervalTrigger(seconds=st.schedule.interval_s),
            args=[jobs],
            id="alerts.window",
            next_run_time=first,
        )
    sched.add_job(_deliver, IntervalTrigger(seconds=st.delivery.poll_s), args=[jobs], id="alerts.deliver")
    if rollups_module() is not None:
        sched.add_job(
            _rollups,
            IntervalTrigger(seconds=cfg.worker.rollup_interval_s),
            args=[jobs],
            id="rollups",
            next_run_time=datetime.now(UTC) + timedelta(seconds=10),
        )
    sched.start()
    return sched
