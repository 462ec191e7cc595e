"""Two campuses' brokers joined by a Mosquitto bridge: readings cross it, and survive it breaking.

A campus broker (locked, with a head-end identity for its meters) runs the bridge section that
``campusmon bridge config`` writes; the central broker (locked, TLS listener) has the bridge
identity that command made and a collector writing into InfluxDB. The link runs through a TCP
proxy the test controls, so the link can be cut without restarting either broker.

The link is cut mid-stream, while the head-end publishes; during the outage readings are published
while the bridge dials (on a connection that will die) and between its attempts, and the campus
broker is restarted. The outage lasts until the bridge has failed to reconnect three more times
and at least ``CAMPUSMON_BRIDGE_OUTAGE_S`` seconds (default 60: a one-minute outage) have passed
since the cut; a shorter value is handy while developing. What the outage exercises does not
grow with its length: the readings wait in the campus broker's queue, which has no cap, and each
failed attempt leaves it as it was (with ``max_inflight_messages 0``; with Mosquitto 2.0.11's
default cap of 20 a block of readings is lost, docs/deployment.md, "Campuses joined by bridges").
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from campusmon.bridge import BridgeError, BridgeSpec, render, status_topic
from campusmon.certs import init_all
from campusmon.cli import app
from campusmon.devices import DeviceRegistry, acl_rules
from campusmon.mqtt import MqttAuth, make_client
from campusmon.reading import Reading
from campusmon.services import Mosquitto, free_port
from campusmon.wire import METER_TOPIC, encode_senml, ignored_topic, topic_parts
from collectors.mqtt_collector import MqttCollector
from firmware_sim.mqtt_meters import BackpressurePublisher
from tests.helpers import stored, wait_until

OUTAGE_S = float(os.environ.get("CAMPUSMON_BRIDGE_OUTAGE_S", "60"))
# The bridge's restart delay: after an attempt ends it holds no connection for at least this long.
RESTART_S = 3
METERS = ("e-east-1", "e-east-2", "e-east-3")


class CutProxy:
    """A TCP relay whose link can be cut: open connections are dropped, new ones go unanswered.

    A cut WAN link drops packets rather than refusing them, so while the link is down a new
    connection is accepted and then never answered: a *black-holed attempt*. After ``hold_s`` the
    relay ends it (FIN), standing for the time-out that ends such an attempt in the field (the
    bridge's own is 1.5 x keepalive), and counts it in ``ended`` once the bridge has closed its
    side. Between the end of one attempt and the next, the bridge has no connection at all for at
    least its restart delay: :meth:`wait_idle` waits for such a gap. (Mosquitto 2.0.11's TLS
    bridge, when refused outright instead, retries in a busy loop or gives up: docs/deployment.md,
    "Campuses joined by bridges".)
    """

    def __init__(self, target_port: int, hold_s: float = 0.5) -> None:
        self.target_port = target_port
        self.hold_s = hold_s
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.cv = threading.Condition()
        self.up = True
        self.links: list[socket.socket] = []
        self.accepted = 0  # connections relayed to the central broker
        self.attempts = 0  # connections made while the link was down
        self.ended = 0  # of those, closed by the bridge after going unanswered
        self.open_attempts = 0
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.cv:
                if not self.up:
                    self.attempts += 1
                    self.open_attempts += 1
                    self.cv.notify_all()
                    threading.Thread(target=self._black_hole, args=(conn,), daemon=True).start()
                    continue
                self.accepted += 1
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                except OSError:
                    conn.close()
                    continue
                upstream.settimeout(None)
                self.links += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _black_hole(self, conn: socket.socket) -> None:
        """Swallow what the bridge sends for ``hold_s``, end the attempt, wait for the bridge to close."""
        deadline = time.monotonic() + self.hold_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                try:
                    if not conn.recv(65536):
                        break
                except TimeoutError:
                    break
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(30)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()
        with self.cv:
            self.open_attempts -= 1
            self.ended += 1
            self.cv.notify_all()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_idle(self, timeout: float = 30.0) -> int:
        """Wait until an attempt made from now on has ended and none is open; return ``attempts``.

        The bridge then holds no connection for its restart delay: a reading published now is
        queued at the campus broker, not put in flight on a connection that will die.
        """
        with self.cv:
            seen = self.ended
            ok = self.cv.wait_for(lambda: self.ended > seen and self.open_attempts == 0, timeout)
            assert ok, f"no black-holed attempt ended within {timeout:.0f} s ({self.attempts} made)"
            return self.attempts

    def cut(self) -> None:
        with self.cv:
            self.up = False
            for s in self.links:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.links.clear()

    def restore(self) -> None:
        with self.cv:
            self.up = True

    def close(self) -> None:
        self.closing = True
        self.cut()
        self.sock.close()


class StatusWatch:
    """The bridge's retained state on the campus broker (``1`` up, ``0`` down), read as a monitor."""

    def __init__(self, port: int, auth: MqttAuth, topic: str) -> None:
        self.cv = threading.Condition()
        self.values: list[str] = []
        self.c = make_client("watch-" + os.urandom(3).hex(), auth)
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        with self.cv:
            self.values.append(m.payload.decode())
            self.cv.notify_all()

    def wait(self, value: str, timeout: float = 30.0) -> None:
        with self.cv:
            ok = self.cv.wait_for(lambda: self.values and self.values[-1] == value, timeout)
        assert ok, f"bridge state never became {value!r} (seen {self.values})"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _readings(start: int, n: int) -> list[Reading]:
    """``n`` energy readings, spread over the meters, each with a (meter, ts) of its own."""
    return [Reading(METERS[i % len(METERS)], "energy_kwh", 1000.0 + start + i, start + i) for i in range(n)]


def _publish(pub: BackpressurePublisher, readings: list[Reading], qos: int = 1) -> None:
    for r in readings:
        pub.publish(METER_TOPIC.format(meter_id=r.meter), encode_senml([r]), qos=qos)


class Stream(threading.Thread):
    """A head-end publishing readings one by one at a steady pace, as a live campus does.

    It goes on for ``after_cut`` readings once ``cut`` is set, so a cut always lands mid-stream;
    ``readings`` is what it published.
    """

    def __init__(self, pub: BackpressurePublisher, start: int, after_cut: int = 100, most: int = 900) -> None:
        super().__init__(daemon=True)
        self.pub, self.start_ts, self.after_cut, self.most = pub, start, after_cut, most
        self.readings: list[Reading] = []
        self.cut = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        left = self.after_cut
        for r in _readings(self.start_ts, self.most):
            if self.stop.is_set() or left == 0:
                return
            _publish(self.pub, [r])
            self.readings.append(r)
            if self.cut.is_set():
                left -= 1
            self.stop.wait(0.01)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    init_all(d)
    return d


@pytest.fixture
def central(tmp_path: Path, certs: Path) -> Iterator[Mosquitto]:
    srv = Mosquitto(tmp_path / "central", free_port(), tls_port=free_port(), certs_dir=certs)
    srv.start()
    yield srv
    srv.stop()


def test_readings_cross_the_bridge_and_survive_a_cut_link_without_loss_or_duplicates(
    tmp_path, certs, central, influxdb, make_config
) -> None:
    assert central.tls_port is not None
    creg = DeviceRegistry(central.data_dir)
    col_pw = creg.add("collector-central", "collector")
    assert central.reload()
    proxy = CutProxy(central.tls_port, hold_s=1.0)

    # The bridge section and its identity on the central broker, as an operator makes them.
    conf_d = tmp_path / "east-conf.d"
    (tmp_path / "central.yaml").write_text(f"services: {{data_dir: {tmp_path}/svc}}\n")
    r = CliRunner().invoke(
        app,
        ["bridge", "config", "--campus", "east", "--central-host", "localhost",
         "--central-port", str(proxy.port), "--ca-file", str(certs / "ca.crt"),
         "--restart-base", str(RESTART_S), "--restart-cap", str(RESTART_S), "--keepalive", "5",
         "--broker-dir", str(central.data_dir), "--out", str(conf_d / "bridge.conf")],
        env={"CAMPUSMON_CONFIG": str(tmp_path / "central.yaml")},
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (conf_d / "bridge.conf").stat().st_mode & 0o777 == 0o600
    assert creg.get("east") is not None and creg.get("east").kind == "bridge"

    campus = Mosquitto(tmp_path / "east", free_port(), include_dir=conf_d)
    ereg = DeviceRegistry(campus.data_dir)
    head = MqttAuth("headend-east", ereg.add("headend-east", "meter", list(METERS)))
    mon = MqttAuth("monitor-east", ereg.add("monitor-east", "monitor"))
    campus.start()

    data = {
        "buildings": [{"id": "east-hall"}],
        "meters": [{"id": m, "building": "east-hall", "kind": "electricity"} for m in METERS],
    }
    cfg = make_config(influx=influxdb, data=data, mqtt={
        "port": central.port, "client_id": "collector-central",
        "username": "collector-central", "password": col_pw})  # fmt: skip
    collector = MqttCollector(cfg).start()
    watch = StatusWatch(campus.port, mon, status_topic("east"))
    pub: BackpressurePublisher | None = None
    stream: Stream | None = None
    try:
        collector.store.ensure_database()
        assert collector.wait_connected(10)
        watch.wait("1")
        base = int(time.time()) - 86400
        dialling, gap = _readings(base + 1000, 150), _readings(base + 2000, 150)
        restarted, after = _readings(base + 3000, 150), _readings(base + 4000, 200)
        qos0 = _readings(base + 5000, 20)

        def stored_now() -> dict[tuple[str, str, int], float]:
            return stored(collector.store, ("energy_kwh",))

        # Linked: readings published at the campus arrive centrally, under the campus prefix. The
        # link is cut mid-stream: the head-end goes on publishing, readings in flight on the dead
        # connection are not acknowledged, and the stream runs on into the outage.
        pub = BackpressurePublisher("127.0.0.1", campus.port, "headend-east", auth=head)
        stream = Stream(pub, base)
        stream.start()
        wait_until(
            lambda: len(stream.readings) >= 100 and stored_now(), timeout=30, what="the stream to cross"
        )
        proxy.cut()
        stream.cut.set()
        cut_at = time.monotonic()
        assert stream.is_alive(), "the cut did not land mid-stream"
        watch.wait("0")
        stream.join(60)
        assert not stream.is_alive()
        live = stream.readings

        # Link down. Readings published while the bridge dials a connection that will never be
        # answered (they go in flight on it) and between its attempts (they are queued): the
        # campus broker keeps them all. QoS 0 readings are kept only while the bridge has no
        # connection (one in flight on a connection that dies is gone, as QoS 0 allows), so those
        # are published in a gap, and the test checks that the bridge did not dial meanwhile.
        with proxy.cv:
            assert proxy.cv.wait_for(lambda: proxy.open_attempts > 0, 30), "the bridge never dialled"
        _publish(pub, dialling)
        assert pub.flush(30)
        attempts = proxy.wait_idle()
        _publish(pub, qos0, qos=0)
        _publish(pub, gap[:1])  # acknowledged after the QoS 0 ones before it were taken in
        assert pub.flush(30)
        assert proxy.attempts == attempts, "the bridge dialled while QoS 0 readings were published"
        _publish(pub, gap[1:])
        assert pub.flush(30)
        # ... and keeps them across its own restart (persistent bridge session, persisted queue).
        pub.close(10)
        campus.stop()
        watch.close()
        campus.start()
        watch = StatusWatch(campus.port, mon, status_topic("east"))
        pub = BackpressurePublisher("127.0.0.1", campus.port, "headend-east", auth=head)
        _publish(pub, restarted)
        assert pub.flush(30)
        failed = proxy.ended
        wait_until(
            lambda: proxy.ended >= failed + 3, timeout=60, what="the bridge failing to reconnect 3 times"
        )
        wait_until(lambda: time.monotonic() - cut_at >= OUTAGE_S, timeout=OUTAGE_S + 5, what="the outage")
        crossed = stored_now()
        assert set(crossed) <= {x.key for x in live}, "a reading crossed a cut link"
        assert len(crossed) < len(live)

        # Link back: everything held at the campus arrives, then new readings as usual.
        proxy.restore()
        watch.wait("1", timeout=30)
        _publish(pub, after)
        assert pub.flush(30)
        groups = {"live": live, "dialling": dialling, "gap": gap, "qos0": qos0, "restarted": restarted}
        groups["after"] = after
        everything = [x for g in groups.values() for x in g]
        want = {x.key: x.value for x in everything}
        try:
            wait_until(
                lambda: len(stored_now()) >= len(want), timeout=60, what=f"{len(want)} readings in InfluxDB"
            )
        except AssertionError:
            pass  # say below which of them are missing
        got = stored_now()
        for name, grp in groups.items():
            missing = [i for i, x in enumerate(grp) if x.key not in got]
            assert not missing, f"{len(missing)} of {len(grp)} readings {name!r} lost: {missing}"
        assert got == want  # none lost, none altered
        rows = collector.store.query('SELECT count("energy_kwh") FROM "electricity"')
        assert int(rows[0]["values"][0][1]) == len(everything)  # none stored twice
        assert collector.received >= len(everything)
        assert proxy.accepted >= 2  # the same bridge, reconnected through the proxy
    finally:
        if stream is not None:
            stream.stop.set()
        if pub is not None:
            pub.close(5)
        watch.close()
        collector.stop()
        campus.stop()
        proxy.close()


def test_the_bridge_identity_may_publish_only_under_its_campus_prefix() -> None:
    rules = acl_rules("bridge", "east", [])
    assert rules == ["topic write east/campus/v1/meters/#", "topic write east/campus/v1/gateways/#"]
    collector = acl_rules("collector", "c1", [])
    assert "topic read +/campus/v1/meters/#" in collector


def test_prefixed_topics_parse_like_local_ones_and_nothing_else_does() -> None:
    assert topic_parts("east/campus/v1/meters/e-1/readings") == ("meters", "e-1")
    assert topic_parts("east/campus/v1/gateways/gw-1/readings") == ("gateways", "gw-1")
    assert topic_parts("campus/campus/v1/meters/e-1/readings") == ("meters", "e-1")
    assert ignored_topic("east/campus/v1/gateways/gw-1/status")
    for bad in ("a/b/campus/v1/meters/e-1/readings", "east/campus/v2/meters/e-1/readings",
                "ea st/campus/v1/meters/e-1/readings", "east/campus/v1/meters/e-1"):  # fmt: skip
        assert topic_parts(bad) is None, bad


def test_bridge_config_refuses_what_mosquitto_would_misread() -> None:
    ok = BridgeSpec("east", "central.example", 8883, "east", "pw", "/etc/campusmon/ca.crt")
    text = render(ok)
    assert "topic meters/# out 1 campus/v1/ east/campus/v1/" in text
    assert "cleansession false" in text and "bridge_cafile /etc/campusmon/ca.crt" in text
    assert "\nmax_inflight_messages 0\n" in text  # 2.0.11 loses readings with a cap (the test above)
    for bad in (
        BridgeSpec("east/x", "h", 8883, "east", "pw"),
        BridgeSpec("east", "h", 8883, "east", "two words"),
        BridgeSpec("east", "h", 0, "east", "pw"),
        BridgeSpec("east", "h", 8883, "east", "pw", None, "c.crt", "c.key"),
    ):
        with pytest.raises(BridgeError):
            render(bad)
