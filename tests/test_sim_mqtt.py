"""Simulated MQTT meters through a broker outage: they keep measuring, keep what they cannot send
in a bounded memory, and the broker receives each kept reading exactly once. Real Mosquitto only."""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from campusmon.services import Server
from campusmon.wire import METER_TOPIC, TOPIC_ROOT, URN_PREFIX
from firmware_sim.mqtt_meters import MqttFleet
from firmware_sim.profiles import sim_meters_for
from tests.helpers import campus, wait_until

SENTINEL = METER_TOPIC.format(meter_id="sentinel")


class CountingSubscriber:
    """A persistent-session QoS 1 subscriber that counts how often the broker received each (meter, ts).

    Every first delivery is one message the broker received; a delivery with DUP set is the broker
    sending that same message again because this subscriber's ack was lost, so it is counted apart.
    """

    def __init__(self, port: int) -> None:
        self.counts: Counter[tuple[str, int]] = Counter()
        self.sentinels: Counter[bytes] = Counter()
        self.redelivered = 0
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="count-" + uuid.uuid4().hex[:8], protocol=mqtt.MQTTv5
        )
        self.c.reconnect_delay_set(1, 2)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda *_: self.subscribed.set()
        self.c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.c.loop_start()
        assert self.subscribed.wait(10)

    def _on_connect(self, c: mqtt.Client, _u: object, flags: object, _rc: object, _p: object) -> None:
        if not getattr(flags, "session_present", False):
            c.subscribe(f"{TOPIC_ROOT}/meters/+/readings", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            if m.dup:  # the broker re-delivering to us what it received once (our ack was lost)
                self.redelivered += 1
                return
            if m.topic == SENTINEL:
                self.sentinels[m.payload] += 1
                return
            pack = json.loads(m.payload)
            meter = pack[0]["bn"].removeprefix(URN_PREFIX).rstrip(":")
            self.counts[(meter, int(pack[0]["t"]))] += 1

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def broker(server_factory) -> Server:
    return server_factory("mosquitto")


@pytest.fixture
def fleet_factory(broker, make_config) -> Iterator:
    made: list[tuple[MqttFleet, threading.Event]] = []

    def make(memory: int) -> tuple[MqttFleet, threading.Event]:
        cfg = make_config(broker, None, data=campus(3, 2))
        fleet = MqttFleet(
            sim_meters_for(cfg, 4), "127.0.0.1", broker.port, 1, 4, client_id="sim-outage", memory=memory
        )
        fleet.keep_history = True
        stop = threading.Event()
        made.append((fleet, stop))
        return fleet, stop

    yield make
    for fleet, stop in made:
        stop.set()
        fleet.close(timeout=5)


def _ticks(fleet: MqttFleet) -> dict[str, list[int]]:
    """Timestamps each meter measured, in order (one register reading per reading set)."""
    out: dict[str, list[int]] = {}
    for r in fleet.taken:
        if r.quantity in ("energy_kwh", "volume_m3"):
            out.setdefault(r.meter, []).append(r.ts)
    return out


def _through_outage(
    broker: Server, fleet: MqttFleet, stop: threading.Event, until_down: Callable[[], bool]
) -> tuple[CountingSubscriber, dict[str, int]]:
    sub = CountingSubscriber(broker.port)
    follower = threading.Thread(target=fleet.follow, args=(stop,), daemon=True)
    follower.start()
    n = len(fleet.meters)
    wait_until(lambda: len(sub.counts) >= 3 * n, 20, 0.1, "readings before the outage")
    broker.stop()
    last_before = {m: ts[-1] for m, ts in _ticks(fleet).items()}
    wait_until(until_down, 60, 0.1, "the meters to measure through the outage")
    broker.start()
    wait_until(lambda: fleet.unsent == 0, 30, 0.1, "the meters to send what they kept")
    stop.set()
    follower.join(10)
    assert fleet.flush(30)
    fleet.pub.publish(SENTINEL, b"end")  # after every reading on the same connection
    assert fleet.pub.flush(10)
    wait_until(lambda: sub.sentinels[b"end"] >= 1, 30, 0.1, "the subscriber to receive everything")
    sub.close()
    return sub, last_before


def test_meters_keep_measuring_through_a_broker_outage_and_send_each_reading_once(
    broker, fleet_factory
) -> None:
    fleet, stop = fleet_factory(memory=1000)
    n = len(fleet.meters)
    down_after: list[int] = []

    def measured_through() -> bool:
        if not down_after:
            down_after.append(len(fleet.taken))
        return len(fleet.taken) - down_after[0] >= 2 * n * 15  # 15 intervals while the broker is away

    sub, _ = _through_outage(broker, fleet, stop, measured_through)
    ticks = _ticks(fleet)
    assert sorted(ticks) == sorted(m.id for m in fleet.meters)
    for meter, ts in ticks.items():
        assert all(b - a == 1 for a, b in zip(ts, ts[1:], strict=False)), f"{meter}: a gap in {ts}"
    assert fleet.dropped == {m.id: 0 for m in fleet.meters}
    taken = {(meter, t) for meter, ts in ticks.items() for t in ts}
    assert set(sub.counts) == taken  # none missing, none extra
    copies = {k: c for k, c in sub.counts.items() if c != 1}
    assert copies == {}, f"readings delivered more than once: {copies}"
    assert sub.sentinels[b"end"] == 1
    assert {r.key for r in fleet.published} == {r.key for r in fleet.taken}


def test_a_memory_smaller_than_the_outage_drops_the_oldest_and_counts_them(broker, fleet_factory) -> None:
    memory = 5
    fleet, stop = fleet_factory(memory=memory)
    sub, last_before = _through_outage(
        broker, fleet, stop, lambda: all(d >= memory + 3 for d in fleet.dropped.values())
    )
    ticks = _ticks(fleet)
    dropped_keys = {
        (r.meter, r.ts) for r in fleet.dropped_readings if r.quantity in ("energy_kwh", "volume_m3")
    }
    for meter, ts in ticks.items():
        assert all(b - a == 1 for a, b in zip(ts, ts[1:], strict=False)), f"{meter}: not measured in {ts}"
        got = sorted(t for (m, t) in sub.counts if m == meter)
        missing = sorted(set(ts) - set(got))
        assert len(missing) == fleet.dropped[meter] >= memory + 3
        assert missing == list(range(missing[0], missing[-1] + 1)), "the dropped ones are one run"
        assert {(meter, t) for t in missing} == {k for k in dropped_keys if k[0] == meter}
        assert set(ts) - set(missing) == set(got)
        # Oldest first: the run starts as the outage does (dropping the newest would keep the
        # outage's first `memory` readings and start the run `memory` readings later).
        assert last_before[meter] < missing[0] <= last_before[meter] + 3
        assert missing[0] - 1 in got
    copies = {k: c for k, c in sub.counts.items() if c != 1}
    assert copies == {}, f"readings delivered more than once: {copies}"
