"""The locked broker the project writes: identities, per-device ACL, revocation, no session takeover.

Every test runs against a real Mosquitto started with the project's default (locked) configuration
and credentials made by the same registry ``campusmon devices`` uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from campusmon.devices import DeviceRegistry
from campusmon.mqtt import MqttAuth, make_client
from campusmon.services import Mosquitto, free_port
from campusmon.wire import METER_TOPIC
from collectors.mqtt_collector import MqttCollector
from firmware_sim.mqtt_meters import BackpressurePublisher
from tests.conftest import ROOT
from tests.helpers import stored, wait_until


class Probe:
    """A paho client that records what happens to it, for tests to wait on."""

    def __init__(
        self,
        port: int,
        auth: MqttAuth | None,
        client_id: str = "",
        clean: bool = True,
        expiry: int = 0,
        raw: bool = False,
    ) -> None:
        """``raw``: exactly this client id on the wire, as ``mosquitto_sub -i`` would send it."""
        if raw:
            self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
            if auth is not None:
                self.c.username_pw_set(auth.username, auth.password)
        else:
            self.c = make_client(client_id, auth)
        self.connack = threading.Event()
        self.reason: object = None
        self.session_present: bool | None = None
        self.gone = threading.Event()
        self.disconnects = 0
        self.cv = threading.Condition()
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, object] = {}
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = expiry
        self.c.reconnect_delay_set(60, 60)  # one attempt per test: a refusal must stay visible
        self.c.connect("127.0.0.1", port, clean_start=clean, properties=props)
        self.c.loop_start()

    def _on_connect(self, _c, _u, flags, rc, _p) -> None:
        self.reason = rc
        self.session_present = flags.session_present
        self.connack.set()

    def _on_disconnect(self, _c, _u, _f, _rc, _p) -> None:
        self.disconnects += 1
        self.gone.set()

    def _on_message(self, _c, _u, m) -> None:
        with self.cv:
            self.messages.append(m)
            self.cv.notify_all()

    def _on_subscribe(self, _c, _u, mid, codes, _p) -> None:
        with self.cv:
            self.acks[mid] = codes
            self.cv.notify_all()

    @property
    def accepted(self) -> bool:
        return self.connack.is_set() and not getattr(self.reason, "is_failure", True)

    def wait_connack(self) -> object:
        assert self.connack.wait(10), "no CONNACK"
        return self.reason

    def subscribe(self, topic: str, qos: int = 1) -> object:
        """SUBSCRIBE and wait for its SUBACK: every message the broker sent before it has arrived."""
        _, mid = self.c.subscribe(topic, qos)
        with self.cv:
            assert self.cv.wait_for(lambda: mid in self.acks, 10), "no SUBACK"
            return self.acks[mid]

    def payloads(self) -> list[bytes]:
        with self.cv:
            return [m.payload for m in self.messages]

    def wait_payloads(self, n: int) -> list[bytes]:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.messages) >= n, 10), f"{len(self.messages)} of {n}"
            return [m.payload for m in self.messages]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, DeviceRegistry]]:
    """The project's default broker (not the suite's open one) with an empty device registry."""
    srv = Mosquitto(tmp_path / "mq", free_port())
    reg = DeviceRegistry(srv.data_dir)
    srv.start()
    yield srv, reg
    srv.stop()


def _add(srv: Mosquitto, reg: DeviceRegistry, name: str, kind: str, **kw) -> MqttAuth:
    pw = reg.add(name, kind, **kw)
    assert srv.reload()
    return MqttAuth(name, pw)


def _reading(meter: str, ts: int, kwh: float) -> bytes:
    return json.dumps({"meter": meter, "ts": ts, "energy_kwh": kwh}).encode()


def test_default_config_is_locked(broker) -> None:
    srv, _ = broker
    conf = srv.conf.read_text()
    assert "allow_anonymous false" in conf and "allow_anonymous true" not in conf
    assert f"listener {srv.port} 127.0.0.1" in conf  # plain listener on loopback only
    assert "use_username_as_clientid true" in conf and "clientid_prefixes cm:" in conf


def test_anonymous_connect_is_refused(broker) -> None:
    srv, reg = broker
    _add(srv, reg, "m-1", "meter")
    p = Probe(srv.port, None)
    try:
        rc = p.wait_connack()
        assert getattr(rc, "is_failure", False) and "authori" in str(rc).lower(), rc
    finally:
        p.close()


def test_wrong_password_is_refused_and_the_right_one_accepted(broker) -> None:
    srv, reg = broker
    good = _add(srv, reg, "m-1", "meter")
    bad = Probe(srv.port, MqttAuth("m-1", good.password + "x"))
    ok = Probe(srv.port, good)
    try:
        assert getattr(bad.wait_connack(), "is_failure", False)
        ok.wait_connack()
        assert ok.accepted
    finally:
        bad.close()
        ok.close()


def test_meter_publishing_for_another_meter_is_neither_delivered_nor_stored(
    broker, influxdb, make_config
) -> None:
    srv, reg = broker
    col = _add(srv, reg, "collector-sec", "collector")
    a = _add(srv, reg, "m-a", "meter")
    _add(srv, reg, "m-b", "meter")
    data = {
        "buildings": [{"id": "b1"}],
        "meters": [
            {"id": "m-a", "building": "b1", "kind": "electricity"},
            {"id": "m-b", "building": "b1", "kind": "electricity"},
        ],
    }
    cfg = make_config(
        srv, influxdb, data=data, mqtt={"client_id": "collector-sec", "username": col.username,
                                        "password": col.password}
    )  # fmt: skip
    collector = MqttCollector(cfg).start()
    try:
        collector.store.ensure_database()
        assert collector.wait_connected(10)
        assert collector.subscribed.wait(10)
        ts = int(time.time()) // 60 * 60 - 600
        pub = BackpressurePublisher("127.0.0.1", srv.port, "", auth=a)
        pub.publish(METER_TOPIC.format(meter_id="m-b"), _reading("m-b", ts, 999.0))  # forged
        pub.publish(METER_TOPIC.format(meter_id="m-a"), _reading("m-a", ts, 1.0))  # its own
        pub.close(10)
        # The broker handles one client's publishes in order: once A's own reading is stored,
        # the forged one before it would have been delivered already.
        wait_until(lambda: stored(collector.store, ("energy_kwh",)), 20, 0.2, "m-a stored")
        assert collector.received == 1
        assert stored(collector.store, ("energy_kwh",)) == {("m-a", "energy_kwh", ts): 1.0}
    finally:
        collector.stop()


def test_revoked_device_is_cut_off_without_a_restart(broker) -> None:
    srv, reg = broker
    meter = _add(srv, reg, "m-1", "meter")
    other = _add(srv, reg, "m-2", "meter")
    pid = srv.proc.pid
    p, q = Probe(srv.port, meter), Probe(srv.port, other)
    try:
        p.wait_connack()
        q.wait_connack()
        assert p.accepted and q.accepted
        reg.revoke("m-1")
        assert srv.reload()
        assert p.gone.wait(10), "the revoked device is still connected"
        assert srv.proc.pid == pid and srv.proc.poll() is None  # same broker process
        again = Probe(srv.port, meter)
        assert getattr(again.wait_connack(), "is_failure", False)
        again.close()
        # Everyone else stays on: a round trip after the reload still succeeds on q's connection.
        assert q.subscribe("campus/v1/meters/m-2/readings") is not None
        assert q.disconnects == 0
    finally:
        p.close()
        q.close()


def test_rotated_password_cuts_off_the_old_one(broker) -> None:
    srv, reg = broker
    old = _add(srv, reg, "gw-1", "gateway")
    p = Probe(srv.port, old)
    try:
        p.wait_connack()
        assert p.accepted
        new = MqttAuth("gw-1", reg.rotate("gw-1"))
        assert srv.reload()
        assert p.gone.wait(10)
        fresh = Probe(srv.port, new)
        fresh.wait_connack()
        assert fresh.accepted
        fresh.close()
    finally:
        p.close()


def test_subscriber_without_read_rights_receives_nothing(broker) -> None:
    srv, reg = broker
    col = _add(srv, reg, "collector-x", "collector")
    snoop = _add(srv, reg, "m-snoop", "meter")
    gw = _add(srv, reg, "gw-1", "gateway")
    reader = Probe(srv.port, col)
    spy = Probe(srv.port, snoop)
    try:
        reader.wait_connack()
        spy.wait_connack()
        reader.subscribe("campus/v1/#")
        spy.subscribe("campus/v1/#")
        pub = BackpressurePublisher("127.0.0.1", srv.port, "", auth=gw)
        pub.publish("campus/v1/gateways/gw-1/readings", b"[]")
        pub.close(10)
        assert reader.wait_payloads(1) == [b"[]"]  # the message was delivered to who may read it
        spy.subscribe("campus/v1/meters/m-snoop/readings")  # a round trip: anything queued has come
        assert spy.payloads() == []
    finally:
        reader.close()
        spy.close()


def test_session_takeover_with_the_collectors_client_id_is_refused_and_nothing_queued_is_lost(broker) -> None:
    srv, reg = broker
    col = _add(srv, reg, "campusmon-collector", "collector")
    meter = _add(srv, reg, "m-1", "meter")
    topic = METER_TOPIC.format(meter_id="m-1")
    # The collector's persistent session holds a subscription, then it goes offline.
    c = Probe(srv.port, col, "campusmon-collector", clean=False, expiry=3600)
    c.wait_connack()
    c.subscribe("campus/v1/meters/#")
    c.close()
    pub = BackpressurePublisher("127.0.0.1", srv.port, "", auth=meter)
    for i in range(5):
        pub.publish(topic, _reading("m-1", 1_700_000_000 + i, float(i)))
    pub.flush(10)
    # Someone else connects with the collector's client id and a clean start, the way
    # `mosquitto_sub -i campusmon-collector` does: anonymously, and with credentials of its own.
    for who in (None, meter):
        p = Probe(srv.port, who, "campusmon-collector", clean=True, raw=True)
        assert getattr(p.wait_connack(), "is_failure", False)
        p.close()
    thief = Probe(srv.port, meter, "campusmon-collector", clean=True)  # the prefixed id is accepted ...
    thief.wait_connack()
    assert thief.accepted  # ... as itself: its session is its user name's, not the collector's
    # The collector, back online, finds its session and every reading queued in it.
    back = Probe(srv.port, col, "campusmon-collector", clean=False, expiry=3600)
    try:
        back.wait_connack()
        assert back.session_present is True
        got = back.wait_payloads(5)
        assert sorted(json.loads(p)["energy_kwh"] for p in got) == [0.0, 1.0, 2.0, 3.0, 4.0]
        # And a second connection with the collector's id while it is online does not kick it off.
        thief2 = Probe(srv.port, None, "campusmon-collector", clean=True, raw=True)
        thief2.wait_connack()
        back.subscribe("campus/v1/meters/m-1/readings")  # a round trip on the collector's link
        assert back.disconnects == 0
        thief2.close()
    finally:
        back.close()
        thief.close()
        pub.close(5)


def _devices_cli(srv: Mosquitto, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPUSMON_")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "campusmon.cli", "devices", *args, "-c", "deploy/campus.yaml",
           "--broker-dir", str(srv.data_dir)]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_devices_cli_adds_lists_rotates_and_revokes_on_a_running_broker(broker) -> None:
    srv, _ = broker
    r = _devices_cli(srv, "add", "e-dorm-1-main")
    assert r.returncode == 0 and "broker reloaded" in r.stdout, r.stderr
    pw = re.search(r"password: (\S+)", r.stdout).group(1)
    p = Probe(srv.port, MqttAuth("e-dorm-1-main", pw))
    try:
        p.wait_connack()
        assert p.accepted
        listed = _devices_cli(srv, "list").stdout
        assert "e-dorm-1-main\tmeter" in listed and pw not in listed  # the password is never kept
        assert pw not in (srv.data_dir / "passwd").read_text()
        r = _devices_cli(srv, "revoke", "e-dorm-1-main")
        assert r.returncode == 0 and "broker reloaded" in r.stdout
        assert p.gone.wait(10)
        assert _devices_cli(srv, "revoke", "e-dorm-1-main").returncode == 1  # says so, no traceback
    finally:
        p.close()


def test_the_api_publishes_alerts_as_itself_and_never_kicks_the_collector(broker, tmp_path) -> None:
    from api.alerts.config import parse_alerts
    from api.alerts.notify.dispatcher import Dispatcher
    from api.alerts.store import AlertStore
    from campusmon.config import parse_config
    from campusmon.db import init_db
    from tests.test_alert_notify import CAMPUS, finding

    srv, reg = broker
    col = _add(srv, reg, "campusmon-collector", "collector")
    api = _add(srv, reg, "campusmon-api", "api")
    mon = _add(srv, reg, "mon", "monitor")
    collector = Probe(srv.port, col, "campusmon-collector", clean=False, expiry=3600)
    watcher = Probe(srv.port, mon)
    try:
        collector.wait_connack()
        watcher.wait_connack()
        watcher.subscribe("campus/v1/alerts/#")
        mq = {"port": srv.port, "client_id": "campusmon-collector", "username": col.username,
              "password": col.password}  # fmt: skip
        for n, extra in enumerate(({}, {"api_username": api.username, "api_password": api.password})):
            cfg = parse_config({**CAMPUS, "database": {"url": f"sqlite:///{tmp_path}/a{n}.sqlite"},
                                "alerts": {"mqtt": {"enabled": True}}, "mqtt": {**mq, **extra}}, "t",
                               environ={})  # fmt: skip
            _e, sessions = init_db(cfg.database.url)
            acfg = parse_alerts(cfg)
            store, disp = AlertStore(cfg, acfg, sessions), Dispatcher(cfg, acfg, sessions)
            store.apply([finding()])
            try:
                disp.run_once()
            finally:
                disp.close()
            if not extra:  # without an identity of its own the API refuses to borrow the collector's
                with sessions() as s:
                    from api.alerts.models import Delivery

                    err = s.query(Delivery).one().last_error
                assert "api_username" in err
        assert watcher.wait_payloads(1) and json.loads(watcher.payloads()[0])["type"] == "opened"
        collector.subscribe("campus/v1/meters/x/readings")  # a round trip on the collector's link
        assert collector.disconnects == 0
    finally:
        collector.close()
        watcher.close()
