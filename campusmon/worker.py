"""The scheduled work of the system (window-rule passes, hourly rollups, notification delivery).

It runs in ``campusmon worker`` processes, or inside the API when ``api.run_jobs`` says so (the
single-node SQLite install). Which process runs which unit is decided by
:mod:`campusmon.coordination`: each job here first asks whether this process holds its unit.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from campusmon.config import CampusConfig
from campusmon.coordination import (
    DELIVER_UNIT,
    OTHER_CHANNELS,
    ROLLUP_UNIT,
    WINDOW_UNIT,
    Coordinator,
    SharedStateRefused,
    rollup_units,
    run_ticks,
    shard_of,
)
from campusmon.influx import QueryError, StoreUnavailable

log = logging.getLogger(__name__)


def rollups_module() -> Any | None:
    """``campusmon.rollups`` when this installation has it."""
    try:
        return importlib.import_module("campusmon.rollups")
    except ModuleNotFoundError as e:
        if e.name != "campusmon.rollups":
            raise
        return None


def configured_channels(acfg: Any) -> list[str]:
    s = acfg.settings
    out = [f"webhook:{w.name}" for w in s.webhooks]
    if s.smtp is not None:
        out.append("smtp")
    if s.mqtt.enabled:
        out.append("mqtt")
    return out


def units_for(cfg: CampusConfig, acfg: Any) -> list[str]:
    """Every unit of scheduled work this configuration has."""
    units = [DELIVER_UNIT + c for c in configured_channels(acfg)] + [OTHER_CHANNELS]
    if acfg.settings.enabled:
        units.append(WINDOW_UNIT)
    if rollups_module() is not None:
        units += rollup_units(cfg.worker.rollup_shards)
    return units


def shard_meters(cfg: CampusConfig, unit: str) -> list[str]:
    """The meters of one rollup shard: a stable hash of the meter id, the same in every process."""
    k, n = shard_of(unit)
    return [m.id for m in cfg.meters if zlib.crc32(m.id.encode()) % n == k]


class ScheduledJobs:
    """The job bodies, shared by the worker and the API's scheduler; each runs only under its lease."""

    def __init__(self, cfg: CampusConfig, influx: Any, sessions: Any, services: Any) -> None:
        self.cfg = cfg
        self.influx = influx
        self.sessions = sessions
        self.svc = services  # api.alerts.scheduler.AlertServices
        self.coord: Coordinator | None = None
        self._window_epoch: int | None = None
        self._rollups: Any = None
        self.passes = 0
        self.delivered = 0

    def attach(self, coord: Coordinator) -> None:
        self.coord = coord

    def _holds(self, unit: str) -> bool:
        return self.coord is not None and self.coord.holds(unit)

    def window_pass(self) -> list[dict[str, Any]]:
        if self.coord is None or not self.svc.acfg.settings.enabled or not self._holds(WINDOW_UNIT):
            return []
        epoch = self.coord.epoch(WINDOW_UNIT)
        if epoch != self._window_epoch:
            self._take_over_window(first=self._window_epoch is None)
            self._window_epoch = epoch
        try:
            events = self.svc.evaluator.run()
        except (StoreUnavailable, QueryError) as e:
            log.warning("window rules skipped this pass: InfluxDB: %s", e)
            return []
        self.passes += 1
        if events:
            log.info("window rules: %d alert event(s)", len(events))
        return events

    def _take_over_window(self, first: bool) -> None:
        """Another process may have judged while this one did not hold the unit: start from the database.

        Alerts opened or cleared elsewhere, rule state and the judged-until mark are re-read; the
        readings cache is dropped unless nothing was ever read into it.
        """
        from api.alerts.window import WindowEvaluator

        if self.coord is None or self.coord.backend == "sqlite":
            return  # the only job runner of its store: nobody else changed anything
        self.svc.store.load()
        if not first:
            self.svc.evaluator = WindowEvaluator(
                self.cfg, self.influx, self.sessions, store=self.svc.store, acfg=self.svc.acfg
            )

    def deliver(self) -> int:
        if self.coord is None:
            return 0
        held = self.coord.held()
        mine = [
            u.removeprefix(DELIVER_UNIT) for u in held if u.startswith(DELIVER_UNIT) and u != OTHER_CHANNELS
        ]
        n = 0

        def still_mine(ch: str) -> bool:
            unit = DELIVER_UNIT + ch
            return self._holds(unit if unit in self.coord.units else OTHER_CHANNELS)  # type: ignore[union-attr]

        if mine:
            n += self.svc.dispatcher.run_once(channels=mine, still_mine=still_mine)
        if OTHER_CHANNELS in held:
            known = configured_channels(self.svc.acfg)
            n += self.svc.dispatcher.run_once(exclude=known, still_mine=still_mine)
        self.delivered += n
        return n

    def rollups(self) -> int:
        mod = rollups_module()
        if mod is None or self.coord is None:
            return 0
        if self._rollups is None:
            self._rollups = mod.RollupMaintainer(self.cfg, self.influx, self.sessions)
        done = 0
        for unit in sorted(self.coord.held()):
            if not unit.startswith(ROLLUP_UNIT) or not self._holds(unit):
                continue
            meters = shard_meters(self.cfg, unit)
            if not meters:
                continue
            try:
                self._rollups.pass_once(meters=meters)
                done += 1
            except (StoreUnavailable, QueryError) as e:
                log.warning("rollups of %s skipped this pass: InfluxDB: %s", unit, e)
        return done


