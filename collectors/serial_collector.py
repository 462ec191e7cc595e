"""Direct serial collector: meters wired to the server are read by the gateway's bus engine and
written straight into InfluxDB, through the same outbox, so an InfluxDB outage loses nothing.

A row leaves the outbox only after InfluxDB answered the write (stored, or refused for good, which
is logged: retrying a reading the server rejects would block every reading behind it). While
InfluxDB is down the writer backs off and retries; the buses keep reading into the outbox.
Run with ``campusmon collector serial --config gateway.yaml`` (the file's ``influxdb`` section).
"""

from __future__ import annotations

import argparse
import logging
import threading
from dataclasses import dataclass
from typing import Any

from campusmon.influx import InfluxStore, StoreUnavailable, open_store
from gateway.config import GatewayConfig
from gateway.service import Acquisition, DriverFactory, build_or_exit, run_until_signalled, setup_logging

log = logging.getLogger(__name__)

BATCH = 5000


@dataclass
class WriterCounters:
    stored: int = 0
    rejected: int = 0
    failures: int = 0
    consecutive_failures: int = 0


class InfluxWriter:
    """Drains the outbox into InfluxDB in order, oldest first, deleting rows once written."""

    def __init__(self, acq: Acquisition, store: InfluxStore, batch: int = BATCH) -> None:
        self.acq = acq
        self.store = store
        self.batch = batch
        self.c = WriterCounters()
        self._cursor = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self.acq.outbox.fetch(self._cursor, self.batch)
            if not rows:
                self.acq.outbox.wait_beyond(self._cursor, 0.5)
                continue
            try:
                outcome = self.store.write([r for _, r in rows])
            except StoreUnavailable as e:
                self.c.failures += 1
                self.c.consecutive_failures += 1
                delay = min(30.0, 0.5 * 2 ** min(self.c.consecutive_failures, 6))
                if self.c.consecutive_failures in (1, 5) or self.c.consecutive_failures % 50 == 0:
                    log.warning("influxdb unavailable (%s); %d readings wait in the outbox, retry in %.1f s",
                                e, self.acq.outbox.depth, delay)  # fmt: skip
                self._stop.wait(delay)
                continue
            if self.c.consecutive_failures:
                log.info("influxdb is back; draining %d readings", self.acq.outbox.depth)
            self.c.consecutive_failures = 0
            for r, why in outcome.rejected:
                log.error("influxdb refused %s %s=%s @%d: %s", r.meter, r.quantity, r.value, r.ts, why)
            self.c.stored += outcome.stored
            self.c.rejected += len(outcome.rejected)
            self.acq.outbox.ack([i for i, _ in rows])
            self._cursor = rows[-1][0]

    def health(self) -> dict[str, Any]:
        return {"stored": self.c.stored, "rejected": self.c.rejected, "write_failures": self.c.failures,
                "influxdb_up": self.c.consecutive_failures == 0}  # fmt: skip


class SerialCollector(Acquisition):
    def __init__(self, cfg: GatewayConfig, make_driver: DriverFactory | None = None) -> None:
        super().__init__(cfg, make_driver)
        self.store = open_store(cfg.campus_config())
        self.writer = InfluxWriter(self, self.store)

    def start(self) -> None:
        try:
            self.store.ensure_database()
        except StoreUnavailable as e:  # the writer retries; reading must not wait for the server
            log.warning("influxdb not reachable at start (%s); readings are kept until it is", e)
        self.writer.start()
        super().start()

    def stop(self) -> None:
        self.stop_reading()
        self.outbox.flush()
        self.writer.stop()
        self.outbox.close()
        self.store.close()
        self.stop_metrics()

    def health(self) -> dict[str, Any]:
        return {**super().health(), "influxdb": self.writer.health()}


def run_serial_collector(config_path: str) -> None:
    """Entry point of ``campusmon collector serial --config gateway.yaml``."""
    setup_logging()
    collector = build_or_exit(config_path, SerialCollector)
    cfg = collector.cfg
    log.info(
        "serial collector: %d buses, %d meters -> %s", len(cfg.buses), len(cfg.meters()), cfg.influxdb.url
    )
    run_until_signalled(collector)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m collectors.serial_collector", description="Serial buses to InfluxDB"
    )
    ap.add_argument("--config", default="gateway.yaml")
    run_serial_collector(ap.parse_args(argv).config)


if __name__ == "__main__":
    main()
