"""The gateway process: buses read meters into the outbox on schedule; the publisher drains it to MQTT.

``Acquisition`` (buses, outbox, schedule) is shared with the direct serial collector, which drains
the same outbox into InfluxDB instead. Run with ``campusmon gateway --config gateway.yaml`` or
``python -m gateway.service --config gateway.yaml``; SIGTERM or SIGINT stops it cleanly: the bus
finishes its frame, the outbox commits, the broker is told ``offline``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from campusmon.config import ConfigError
from gateway.bus import BusEngine, make_slots
from gateway.config import GatewayConfig, load_gateway_config
from gateway.outbox import Outbox, OutboxBusy
from gateway.protocols.base import MeterDriver
from gateway.publisher import Publisher
from gateway.scheduler import Scheduler

log = logging.getLogger(__name__)

A = TypeVar("A", bound="Acquisition")
DriverFactory = Callable[[str, str, str, dict[str, Any]], MeterDriver]
_WATCH_S = 2.0  # how soon a meter going offline or the outbox dropping shows on the status topic


def default_driver_factory() -> DriverFactory:
    from gateway.protocols.drivers import make_driver

    return make_driver


class Acquisition:
    """Buses, outbox, schedule and /metrics: everything between the meters and whatever forwards readings."""

    def __init__(self, cfg: GatewayConfig, make_driver: DriverFactory | None = None) -> None:
        self.cfg = cfg
        factory = make_driver or default_driver_factory()
        slots = {b.id: self._slots(cfg.source, bi, b, factory) for bi, b in enumerate(cfg.buses)}
        ob = cfg.outbox
        self.outbox = Outbox(
            cfg.outbox_path, ob.max_readings, ob.max_age_days * 86400, ob.warn_fill, ob.synchronous
        )
        self.buses = [BusEngine(b, slots[b.id], self.outbox.put, self._meter_state) for b in cfg.buses]
        self.scheduler = Scheduler(cfg.gateway.timezone)
        self.state_changed = threading.Event()
        self._metrics_server: Any = None
        for name, group in cfg.poll_groups.items():
            if any(m.group == name for _, m in cfg.meters()):
                self.scheduler.add_poll_group(name, group.interval_s, lambda n=name: self.poll_group(n))
        if cfg.time_sync.enabled and self._dlt645_buses():
            self.scheduler.add_daily("time-sync", cfg.time_sync.at, self.time_sync)

    @staticmethod
    def _slots(source: str, bi: int, bus: Any, factory: DriverFactory) -> list[Any]:
        try:
            return make_slots(bus, factory)
        except ValueError as e:  # a bad address or unknown profile: refuse to start half a bus
            raise ConfigError(f"{source}: buses[{bi}].{e}") from None

    def _dlt645_buses(self) -> list[BusEngine]:
        return [b for b in self.buses if any(s.protocol == "dlt645" for s in b.slots.values())]

    def _meter_state(self, meter: str, online: bool, why: str | None) -> None:
        self.state_changed.set()

    def poll_group(self, name: str) -> None:
        for bus in self.buses:
            bus.submit([m.id for m in bus.entry.meters if m.group == name])

    def poll_all(self) -> None:
        for bus in self.buses:
            bus.submit()

    def time_sync(self) -> None:
        """Broadcast the local time to every DL/T 645 meter (08H; no meter answers a broadcast)."""
        from gateway.protocols.dlt645 import encode_time_sync

        for bus in self._dlt645_buses():
            bus.broadcast(lambda: encode_time_sync(datetime.now(self.scheduler.tz)))

    def start(self) -> None:
        self._serve_metrics()
        for bus in self.buses:
            bus.start()
        self.scheduler.start()
        if self.cfg.gateway.poll_on_start:
            self.poll_all()

    def stop_reading(self) -> None:
        """No new polls; each bus finishes the frame it is on."""
        self.scheduler.shutdown()
        for bus in self.buses:
            bus.stop()

    def stop(self) -> None:
        self.stop_reading()
        self.outbox.close()
        self.stop_metrics()

    def _serve_metrics(self) -> None:
        h = self.cfg.health
        if h.prometheus_port and self._metrics_server is None:
            from gateway.health import serve_metrics

            try:
                self._metrics_server = serve_metrics(self.health, h.prometheus_host, h.prometheus_port)
            except OSError as e:  # reading meters matters more than the metrics page
                log.error("cannot serve /metrics on %s:%d: %s", h.prometheus_host, h.prometheus_port, e)

    def stop_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None

    def health(self) -> dict[str, Any]:
        return {
            "gateway": self.cfg.gateway.id,
            "outbox": self.outbox.stats().as_dict(),
            "buses": {b.id: b.health() for b in self.buses},
        }

    def status(self) -> dict[str, Any]:
        """The short form for the retained status topic."""
        buses = {b.id: b.health() for b in self.buses}
        return {
            "outbox": self.outbox.stats().as_dict(),
            "buses": {
                i: {
                    "port_open": h["port_open"],
                    "success_rate": h["success_rate"],
                    "meters_online": h["meters_online"],
                    "meters_offline": len(h["meters_offline"]),
                    "last_sweep_s": h["last_sweep_s"],
                }
                for i, h in buses.items()
            },  # fmt: skip
            "meters_offline": sorted(m for h in buses.values() for m in h["meters_offline"]),
        }


class Gateway(Acquisition):
    """Acquisition plus the MQTT publisher and the status and health topics."""

    def __init__(self, cfg: GatewayConfig, make_driver: DriverFactory | None = None) -> None:
        super().__init__(cfg, make_driver)
        self.publisher = Publisher(cfg.mqtt, cfg.gateway.id, cfg.client_id, self.outbox, self.status)
        self._last_status: tuple[Any, ...] | None = None
        self.scheduler.add_every("status", cfg.mqtt.status_interval_s, self.publisher.publish_status)
        self.scheduler.add_every("health", cfg.health.interval_s, self.publish_health)
        self.scheduler.add_every("watch", _WATCH_S, self._watch)

    def health(self) -> dict[str, Any]:
        return {**super().health(), "mqtt": self.publisher.health()}

    def publish_health(self) -> None:
        h = self.health()
        h.pop("gateway")
        self.publisher.publish_health(h)

    def _watch(self) -> None:
        """Publish the status at once when a meter goes offline, rows are dropped or the outbox warns."""
        st = self.outbox.stats()
        key = (st.dropped_full, st.dropped_expired, st.dropped_unwritable, st.warning, st.write_error is None)
        if self.state_changed.is_set() or key != self._last_status:
            self.state_changed.clear()
            self._last_status = key
            self.publisher.publish_status()

    def start(self) -> None:
        self.publisher.start()
        super().start()

    def stop(self) -> None:
        self.stop_reading()
        self.outbox.flush()
        self.publisher.stop()
        self.outbox.close()
        self.stop_metrics()


def setup_logging(level: str = "INFO") -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per job run is noise


def build_or_exit(config_path: str, make: Callable[[GatewayConfig], A]) -> A:
    """A configuration error (file, drivers) is a message and exit code 2, never a traceback."""
    try:
        return make(load_gateway_config(config_path))
    except ConfigError as e:
        print(f"configuration error:\n{e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OutboxBusy as e:
        print(f"cannot start: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run_until_signalled(service: Acquisition) -> None:
    """Start, wait for SIGTERM/SIGINT, stop; the handlers only set a flag so no frame is cut in half."""
    done = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        done.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        service.start()
        while not done.wait(1.0):
            pass
    finally:
        service.stop()
        for s, h in old.items():
            signal.signal(s, h)


def run_gateway(config_path: str) -> None:
    """Entry point of ``campusmon gateway --config gateway.yaml``."""
    setup_logging()
    gw = build_or_exit(config_path, Gateway)
    cfg = gw.cfg
    log.info("gateway %s: %d buses, %d meters, outbox %s", cfg.gateway.id, len(cfg.buses), len(cfg.meters()),
             cfg.outbox_path)  # fmt: skip
    run_until_signalled(gw)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m gateway.service", description="Run the serial sensor gateway"
    )
    ap.add_argument("--config", default="gateway.yaml")
    run_gateway(ap.parse_args(argv).config)


if __name__ == "__main__":
    main()
