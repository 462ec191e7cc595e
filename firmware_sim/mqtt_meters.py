"""Simulated meters that push their own readings over MQTT (SenML or flat JSON), faults on demand.

Time is simulated: a backfill publishes history as fast as the broker takes it, then the fleet
can follow the wall clock at any speed-up without ever stamping a reading in the future.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from campusmon.reading import Reading
from campusmon.wire import METER_TOPIC, URN_PREFIX, encode_senml
from firmware_sim.profiles import SimMeter

log = logging.getLogger(__name__)

# Faulty payloads a device might really send; each is (label, builder(meter_id, ts) -> bytes).
FAULTS: dict[str, Callable[[str, int], bytes]] = {
    "malformed_json": lambda m, ts: b'[{"bn":"urn:campus:meter:' + m.encode() + b':","n":"energy_kwh","v":1',
    "unknown_quantity": lambda m, ts: json.dumps(
        [{"bn": f"{URN_PREFIX}{m}:", "n": "temperature_c", "v": 21.5, "t": ts}]
    ).encode(),
    "nan": lambda m, ts: f'[{{"bn":"{URN_PREFIX}{m}:","n":"power_w","v":NaN,"t":{ts}}}]'.encode(),
    "future_ts": lambda m, ts: json.dumps({"meter": m, "ts": ts + 86400 * 30, "power_w": 10.0}).encode(),
    "negative_register": lambda m, ts: json.dumps({"meter": m, "ts": ts, "energy_kwh": -5.0}).encode(),
    "wrong_unit": lambda m, ts: json.dumps(
        [{"bn": f"{URN_PREFIX}{m}:", "n": "energy_kwh", "u": "m3", "v": 3, "t": ts}]
    ).encode(),
    "no_timestamp": lambda m, ts: json.dumps([{"bn": f"{URN_PREFIX}{m}:", "n": "power_w", "v": 3}]).encode(),
}


def flat_payload(readings: list[Reading]) -> bytes:
    """Flat JSON for simple devices: one object per timestamp."""
    by_ts: dict[int, dict[str, object]] = {}
    for r in readings:
        by_ts.setdefault(r.ts, {"meter": r.meter, "ts": r.ts})[r.quantity] = r.value
    objs = list(by_ts.values())
    return json.dumps(objs[0] if len(objs) == 1 else objs).encode()


class BackpressurePublisher:
    """QoS 1 publishing that never outruns paho's 65,535 message ids (libcheck §1d)."""

    def __init__(self, host: str, port: int, client_id: str, window: int = 2000) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.window = window
        self.pending: deque[mqtt.MQTTMessageInfo] = deque()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        self.sent = 0

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        while True:
            info = self.client.publish(topic, payload, qos=qos)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                break
            if info.rc not in (mqtt.MQTT_ERR_QUEUE_SIZE, mqtt.MQTT_ERR_NO_CONN):
                raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
            self._drain(len(self.pending) // 2)
            time.sleep(0.05)
        self.pending.append(info)
        self.sent += 1
        if len(self.pending) >= self.window:
            self._drain(self.window // 2)

    def _drain(self, keep: int) -> None:
        while len(self.pending) > keep:
            info = self.pending.popleft()
            while not info.is_published():
                info.wait_for_publish(timeout=1.0)

    def flush(self) -> None:
        self._drain(0)

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()


class MqttFleet:
    def __init__(
        self,
        meters: Iterable[SimMeter],
        host: str,
        port: int,
        interval_s: int = 60,
        seed: int = 0,
        flat_share: float = 0.0,
        fault_rate: float = 0.0,
        client_id: str = "campusmon-sim",
    ) -> None:
        self.meters = list(meters)
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.flat_share = flat_share
        self.fault_rate = fault_rate
        self.pub = BackpressurePublisher(host, port, client_id)
        self.published: list[Reading] = []  # what a test compares InfluxDB against
        self.faults_sent: dict[str, int] = {}
        self.keep_history = False

    def step(self, ts: int) -> int:
        """Publish one reading set of every meter at simulated time ``ts``; returns messages sent."""
        n = 0
        for m in self.meters:
            rs = m.readings(ts)
            if self.fault_rate and self.rng.random() < self.fault_rate:
                label = self.rng.choice(sorted(FAULTS))
                self.faults_sent[label] = self.faults_sent.get(label, 0) + 1
                self.pub.publish(METER_TOPIC.format(meter_id=m.id), FAULTS[label](m.id, ts))
                n += 1
            payload = flat_payload(rs) if self.rng.random() < self.flat_share else encode_senml(rs)
            self.pub.publish(METER_TOPIC.format(meter_id=m.id), payload)
            if self.keep_history:
                self.published.extend(rs)
            n += 1
        return n

    def backfill(self, start_ts: int, end_ts: int, progress: Callable[[int, int], None] | None = None) -> int:
        """Publish history from ``start_ts`` to ``end_ts`` as fast as the broker takes it."""
        steps = list(range(start_ts - start_ts % self.interval_s, end_ts, self.interval_s))
        n = 0
        for i, ts in enumerate(steps):
            n += self.step(ts)
            if progress:
                progress(i + 1, len(steps))
        self.pub.flush()
        return n

    def follow(self, stop: threading.Event, speed: float = 1.0) -> None:
        """Publish live readings stamped with the wall clock every ``interval_s / speed`` seconds."""
        period = self.interval_s / max(speed, 1e-6)
        self.step(int(time.time()))
        while not stop.wait(period):
            self.step(int(time.time()))

    def close(self) -> None:
        self.pub.close()
