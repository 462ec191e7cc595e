"""Simulated buses and matching gateway configs for the gateway and serial-collector tests."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from campusmon.reading import Reading
from campusmon.wire import GATEWAY_STATUS_TOPIC, GATEWAY_TOPIC, Rules, parse_payload
from firmware_sim.serial.bus import SimBus
from firmware_sim.serial.cjt188_meter import Cjt188Meter
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.dlt645_meter import Dlt645Meter
from firmware_sim.serial.meter import SerialMeter
from firmware_sim.serial.modbus_meter import ModbusMeter
from gateway.config import GatewayConfig, parse_gateway_config

SINGLE_PHASE_DIS = ["00010000", "02010100", "02020100", "02030000"]


@dataclass(frozen=True)
class Spec:
    """One meter as the gateway configures it and as the simulator plays it (``make`` None: nobody answers)."""

    id: str
    protocol: str
    address: str
    make: Callable[[SimClock], SerialMeter] | None
    extra: dict[str, Any] = field(default_factory=dict)
    building: str = "dorm-9"

    @property
    def kind(self) -> str:
        return "water" if self.id.startswith("w") else "electricity"

    def entry(self) -> dict[str, Any]:
        cat = "02000" if self.kind == "water" else "01A00"
        return {"id": self.id, "protocol": self.protocol, "address": self.address, "building": self.building,
                "category": cat, "kind": self.kind, **self.extra}  # fmt: skip


def fleet() -> list[Spec]:
    """Every protocol and variant the gateway supports, each read in one poll."""
    return [
        Spec("e-gw-1", "dlt645", "000000000101", lambda c: Dlt645Meter("000000000101", clock=c)),
        Spec(
            "e-gw-2",
            "dlt645",
            "000000000102",
            lambda c: Dlt645Meter("000000000102", phases=1, preamble=0, clock=c),
            {"options": {"phases": 1, "dis": SINGLE_PHASE_DIS}},
        ),
        Spec("w-gw-1", "cjt188", "10000000000101", lambda c: Cjt188Meter("10000000000101", clock=c)),
        Spec(
            "w-gw-2",
            "cjt188",
            "10000000000102",
            lambda c: Cjt188Meter(
                "10000000000102", di_order="1F90", accept_any_di_order=False, preamble=2, clock=c
            ),
            {"profile": "2018"},
        ),
        Spec(
            "e-gw-3",
            "modbus-rtu",
            "11",
            lambda c: ModbusMeter(11, model="sdm630", clock=c),
            {"profile": "eastron_sdm630"},
        ),
        Spec(  # SDM120 has holes in its map: one read per run of registers (exception 02 otherwise)
            "e-gw-4",
            "modbus-rtu",
            "12",
            lambda c: ModbusMeter(12, model="sdm120", clock=c),
            {"profile": "eastron_sdm120", "options": {"max_gap": 0}},
        ),
        Spec(
            "w-gw-3",
            "modbus-rtu",
            "13",
            lambda c: ModbusMeter(13, model="xintai", clock=c),
            {"profile": "kaifeng_xintai_water"},
        ),
    ]


def dlt645_fleet(n: int, first: int = 201) -> list[Spec]:
    return [Spec(f"e-gw-{first + i}", "dlt645", f"{first + i:012d}",
                 lambda c, a=f"{first + i:012d}": Dlt645Meter(a, clock=c)) for i in range(n)]  # fmt: skip


def start_sim(
    specs: list[Spec], transport: str, clock: SimClock | None = None, **kw: Any
) -> tuple[SimBus, str]:
    kw.setdefault("baud", 9600)
    sim = SimBus([s.make(clock or SimClock()) for s in specs if s.make], clock=clock, **kw).start()
    url = sim.serve_pty() if transport == "pty" else sim.serve_tcp()
    return sim, url


def gateway_config(tmp_path: Path, url: str, specs: list[Spec], mqtt_port: int | None = None, *, gateway_id: str = "",
                   bus: dict[str, Any] | None = None, **sections: Any) -> GatewayConfig:  # fmt: skip
    data: dict[str, Any] = {
        "gateway": {"id": gateway_id or "gw-" + uuid.uuid4().hex[:8], "data_dir": str(tmp_path / "gw")},
        "mqtt": {"port": mqtt_port or 1, "status_interval_s": 5, "keepalive": 5, "reconnect_max_s": 2},
        "poll_groups": {"default": {"interval_s": 3600}},
        "buses": [
            {
                "id": "rs485-1",
                "port": url,
                "baudrate": 9600,
                "parity": "N",
                "retries": 1,
                "meters": [s.entry() for s in specs],
                **(bus or {}),
            }
        ],  # fmt: skip
    }
    for k, v in sections.items():
        data.setdefault(k, {}).update(v)
    return parse_gateway_config(data, "test-gateway", environ={})


def campus_data(specs: list[Spec], gateway_id: str) -> dict[str, Any]:
    """The campus.yaml side: the gateway and its meters in the registry, so the collector accepts them."""
    buildings = sorted({s.building for s in specs})
    meters = [
        {
            **{k: v for k, v in s.entry().items() if k in ("id", "building", "kind", "category")},
            "gateway": gateway_id,
        }
        for s in specs
    ]
    return {
        "buildings": [{"id": b, "type": "dorm"} for b in buildings],
        "gateways": [{"id": gateway_id}],
        "meters": meters,
    }


def assert_registers(readings: list[Reading], sim: SimBus, specs: list[Spec]) -> None:
    """Every value the gateway delivered equals what the (frozen) simulated meter holds."""
    for s in specs:
        mine = {r.quantity: r.value for r in readings if r.meter == s.id}
        regs = sim.meter(s.address).registers()
        assert ("energy_kwh" if s.kind == "electricity" else "volume_m3") in mine, (s.id, mine)
        for q, v in mine.items():
            assert v == pytest.approx(regs[q], rel=1e-6, abs=1e-9), (s.id, q)


class Subscriber:
    """A plain MQTT client collecting a gateway's readings (parsed by the shared contract) and statuses."""

    def __init__(self, port: int, gateway_id: str, client_id: str | None = None, clean: bool = True) -> None:
        self.readings: list[Reading] = []
        self.status: list[dict[str, Any]] = []
        self.health: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.topic = GATEWAY_TOPIC.format(gateway_id=gateway_id)
        self.status_topic = GATEWAY_STATUS_TOPIC.format(gateway_id=gateway_id)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "t-" + uuid.uuid4().hex[:8],
                             clean_session=clean)  # fmt: skip
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_a: c.subscribe([(self.topic, 1), (self.status_topic, 1),
                                                          (self.topic.replace("readings", "health"), 0)])  # fmt: skip
        self.c.reconnect_delay_set(min_delay=1, max_delay=2)  # back soon after a broker outage the test made
        self.c.connect("127.0.0.1", port, keepalive=5)
        self.c.loop_start()

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            if m.topic == self.topic:
                res = parse_payload(m.payload, m.topic, Rules())
                assert not res.rejections, res.rejections
                self.readings.extend(res.readings)
            elif m.topic == self.status_topic:
                self.status.append(json.loads(m.payload))
            else:
                self.health.append(json.loads(m.payload))

    def keys(self) -> set[tuple[str, str, int]]:
        with self.lock:
            return {r.key for r in self.readings}

    def meters(self) -> set[str]:
        with self.lock:
            return {r.meter for r in self.readings}

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class Tee:
    """Wraps a bus sink to remember every reading the bus handed to the outbox (the expected set)."""

    def __init__(self, sink: Callable[[list[Reading]], None]) -> None:
        self.sink = sink
        self.readings: list[Reading] = []
        self.lock = threading.Lock()

    def __call__(self, rs: list[Reading]) -> None:
        with self.lock:
            self.readings.extend(rs)
        self.sink(rs)

    def snapshot(self) -> list[Reading]:
        with self.lock:
            return list(self.readings)


