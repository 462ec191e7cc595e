"""A live campus in one process: the real collector (with its instant rules), simulated meters over
MQTT, and the API under uvicorn on a loopback port.

The browser tests and ``scripts/screenshots.py`` drive the console against it. The servers
(Mosquitto, InfluxDB) are the caller's, so tests can share theirs and a script can start its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from campusmon.config import CampusConfig
from campusmon.reading import Reading
from campusmon.services import free_port
from campusmon.wire import METER_TOPIC, encode_senml


def _wait(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class LiveCampus:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is where the API answers."""

    def __init__(self, cfg: CampusConfig, start_jobs: bool = False) -> None:
        self.cfg = cfg
        self.start_jobs = start_jobs
        self.port = free_port()
        self.collector: Any = None
        self.fleet: Any = None
        self.app: Any = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, history_s: int, waste: Callable[[list[Any]], object] | None = None) -> LiveCampus:
        """Collector first, then ``history_s`` of simulated history through it, then the API.

        ``waste`` may change the simulated meters (add load) for the last day of the history.
        """
        from api.alerts.instant import hooks_for
        from collectors.mqtt_collector import MqttCollector
        from firmware_sim.mqtt_meters import MqttFleet
        from firmware_sim.profiles import sim_meters_for

        cfg = self.cfg
        self.collector = MqttCollector(cfg, hooks=tuple(hooks_for(cfg))).start()
        self.collector.store.ensure_database()
        if not self.collector.wait_connected(15):
            raise TimeoutError("the collector did not connect to the broker")
        self.fleet = MqttFleet(
            sim_meters_for(cfg, 1),
            "127.0.0.1",
            cfg.mqtt.port,
            interval_s=900,
            seed=1,
            client_id=f"{cfg.mqtt.client_id}-sim",
        )
        now = int(time.time())
        end = now - 120
        if waste is not None and history_s > 86400:
            self.fleet.backfill(now - history_s, now - 86400)
            waste(self.fleet.meters)
            self.fleet.backfill(now - 86400, end)
        else:
            self.fleet.backfill(now - history_s, end)
        last = max(range(end - end % 900 - 900, end, 900))
        _wait(lambda: self._stored_until(last), 60, "the simulated history to be stored")
        from api.app import create_app

        self.app = create_app(cfg, start_jobs=self.start_jobs)
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, name="live-campus-api", daemon=True)
        self._thread.start()
        _wait(lambda: self._server is not None and self._server.started, 30, "the API to start")
        return self

    def _stored_until(self, ts: int) -> bool:
        """Every simulated meter has a reading at or after ``ts`` in InfluxDB."""
        store = self.collector.store
        for kind in ("electricity", "water"):
            ids = [m.id for m in self.cfg.meters if m.kind.value == kind]
            if not ids:
                continue
            field = "energy_kwh" if kind == "electricity" else "volume_m3"
            got = store.query(f'SELECT last("{field}") FROM "{kind}" WHERE time >= {ts}s GROUP BY "meter"')
            if len({s["tags"]["meter"] for s in got}) < len(ids):
                return False
        return True

    def add_user(self, name: str, password: str, role: str, buildings: list[str] | None = None) -> None:
        from api.auth.service import AuthStore
        from campusmon.db import init_db

        engine, sessions = init_db(self.cfg.database.url)
        try:
            AuthStore(sessions, ttl=0).add_user(name, password, role, buildings)
        finally:
            engine.dispose()

    def publish_power(self, meter: str, points: list[tuple[int, float]]) -> None:
        """Readings of ``power_w`` over MQTT, each acknowledged by the broker before the next."""
        pub = self.fleet.pub
        for ts, w in points:
            pub.publish(METER_TOPIC.format(meter_id=meter), encode_senml([Reading(meter, "power_w", w, ts)]))
        pub.flush(10)

    def kettle(self, meter: str, watts: float = 2000.0, base: float = 150.0) -> int:
        """A kettle switched on in a dorm room for 40 s: what ``dorm.high_power`` fires on."""
        t0 = int(time.time()) - 50
        self.publish_power(meter, [(t0, base), (t0 + 10, watts), (t0 + 20, watts), (t0 + 40, watts)])
        return t0

    def evaluate(self) -> int:
        """One window-rule pass now (what the scheduler would run every few minutes)."""
        from api.alerts.scheduler import alert_services

        return len(alert_services(self.app).evaluator.run())

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self.fleet is not None:
            self.fleet.close(5)
        if self.collector is not None:
            self.collector.stop()
