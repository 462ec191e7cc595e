"""Notifications: webhook formats and signatures, retries while a receiver is down, e-mail, MQTT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from api.alerts.config import Webhook, parse_alerts
from api.alerts.notify import formats
from api.alerts.notify.dispatcher import Dispatcher, backoff, deliveries_json, retry_delivery, topic_for
from api.alerts.rules.base import Finding, Level, Subject
from api.alerts.store import AlertStore
from campusmon.config import parse_config
from campusmon.db import init_db
from campusmon.services import free_port

T0 = 1_760_000_000
CAMPUS = {
    "buildings": [{"id": "d1", "name": "Dorm 1", "type": "dorm"}],
    "meters": [{"id": "e-r1", "building": "d1", "kind": "electricity", "room": "d1-101"}],
}


def finding(level: Level = Level.FIRING, ts: int = T0) -> Finding:
    return Finding(
        "dorm.high_power",
        Subject("room", "d1-101", "d1"),
        level,
        ts,
        since=ts,
        value=2100.0,
        threshold=950.0,
        unit="W",
        waste_per_day=45.6,
        waste_unit="kWh",
        meter="e-r1",
        detail={"step_w": 1900.0, "base_w": 200.0, "lasted_s": 30},
    )


def event() -> dict[str, Any]:
    a = {
        "id": 7,
        "rule": "dorm.high_power",
        "title": "High-power appliance in a dorm room: room d1-101, Dorm 1",
        "severity": "critical",
        "message": "Room power jumped by 1,900 W.",
        "subject": {"kind": "room", "id": "d1-101"},
        "since": "2025-10-09T16:53:20+08:00",
        "building": "d1",
    }
    return {"id": 42, "type": "opened", "alert_id": 7, "at": T0, "actor": "rule", "alert": a}


def test_generic_webhook_is_signed_with_hmac_sha256() -> None:
    w = Webhook(name="ops", url="https://example.org/hook", secret="s3cret")
    req = formats.build(w, event(), 5, T0 + 0.7, "https://campus/api/v1/alerts/7")
    body = json.loads(req.body)
    assert body["event"] == "opened" and body["alert"]["id"] == 7 and body["link"].endswith("/7")
    ts = req.headers[formats.TIMESTAMP_HEADER]
    expect = hmac.new(b"s3cret", f"{ts}.".encode() + req.body, hashlib.sha256).hexdigest()
    assert req.headers[formats.SIGNATURE_HEADER] == "sha256=" + expect
    assert formats.verify_generic("s3cret", ts, req.body, req.headers[formats.SIGNATURE_HEADER])
    assert not formats.verify_generic("s3cret", ts, req.body + b" ", req.headers[formats.SIGNATURE_HEADER])
    assert not formats.verify_generic("other", ts, req.body, req.headers[formats.SIGNATURE_HEADER])


def test_wecom_dingtalk_and_feishu_bodies() -> None:
    we = formats.build(
        Webhook(name="w", url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K", format="wecom"),
        event(),
        1,
        T0,
    )
    doc = json.loads(we.body)
    assert doc["msgtype"] == "markdown" and "[CRITICAL] NEW" in doc["markdown"]["content"]
    assert len(doc["markdown"]["content"].encode()) <= formats.WECOM_MAX_BYTES

    dt = formats.build(
        Webhook(
            name="d",
            url="https://oapi.dingtalk.com/robot/send?access_token=T",
            format="dingtalk",
            secret="SECabc",
        ),
        event(),
        1,
        1700000000.123,
    )
    q = parse_qs(urlparse(dt.url).query)
    assert q["access_token"] == ["T"] and q["timestamp"] == ["1700000000123"]
    mac = hmac.new(b"SECabc", b"1700000000123\nSECabc", hashlib.sha256).digest()
    assert q["sign"] == [base64.b64encode(mac).decode()]
    doc = json.loads(dt.body)
    assert doc["msgtype"] == "markdown" and doc["markdown"]["title"].startswith("[CRITICAL]")

    fs = formats.build(
        Webhook(
            name="f", url="https://open.feishu.cn/open-apis/bot/v2/hook/x", format="feishu", secret="fsec"
        ),
        event(),
        1,
        1700000000.9,
    )
    doc = json.loads(fs.body)
    assert doc["msg_type"] == "text" and doc["timestamp"] == "1700000000"
    mac = hmac.new(b"1700000000\nfsec", b"", hashlib.sha256).digest()
    assert doc["sign"] == base64.b64encode(mac).decode()
    assert "Room power jumped" in doc["content"]["text"]
    # Bots say "no" inside an HTTP 200.
    assert formats.accepted("wecom", 200, b'{"errcode":0,"errmsg":"ok"}') == (True, "")
    assert formats.accepted("dingtalk", 200, b'{"errcode":310000,"errmsg":"sign not match"}')[0] is False
    assert formats.accepted("feishu", 200, b'{"code":19021,"msg":"sign match fail"}')[0] is False
    assert formats.accepted("generic", 503, b"busy")[0] is False


def openssl_hmac_sha256_b64(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 by OpenSSL's command line: an implementation independent of the code under test."""
    import subprocess

    out = subprocess.run(
        ["openssl", "dgst", "-sha256", "-mac", "HMAC", "-macopt", f"hexkey:{key.hex()}", "-binary"],
        input=message,
        capture_output=True,
        check=True,
    ).stdout
    return base64.b64encode(out).decode()