def _every(
    name: str, period: Callable[[], float], body: Callable[[], object], stop: threading.Event, first: float
) -> threading.Thread:
    """Run ``body`` every ``period()`` seconds until ``stop``; an exception is logged, never fatal."""

    def loop() -> None:
        if stop.wait(first):
            return
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                body()
            except Exception:
                log.exception("scheduled job %s failed", name)
            if stop.wait(max(0.05, period() - (time.monotonic() - t0))):
                return

    t = threading.Thread(target=loop, name=f"job-{name}", daemon=True)
    t.start()
    return t


class Worker:
    """One ``campusmon worker`` process: lease ticks and one thread per job."""

    def __init__(self, cfg: CampusConfig, worker_id: str | None = None) -> None:
        from api.alerts.config import alerts_config
        from api.alerts.instant import InstantRules
        from api.alerts.notify.dispatcher import Dispatcher
        from api.alerts.scheduler import AlertServices, EventBus, _load_targets
        from api.alerts.store import AlertStore
        from api.alerts.window import WindowEvaluator
        from campusmon.db import init_db
        from campusmon.influx import open_store

        self.cfg = cfg
        self.engine, self.sessions = init_db(cfg.database.url)
        self.influx = open_store(cfg)
        acfg = alerts_config(cfg)
        store = AlertStore(cfg, acfg, self.sessions)
        self.services = AlertServices(
            acfg=acfg,
            store=store,
            dispatcher=Dispatcher(cfg, acfg, self.sessions),
            evaluator=WindowEvaluator(cfg, self.influx, self.sessions, store=store, acfg=acfg),
            instant=InstantRules(cfg, store=store, acfg=acfg),
            bus=EventBus(),
        )
        _load_targets(cfg, self.sessions)
        self.jobs = ScheduledJobs(cfg, self.influx, self.sessions, self.services)
        self.coord = Coordinator(
            cfg,
            self.engine,
            self.sessions,
            units_for(cfg, acfg),
            role="worker",
            worker_id=worker_id,
        )
        self.jobs.attach(self.coord)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> Worker:
        """Join the leases (SQLite: take the store's job lock, or raise SharedStateRefused)."""
        self.coord.start()
        st = self.services.acfg.settings
        if self.coord.backend == "postgresql":
            self.threads.append(run_ticks(self.coord, self.stop))
        self.threads.append(
            _every("window", lambda: st.schedule.interval_s, self.jobs.window_pass, self.stop, 0.0)
        )
        self.threads.append(_every("deliver", lambda: st.delivery.poll_s, self.jobs.deliver, self.stop, 0.0))
        if rollups_module() is not None:
            self.threads.append(
                _every(
                    "rollups", lambda: self.cfg.worker.rollup_interval_s, self.jobs.rollups, self.stop, 1.0
                )
            )
        log.info(
            "worker %s started (%s): units %s; lease ttl %.0f s, renewed every %.1f s",
            self.coord.name,
            self.coord.backend,
            ", ".join(self.coord.units),
            self.coord.ttl,
            self.coord.renew_s,
        )
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.coord.close()
        self.services.dispatcher.close()
        self.influx.close()
        self.engine.dispose()


def run_worker(cfg: CampusConfig, worker_id: str | None = None) -> None:
    """Run until SIGINT/SIGTERM; exit 2 when the store cannot take another job runner (SQLite)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    w = Worker(cfg, worker_id)
    try:
        w.start()
    except SharedStateRefused as e:
        log.error("worker refused: %s", e)
        w.close()
        raise SystemExit(2) from None
    stop.wait()
    log.info("worker %s stopping", w.coord.name)
    w.close()
    log.info(
        "worker %s stopped (%d window passes, %d deliveries)", w.coord.name, w.jobs.passes, w.jobs.delivered
    )