def influx_readings(store: Any) -> dict[tuple[str, str, int], float]:
    """Every stored value of every quantity, keyed like Reading.key (one query per measurement)."""
    from campusmon.influx import rows
    from campusmon.quantities import QUANTITIES, MeterKind

    out: dict[tuple[str, str, int], float] = {}
    for measurement in (k.value for k in MeterKind):
        for series in store.query(f'SELECT * FROM "{measurement}"'):
            for row in rows(series):
                for q, v in row.items():
                    if q in QUANTITIES and v is not None:
                        out[(row["meter"], q, int(row["time"]))] = v
    return out


def outbox_rows(path: Path) -> list[Reading]:
    """What an outbox file holds, read with plain sqlite3 (beside a running or killed gateway)."""
    import sqlite3

    conn = sqlite3.connect(path, timeout=10)
    try:
        q = ("SELECT m.name, q.name, r.v, r.ts FROM readings r JOIN names m ON m.id = r.m JOIN names q ON q.id = r.q "
             "ORDER BY r.id")  # fmt: skip
        return [Reading(*row) for row in conn.execute(q)]
    finally:
        conn.close()


class LossyLink:
    """A TCP relay to the broker that can start losing everything the gateway sends (a dead uplink
    whose TCP connection has not noticed yet): publishes leave the gateway and never arrive."""

    def __init__(self, upstream_port: int) -> None:
        import socket

        self.upstream_port = upstream_port
        self.dropping = threading.Event()
        self.dropped = 0
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = self._srv.getsockname()[1]
        self._conns: list[Any] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            self._conns += [client, up]
            threading.Thread(target=self._pump, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, False), daemon=True).start()

    def _pump(self, src: Any, dst: Any, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                if outbound and self.dropping.is_set():
                    self.dropped += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def heal(self) -> None:
        """Stop losing data and cut the connections that did, so the gateway reconnects."""
        self.dropping.clear()
        for s in self._conns:
            try:
                s.close()
            except OSError:
                pass
        self._conns.clear()

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        self.heal()
