"""Simulated meters that push their own readings over MQTT (SenML or flat JSON), faults on demand.

Time is simulated: a backfill publishes history as fast as the broker takes it, then the fleet
can follow the wall clock at any speed-up without ever stamping a reading in the future.

Like a real meter, each simulated meter measures on its own clock whether or not the broker is
reachable. What it cannot send waits in a bounded memory (a meter's load-profile memory): when
that is full the oldest reading set is dropped and counted, and once the broker is back every kept
reading is sent once, oldest first.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from campusmon.mqtt import MqttAuth, make_client
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
    """QoS 1 publishing that hands each message to paho exactly once and never outruns its ids.

    paho keeps a QoS 1 message published while disconnected (``MQTT_ERR_NO_CONN``) and sends it
    after reconnecting, so publishing it again would send a copy. A message is therefore handed to
    paho only while connected, one that paho took anyway counts as handed over, and at most
    ``window`` are unacknowledged at a time (paho's message ids run out at 65,535;
    docs/references.md#mqtt-flow).
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        window: int = 2000,
        reconnect_max_s: int = 2,
        auth: MqttAuth | None = None,
    ) -> None:
        self.client = make_client(client_id, auth)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        # A meter retries its uplink every few seconds; paho's default grows to 2 minutes.
        self.client.reconnect_delay_set(min_delay=1, max_delay=reconnect_max_s)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.window = window
        self._cv = threading.Condition()
        self._connected = False
        self.inflight = 0  # handed to paho and not yet acknowledged by the broker
        self.sent = 0
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        with self._cv:
            self._cv.wait_for(lambda: self._connected, timeout=10)

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("simulated meters: connect refused: %s", rc)
            return
        with self._cv:
            self._connected = True
            self._cv.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        with self._cv:
            self._connected = False
            self._cv.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: object, _mid: int, _rc: object, _p: object) -> None:
        with self._cv:
            self.inflight -= 1
            self._cv.notify_all()

    def _sendable(self) -> bool:
        return self._connected and self.inflight < self.window

    def wait_sendable(self, timeout: float | None = None) -> bool:
        with self._cv:
            return self._cv.wait_for(self._sendable, timeout)

    def try_publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Hand one message to paho if connected and the window has room; False leaves it with the caller."""
        with self._cv:
            if not self._sendable():
                return False
            self.inflight += 1
        info = self.client.publish(topic, payload, qos=qos)
        if info.rc == mqtt.MQTT_ERR_SUCCESS or (info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0):
            # NO_CONN at QoS > 0: the connection dropped just now and paho keeps the message to
            # send after reconnecting. It is handed over; publishing it again would send a copy.
            self.sent += 1
            return True
        with self._cv:
            self.inflight -= 1
            self._cv.notify_all()
        if info.rc == mqtt.MQTT_ERR_NO_CONN:  # QoS 0 is not kept by paho: let the caller keep it
            return False
        raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Block until the message is handed over (while the broker is away, until it is back)."""
        while not self.try_publish(topic, payload, qos):
            self.wait_sendable(1.0)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the broker has acknowledged everything handed over."""
        with self._cv:
            return self._cv.wait_for(lambda: self.inflight <= 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        self.flush(timeout)
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True, slots=True)
class _Kept:
    seq: int
    topic: str
    payload: bytes
    readings: list[Reading] | None  # None for an injected faulty payload


class MqttFleet:
    """Simulated meters sharing one uplink; each keeps up to ``memory`` unsent reading sets."""

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
        memory: int = 2880,
        auth: MqttAuth | None = None,
    ) -> None:
        if memory < 1:
            raise ValueError("memory must hold at least one reading set")
        self.meters = list(meters)
        self.interval_s = interval_s
        self.rng = random.Random(seed)
        self.flat_share = flat_share
        self.fault_rate = fault_rate
        self.memory = memory
        self.pub = BackpressurePublisher(host, port, client_id, auth=auth)
        self.published: list[Reading] = []  # handed to the broker: what a test compares InfluxDB against
        self.handed: list[bytes] = []  # the payloads handed to the broker, in order (with keep_history)
        self.taken: list[Reading] = []  # every reading measured, sent or not
        self.dropped_readings: list[Reading] = []  # measured, then dropped from a full memory
        self.faults_sent: dict[str, int] = {}
        self.dropped: dict[str, int] = {m.id: 0 for m in self.meters}  # reading sets, per meter
        self.keep_history = False
        self._kept: dict[str, deque[_Kept]] = {m.id: deque() for m in self.meters}
        self._order: deque[tuple[int, str]] = deque()  # (seq, meter) of kept sets, oldest first
        self._n_kept = 0
        self._seq = 0
        self._lock = threading.Condition()
        self._closing = False
        self._sender = threading.Thread(target=self._send_loop, name="sim-mqtt-sender", daemon=True)
        self._sender.start()

    # -- measuring (the meter's own clock) -------------------------------------------------------

    def step(self, ts: int, wait: bool = True) -> int:
        """Take one reading set of every meter at simulated time ``ts``; returns messages kept.

        ``wait`` holds a backfill back while a window's worth is unsent, so history goes as fast as
        the broker takes it; a live meter (``wait=False``) never waits and lets its memory fill.
        """
        n = 0
        for m in self.meters:
            rs = m.readings(ts)
            topic = METER_TOPIC.format(meter_id=m.id)
            if self.fault_rate and self.rng.random() < self.fault_rate:
                label = self.rng.choice(sorted(FAULTS))
                self.faults_sent[label] = self.faults_sent.get(label, 0) + 1
                self._keep(m.id, topic, FAULTS[label](m.id, ts), None)
                n += 1
            payload = flat_payload(rs) if self.rng.random() < self.flat_share else encode_senml(rs)
            self._keep(m.id, topic, payload, rs)
            if self.keep_history:
                self.taken.extend(rs)
            n += 1
        if wait:
            with self._lock:
                self._lock.wait_for(lambda: self._n_kept < self.pub.window)
        return n

    def _keep(self, meter: str, topic: str, payload: bytes, readings: list[Reading] | None) -> None:
        with self._lock:
            mem = self._kept[meter]
            if len(mem) >= self.memory:
                old = mem.popleft()
                self._n_kept -= 1
                self.dropped[meter] += 1
                if self.keep_history and old.readings:
                    self.dropped_readings.extend(old.readings)
            mem.append(_Kept(self._seq, topic, payload, readings))
            self._order.append((self._seq, meter))
            self._seq += 1
            self._n_kept += 1
            self._lock.notify_all()

    # -- sending (whenever the broker takes it) --------------------------------------------------

    def _oldest(self) -> tuple[str, _Kept] | None:
        while self._order:
            seq, meter = self._order[0]
            mem = self._kept[meter]
            if mem and mem[0].seq == seq:
                return meter, mem[0]
            self._order.popleft()  # that set was dropped from a full memory
        return None

    def _send_loop(self) -> None:
        while True:
            self.pub.wait_sendable(0.2)
            with self._lock:
                found = self._oldest()
                if found is None:
                    if self._closing:
                        return
                    self._lock.wait(0.2)
                    continue
                meter, kept = found
                try:
                    handed = self.pub.try_publish(kept.topic, kept.payload)
                except Exception:  # a send error must not stop the meters; this set is lost, counted
                    log.exception("simulated meter %s: publish failed; reading set dropped", meter)
                    self.dropped[meter] += 1
                    handed = True
                if not handed:
                    continue
                self._kept[meter].popleft()
                self._order.popleft()
                self._n_kept -= 1
                if self.keep_history:
                    self.handed.append(kept.payload)
                    if kept.readings:
                        self.published.extend(kept.readings)
                self._lock.notify_all()

    @property
    def unsent(self) -> int:
        """Reading sets kept in the meters' memories, not yet handed to the broker."""
        with self._lock:
            return self._n_kept

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every kept reading set is sent and acknowledged by the broker."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._lock.wait_for(lambda: self._n_kept == 0, timeout):
                return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.pub.flush(left)

    def backfill(self, start_ts: int, end_ts: int, progress: Callable[[int, int], None] | None = None) -> int:
        """Publish history from ``start_ts`` to ``end_ts`` as fast as the broker takes it."""
        steps = list(range(start_ts - start_ts % self.interval_s, end_ts, self.interval_s))
        n = 0
        for i, ts in enumerate(steps):
            n += self.step(ts)
            if progress:
                progress(i + 1, len(steps))
        self.flush()
        return n

    def follow(self, stop: threading.Event, speed: float = 1.0) -> None:
        """Measure live every ``interval_s / speed`` seconds on the fleet's own clock, sent or not.

        Ticks are counted from the start, so a late wake-up catches up rather than skipping one, and
        each reading is stamped with the wall-clock time of its tick (never in the future).
        """
        period = self.interval_s / max(speed, 1e-6)
        t0, m0 = time.time(), time.monotonic()
        k = 0
        while not stop.is_set():
            self.step(int(t0 + k * period), wait=False)
            k += 1
            if stop.wait(max(0.0, m0 + k * period - time.monotonic())):
                break

    def close(self, timeout: float | None = None) -> bool:
        """Send what is kept (up to ``timeout``), then disconnect; False if some was left unsent."""
        done = self.flush(timeout)
        with self._lock:
            self._closing = True
            if not done:  # give up on what is kept: the caller was told
                for mem in self._kept.values():
                    mem.clear()
                self._order.clear()
                self._n_kept = 0
            self._lock.notify_all()
        self._sender.join(5)
        self.pub.close(0 if not done else None)
        return done