def test_bot_signatures_match_independent_vectors() -> None:
    """Not the code's own formula: a published vector and OpenSSL's HMAC.

    Neither DingTalk's nor Feishu's documentation gives a worked example with its expected sign (their
    sample code signs the current time), and WeCom group robots take no signature (the key is in the
    URL). So DingTalk is checked against the test vector of an independent implementation (the
    ``dingding`` crate's ``creates_expected_signature``: secret "secret", timestamp 1700000000000),
    and every format against ``openssl dgst -hmac``, on the vendors' documented strings to sign.
    """
    ev = event()
    dt = formats.build(
        Webhook(
            name="d",
            url="https://oapi.dingtalk.com/robot/send?access_token=T",
            format="dingtalk",
            secret="secret",
        ),
        ev,
        1,
        1_700_000_000.0,
    )
    assert dt.url.endswith(
        "&timestamp=1700000000000&sign=OuzzJR5%2BxZ4%2FEYwqtNt6sMYZQMTa%2FHEGvc9miJe7XzY%3D"
    )

    secret = "SEC5a3ecf88f2b3eb50db30ecfc00f53033ac909c99bf7f88fd612bda89d7f3a9dc"
    dt = formats.build(
        Webhook(
            name="d",
            url="https://oapi.dingtalk.com/robot/send?access_token=T",
            format="dingtalk",
            secret=secret,
        ),
        ev,
        1,
        1_546_084_445.901,
    )
    q = parse_qs(urlparse(dt.url).query)
    assert q["timestamp"] == ["1546084445901"]
    assert q["sign"] == [openssl_hmac_sha256_b64(secret.encode(), f"1546084445901\n{secret}".encode())]

    # Feishu keys the HMAC with "<timestamp>\n<secret>" and signs nothing; 1599360473 is its docs' example.
    fs = formats.build(
        Webhook(
            name="f", url="https://open.feishu.cn/open-apis/bot/v2/hook/x", format="feishu", secret="飞书-key"
        ),
        ev,
        1,
        1_599_360_473.4,
    )
    doc = json.loads(fs.body)
    assert doc["timestamp"] == "1599360473"
    assert doc["sign"] == openssl_hmac_sha256_b64("1599360473\n飞书-key".encode(), b"")

    g = formats.build(Webhook(name="g", url="https://example.org/h", secret="s3cret"), ev, 9, 1_700_000_000.5)
    want = openssl_hmac_sha256_b64(b"s3cret", b"1700000000." + g.body)
    assert g.headers[formats.SIGNATURE_HEADER] == "sha256=" + base64.b64decode(want).hex()

    we = formats.build(
        Webhook(name="w", url="https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K", format="wecom"),
        ev,
        1,
        T0,
    )
    assert we.url == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=K"  # no signature to add


