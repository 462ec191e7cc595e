"""Background work of the API process: window-rule passes and notification deliveries.

``start_alert_jobs(app)`` is called from the API's lifespan; it returns the running scheduler,
whose ``shutdown`` also closes what the jobs opened.
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
from api.alerts.instant import InstantRules
from api.alerts.notify.dispatcher import Dispatcher
from api.alerts.store import AlertStore
from api.alerts.window import WindowEvaluator
from campusmon.influx import QueryError, StoreUnavailable

log = logging.getLogger(__name__)


class EventBus:
    """Wakes SSE streams of this process as soon as an event is written here (others poll)."""

    def __init__(self) -> None:
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def register(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        w = (asyncio.get_running_loop(), asyncio.Event())
        self._waiters.add(w)
        return w

    def unregister(self, w: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        self._waiters.discard(w)

    def notify(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        for loop, ev in list(self._waiters):
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # the loop has closed
                self._waiters.discard((loop, ev))


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
        bus = EventBus()
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

    def shutdown(self, wait: bool = True) -> None:
        super().shutdown(wait=wait)
        if self.services is not None:
            self.services.dispatcher.close()


async def _window_pass(svc: AlertServices) -> None:
    try:
        events = await asyncio.to_thread(svc.evaluator.run)
        if events:
            log.info("window rules: %d alert event(s)", len(events))
    except (StoreUnavailable, QueryError) as e:
        log.warning("window rules skipped this pass: InfluxDB: %s", e)
    except Exception:
        log.exception("window rule pass failed")


async def _deliver(svc: AlertServices) -> None:
    try:
        await asyncio.to_thread(svc.dispatcher.run_once)
    except Exception:
        log.exception("alert delivery run failed")


def start_alert_jobs(app: Any) -> AlertScheduler:
    svc = alert_services(app)
    sched = AlertScheduler(
        timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60}
    )
    sched.services = svc
    st = svc.acfg.settings
    if st.enabled:
        first = datetime.now(UTC) + timedelta(seconds=5)
        sched.add_job(
            _window_pass,
            IntervalTrigger(seconds=st.schedule.interval_s),
            args=[svc],
            id="alerts.window",
            next_run_time=first,
        )
    sched.add_job(_deliver, IntervalTrigger(seconds=st.delivery.poll_s), args=[svc], id="alerts.deliver")
    sched.start()
    return sched