class Receiver:
    """A webhook receiver that can be down (not listening) and come up later on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.httpd: ThreadingHTTPServer | None = None

    def up(self) -> None:
        got = self.got

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got.append((dict(self.headers), body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()


def setup(tmp_path: Path, alerts: dict[str, Any]) -> tuple[AlertStore, Dispatcher, list[float]]:
    cfg = parse_config(
        {**CAMPUS, "database": {"url": f"sqlite:///{tmp_path}/n.sqlite"}, "alerts": alerts}, "t", environ={}
    )
    _e, sessions = init_db(cfg.database.url)
    acfg = parse_alerts(cfg)
    clock = [float(T0)]
    return (
        AlertStore(cfg, acfg, sessions, clock=lambda: clock[0]),
        Dispatcher(cfg, acfg, sessions, lambda: clock[0]),
        clock,
    )


def test_webhook_receiver_down_is_retried_with_backoff_and_delivered_later(tmp_path: Path) -> None:
    port = free_port()
    hook = {"name": "ops", "url": f"http://127.0.0.1:{port}/alerts", "secret": "k", "timeout_s": 2}
    store, disp, clock = setup(
        tmp_path,
        {"webhooks": [hook], "mqtt": {"enabled": False}, "delivery": {"backoff_s": 10, "max_attempts": 5}},
    )
    store.apply([finding()])
    assert disp.run_once() == 0
    d = deliveries_json(store.sessions)[0]
    assert d["status"] == "pending" and d["attempts"] == 1 and "Connect" in d["last_error"]
    assert d["next_attempt_at"] == T0 + 10
    store.apply([finding(Level.OK, T0 + 5)])  # a second event queues behind the first, in order
    clock[0] = T0 + 5
    assert disp.run_once() == 0  # not due yet: nothing is sent out of order
    rx = Receiver(port)
    rx.up()
    try:
        clock[0] = T0 + 10
        assert disp.run_once() == 2
    finally:
        rx.down()
    events = [json.loads(body)["event"] for _h, body in rx.got]
    assert events == ["opened", "cleared"]
    headers, body = rx.got[0]
    assert formats.verify_generic(
        "k", headers[formats.TIMESTAMP_HEADER], body, headers[formats.SIGNATURE_HEADER]
    )
    assert all(d["status"] == "delivered" for d in deliveries_json(store.sessions))
    assert backoff(1, 5, 60) == 5 and backoff(3, 5, 60) == 20 and backoff(9, 5, 60) == 60


def test_failed_deliveries_are_kept_visible_and_can_be_retried(tmp_path: Path) -> None:
    port = free_port()
    store, disp, clock = setup(
        tmp_path,
        {
            "webhooks": [{"name": "ops", "url": f"http://127.0.0.1:{port}/x", "timeout_s": 1}],
            "mqtt": {"enabled": False},
            "delivery": {"backoff_s": 1, "max_attempts": 3},
        },
    )
    store.apply([finding()])
    for k in range(4):
        clock[0] = T0 + 100 * k
        disp.run_once()
    d = deliveries_json(store.sessions, "failed")
    assert len(d) == 1 and d[0]["attempts"] == 3 and d[0]["last_error"]
    assert retry_delivery(store.sessions, d[0]["id"])
    rx = Receiver(port)
    rx.up()
    try:
        assert disp.run_once() == 1
    finally:
        rx.down()
    assert deliveries_json(store.sessions, "failed") == []


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough SMTP (RFC 5321) to accept one message at a time; the stdlib has no server since 3.12."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.messages: list[bytes] = []
        sink = self

        class H(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 sink ESMTP\r\n")
                while line := self.rfile.readline():
                    cmd = line.strip().upper()
                    if cmd.startswith((b"EHLO", b"HELO")):
                        self.wfile.write(b"250 sink\r\n")
                    elif cmd.startswith((b"MAIL", b"RCPT", b"RSET", b"NOOP")):
                        self.wfile.write(b"250 OK\r\n")
                    elif cmd == b"DATA":
                        self.wfile.write(b"354 go on\r\n")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk
                        sink.messages.append(data)
                        self.wfile.write(b"250 queued\r\n")
                    elif cmd == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"502 no\r\n")

        super().__init__(("127.0.0.1", port), H)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_email_over_smtp(tmp_path: Path) -> None:
    port = free_port()
    sink = SmtpSink(port)
    try:
        smtp = {
            "host": "127.0.0.1",
            "port": port,
            "sender": "alerts@campus.example",
            "to": ["ops@campus.example"],
            "min_severity": "major",
        }
        store, disp, _clock = setup(
            tmp_path,
            {"smtp": smtp, "mqtt": {"enabled": False}, "public_url": "https://energy.campus.example"},
        )
        store.apply([finding()])
        assert disp.run_once() == 1
    finally:
        sink.shutdown()
        sink.server_close()
    import email
    from email import policy

    msg = email.message_from_bytes(sink.messages[0], policy=policy.default)
    assert msg["Subject"].startswith("[CRITICAL] NEW: High-power appliance in a dorm room")
    assert msg["To"] == "ops@campus.example"
    body = msg.get_content()
    assert "https://energy.campus.example/api/v1/alerts/1" in body and "fire risk" in body


def test_alert_events_are_published_on_mqtt(tmp_path: Path, mosquitto) -> None:
    got: list[mqtt.MQTTMessage] = []
    subscribed, received = threading.Event(), threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alerts-test-sub")
    sub.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        got.append(m)
        received.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("campus/v1/alerts/#", qos=1)
    sub.loop_start()
    try:
        cfg_alerts = {"mqtt": {"enabled": True, "retain": True}}
        cfg = parse_config(
            {
                **CAMPUS,
                "database": {"url": f"sqlite:///{tmp_path}/m.sqlite"},
                "alerts": cfg_alerts,
                "mqtt": {"port": mosquitto.port, "client_id": "alerts-test"},
            },
            "t",
            environ={},
        )
        _e, sessions = init_db(cfg.database.url)
        acfg = parse_alerts(cfg)
        store, disp = AlertStore(cfg, acfg, sessions), Dispatcher(cfg, acfg, sessions)
        assert subscribed.wait(10), "no SUBACK from the broker"
        store.apply([finding()])
        assert disp.run_once() == 1
        assert received.wait(10), "the alert was not published"
        disp.close()
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert got and got[0].topic == "campus/v1/alerts/dorm.high_power/d1-101"
    doc = json.loads(got[0].payload)
    assert doc["type"] == "opened" and doc["alert"]["subject"]["id"] == "d1-101"
    assert topic_for({"rule": "x.y", "subject": {"id": "a/b+#"}}) == "campus/v1/alerts/x.y/a_b__"


def test_a_dead_webhook_with_a_long_backlog_does_not_starve_other_channels(tmp_path: Path) -> None:
    """250 events owed to a webhook that is down and to e-mail: every e-mail still goes out."""
    port = free_port()
    sink = SmtpSink(free_port())
    try:
        smtp = {
            "host": "127.0.0.1",
            "port": sink.server_address[1],
            "sender": "a@x",
            "to": ["o@x"],
            "events": ["opened", "cleared"],
        }
        hook = {"name": "dead", "url": f"http://127.0.0.1:{port}/x", "timeout_s": 1}
        store, disp, clock = setup(
            tmp_path,
            {
                "webhooks": [hook],
                "smtp": smtp,
                "mqtt": {"enabled": False},
                "delivery": {"backoff_s": 5, "max_backoff_s": 60, "max_attempts": 1000},
            },
        )
        for k in range(125):  # opened, cleared, opened, ...: 250 events, 500 deliveries
            store.apply([finding(Level.FIRING, T0 + 2 * k)])
            store.apply([finding(Level.OK, T0 + 2 * k + 1)])
        for run in range(4):
            clock[0] = T0 + 1000 + 100 * run
            disp.run_once()
        pending = deliveries_json(store.sessions, "pending", limit=1000)
        assert {d["channel"] for d in pending} == {"webhook:dead"}
        assert len(pending) == 250
        assert len(sink.messages) == 250
        # The dead webhook was tried once per run, at the head of its queue only.
        assert sorted(d["attempts"] for d in pending)[-2:] == [0, 4]
    finally:
        sink.shutdown()
        sink.server_close()


UNITS_CAMPUS = {
    "buildings": [{"id": "d1", "name": "Dorm 1", "type": "dorm"}, {"id": "lab", "name": "Lab", "type": "lab"}],
    "meters": [
        {"id": "e-r1", "building": "d1", "kind": "electricity", "room": "d1-101"},
        {"id": "e-lab-1", "building": "lab", "kind": "electricity"},
        {"id": "e-lab-2", "building": "lab", "kind": "electricity"},
    ],
    "units": [
        {"id": "housing", "parts": [{"building": "d1"}], "notify": ["housing-hook"], "email": ["housing@x.org"]},
        {"id": "physics", "parts": [{"building": "lab", "meters": ["e-lab-2"]}], "notify": ["physics-hook"],
         "email": ["physics@x.org"]},
        {"id": "chem", "parts": [{"building": "lab", "share": 0.5}], "notify": ["chem-hook"]},
    ],
}  # fmt: skip


def lab_finding(meter: str, ts: int = T0) -> Finding:
    return Finding(
        "after_hours.usage", Subject("meter", meter, "lab"), Level.FIRING, ts, since=ts, value=9.0,
        threshold=2.0, unit="kW", meter=meter,
    )  # fmt: skip


def test_alerts_are_routed_to_the_channels_of_their_unit(tmp_path: Path) -> None:
    """A unit's webhooks and recipients get its alerts and no other unit's; campus-wide channels get all."""
    names = ("housing-hook", "physics-hook", "chem-hook", "campus-hook")
    rx = {n: Receiver(free_port()) for n in names}
    sink = SmtpSink(free_port())
    for r in rx.values():
        r.up()
    try:
        hooks = [{"name": n, "url": f"http://127.0.0.1:{rx[n].port}/h", "timeout_s": 2} for n in names]
        smtp = {"host": "127.0.0.1", "port": sink.server_address[1], "sender": "a@x.org", "to": ["ops@x.org"],
                "min_severity": "info"}  # fmt: skip
        cfg = parse_config(
            {**UNITS_CAMPUS, "database": {"url": f"sqlite:///{tmp_path}/u.sqlite"},
             "alerts": {"webhooks": hooks, "smtp": smtp, "mqtt": {"enabled": False}}},
            "t", environ={},
        )  # fmt: skip
        _e, sessions = init_db(cfg.database.url)
        acfg = parse_alerts(cfg)
        store, disp = (
            AlertStore(cfg, acfg, sessions, clock=lambda: T0),
            Dispatcher(cfg, acfg, sessions, lambda: T0),
        )
        store.apply([finding(), lab_finding("e-lab-2"), lab_finding("e-lab-1")])
        by_alert: dict[int, set[str]] = {}
        for d in deliveries_json(sessions, limit=100):
            by_alert.setdefault(d["alert_id"], set()).add(d["channel"])
        assert by_alert == {
            1: {"webhook:housing-hook", "webhook:campus-hook", "smtp", "email:housing"},  # the dorm room
            2: {"webhook:physics-hook", "webhook:campus-hook", "smtp", "email:physics"},  # physics' own meter
            3: {"webhook:chem-hook", "webhook:campus-hook", "smtp"},  # the rest of the shared lab
        }
        assert disp.run_once() == 11
    finally:
        for r in rx.values():
            r.down()
        sink.shutdown()
        sink.server_close()
    subjects = {n: sorted(json.loads(b)["alert"]["subject"]["id"] for _h, b in r.got) for n, r in rx.items()}
    assert subjects == {"housing-hook": ["d1-101"], "physics-hook": ["e-lab-2"], "chem-hook": ["e-lab-1"],
                        "campus-hook": ["d1-101", "e-lab-1", "e-lab-2"]}  # fmt: skip
    import email
    from email import policy

    to = sorted(email.message_from_bytes(m, policy=policy.default)["To"] for m in sink.messages)
    assert to == ["housing@x.org", "ops@x.org", "ops@x.org", "ops@x.org", "physics@x.org"]


def test_unit_routing_is_checked_at_load(tmp_path: Path) -> None:
    import pytest

    from campusmon.config import ConfigError

    base = {**UNITS_CAMPUS, "database": {"url": f"sqlite:///{tmp_path}/c.sqlite"}}
    cfg = parse_config({**base, "alerts": {"mqtt": {"enabled": False}}}, "campus.yaml", environ={})
    with pytest.raises(ConfigError) as e:
        parse_alerts(cfg, "campus.yaml")
    text = str(e.value)
    assert (
        "campus.yaml: units[0] (housing).notify: 'housing-hook' is not a webhook under alerts.webhooks"
        in text
    )
    assert "units[1] (physics).email: needs alerts.smtp, the server that sends it" in text
    bad = {**UNITS_CAMPUS, "units": [{"id": "x", "parts": [{"building": "d1"}], "email": ["not-an-address"]}]}
    with pytest.raises(ConfigError, match="not an e-mail address: 'not-an-address'"):
        parse_config(bad, "campus.yaml", environ={})
