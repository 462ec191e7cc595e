"""A gateway's own last word in its offline alert: ingest keeps it, the evaluator passes it, the rule quotes it.

The verdict of ``data.gateway_offline`` stays the data's; the gateway's retained status or last will
(``campus/v1/gateways/{id}/status``, recorded in ``gateway_status``) tells the reader what the
gateway said last, and when.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from api.accounting.settings import calendar_for
from api.alerts.backtest import backtest
from api.alerts.config import parse_alerts
from api.alerts.evaluate import window_findings
from api.alerts.messages import _local, compose
from api.alerts.rules.base import Finding, Level
from api.alerts.rules.context import GatewayWord, WindowContext
from api.alerts.series import Timeline, build_campus
from api.alerts.window import WindowEvaluator
from campusmon.config import CampusConfig
from campusmon.db import GatewayStatus, init_db
from campusmon.deadletter import DeadLetters
from campusmon.influx import open_store
from campusmon.ingest import Ingestor, Message
from campusmon.services import Server
from campusmon.wire import GATEWAY_STATUS_TOPIC
from collectors.mqtt_collector import MqttCollector
from tests.helpers import wait_until
from tests.test_alert_coverage import OUTAGE, _gateway_points, gateway_campus
from tests.test_alert_precision import S, write_meter
from tests.test_rules import TZ

# -- the rule, given a status ------------------------------------------------------------------------------


def _gateway_finding(cfg: CampusConfig, now: int, words: dict[str, GatewayWord]) -> Finding:
    pts = _gateway_points(cfg, lambda mid, ts: mid != "other" and OUTAGE[0] <= ts < OUTAGE[1])
    cal = calendar_for(cfg)
    timeline = Timeline.build(min(p[0][0] for p in pts.values()), now + 3600, TZ, cal)
    series = build_campus(cfg, timeline, pts, cal)
    ctx = WindowContext(now, timeline.complete_upto(now), timeline, series, {}, [], {}, words)
    found = window_findings(parse_alerts(cfg), ctx, lambda r, s: {}, ["data.offline", "data.gateway_offline"])
    return next(f for f in found if f.rule == "data.gateway_offline")


def test_the_gateway_alert_quotes_the_gateways_last_word_and_when_it_came() -> None:
    cfg = gateway_campus()
    now = OUTAGE[0] + 4 * 3600
    will = OUTAGE[0] + 60
    f = _gateway_finding(cfg, now, {"gw-b1": GatewayWord("offline", will)})
    assert f.level is Level.FIRING
    assert f.detail["last_status"] == {"state": "offline", "received_at": will}
    assert f.evidence["last_status"] == {"state": "offline", "received_at": will}
    msg = compose(cfg, parse_alerts(cfg), f, f.since)[1]
    assert f"The gateway's last word, {_local(will, TZ)}: offline (its last will" in msg, msg
    assert "m0, m1, m2, m3, m4" in msg, msg


def test_a_gateway_that_says_online_while_its_meters_are_silent_is_quoted_as_such() -> None:
    cfg = gateway_campus()
    f = _gateway_finding(cfg, OUTAGE[0] + 4 * 3600, {"gw-b1": GatewayWord("online", OUTAGE[0] - 3600)})
    msg = compose(cfg, parse_alerts(cfg), f, f.since)[1]
    assert f"last word, {_local(OUTAGE[0] - 3600, TZ)}: online (its retained status" in msg, msg


def test_no_status_or_one_received_after_the_time_judged_says_nothing() -> None:
    cfg = gateway_campus()
    now = OUTAGE[0] + 4 * 3600
    for words in ({}, {"gw-b1": GatewayWord("offline", now + 1)}, {"gw-other": GatewayWord("offline", now)}):
        f = _gateway_finding(cfg, now, words)
        assert f.level is Level.FIRING
        assert "last_status" not in f.detail and "last_status" not in f.evidence
        assert "last word" not in compose(cfg, parse_alerts(cfg), f, f.since)[1]


# -- ingest keeps it -----------------------------------------------------------------------------------------

GW = "gw-1"


def campus_data(gw: str) -> dict:
    return {
        "buildings": [{"id": "b1", "name": "Building 1"}],
        "gateways": [{"id": gw, "name": "Gateway 1", "building": "b1"}],
        "meters": [
            {"id": m, "building": "b1", "kind": "electricity", "category": "01000", "gateway": gw}
            for m in ("e-a", "e-b")
        ],
    }


DATA = campus_data(GW)


@pytest.fixture
def ingestor(influxdb: Server, make_config: Callable[..., CampusConfig]) -> Ingestor:
    cfg = make_config(None, influxdb, data=DATA)
    store = open_store(cfg)
    store.ensure_database()
    _, sessions = init_db(cfg.database.url)
    return Ingestor(cfg, store, DeadLetters(sessions), "test")


def _rows(ing: Ingestor) -> dict[str, GatewayStatus]:
    with ing.dead.sessions() as s:
        return {r.gateway: r for r in s.scalars(select(GatewayStatus))}


def test_ingest_keeps_each_gateways_last_status_and_its_state(ingestor: Ingestor) -> None:
    topic = GATEWAY_STATUS_TOPIC.format(gateway_id=GW)
    online = json.dumps({"gateway": GW, "state": "online", "ts": 1, "queued": 0}).encode()
    will = json.dumps({"gateway": GW, "state": "offline", "ts": 2}).encode()
    before = datetime.now(UTC) - timedelta(seconds=1)
    res = ingestor.process([Message(topic, online, "t")])
    assert res.stored == 0 and res.rejected == []
    assert _rows(ingestor)[GW].state == "online"
    ingestor.process([Message(topic, will, "t")])
    row = _rows(ingestor)[GW]
    assert (row.state, row.payload) == ("offline", will.decode())
    got = row.received_at if row.received_at.tzinfo else row.received_at.replace(tzinfo=UTC)
    assert got >= before
    # Not JSON: its text is the state; a bad gateway id in the topic is not kept.
    ingestor.process(
        [
            Message(GATEWAY_STATUS_TOPIC.format(gateway_id="gw-2"), b"offline", "t"),
            Message("campus/v1/gateways/bad id!/status", will, "t"),
        ]
    )
    rows = _rows(ingestor)
    assert sorted(rows) == [GW, "gw-2"] and rows["gw-2"].state == "offline"
    assert ingestor.dead.page(limit=10) == []


# -- end to end: a real last will through Mosquitto and the collector, quoted by the evaluator ----------------


def _die_with_a_last_will(port: int, gw: str) -> bytes:
    """Connect as the gateway does (retained last will of ``offline``), then drop the link without goodbye."""
    will = json.dumps({"gateway": gw, "state": "offline", "ts": int(time.time())}).encode()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"gateway-{gw}")
    c.will_set(GATEWAY_STATUS_TOPIC.format(gateway_id=gw), will, qos=1, retain=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    wait_until(c.is_connected, 10, what="gateway connected")
    c.loop_stop()
    sock = c.socket()
    assert sock is not None
    sock.close()  # no DISCONNECT: the broker publishes the will
    return will


def _clear_retained(port: int, topic: str) -> None:
    """Leave the session's broker as it was: an empty retained publish removes the will."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="clear-" + uuid.uuid4().hex[:8])
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def test_a_gateways_last_will_reaches_gateway_status_and_its_offline_alert(
    mosquitto: Server, influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    gw = "gw-will-" + uuid.uuid4().hex[:8]  # its own gateway: no retained status from other tests
    cfg = make_config(mosquitto, influxdb, data=campus_data(gw))
    now = int(time.time())
    for m in cfg.meters:
        m.commissioned = datetime.fromtimestamp(now - 3 * 86400, TZ).date()
    c = MqttCollector(cfg).start()
    try:
        c.store.ensure_database()
        assert c.wait_connected(10)
        _, sessions = init_db(cfg.database.url)

        def row() -> GatewayStatus | None:
            with sessions() as s:
                return s.get(GatewayStatus, gw)

        assert row() is None
        will = _die_with_a_last_will(cfg.mqtt.port, gw)
        got = wait_until(row, 20, what="the last will in gateway_status")
        assert (got.state, got.payload) == ("offline", will.decode())
        at = got.received_at if got.received_at.tzinfo else got.received_at.replace(tzinfo=UTC)
        # Both meters of the gateway went silent 3 hours ago.
        for m in cfg.meters:
            write_meter(c.store, m.id, lambda ts: 5.0, now - 9 * 3600, now - 3 * 3600)
        judged = float(int(at.timestamp()) + 1)  # the status was received by the time judged
        ev = WindowEvaluator(cfg, c.store, sessions, clock=lambda: judged)
        events = ev.run(rules=["data.offline", "data.gateway_offline"])
    finally:
        c.stop()
        _clear_retained(cfg.mqtt.port, GATEWAY_STATUS_TOPIC.format(gateway_id=gw))
    opened = [e["alert"] for e in events if e["type"] == "opened"]
    assert [(a["rule"], a["subject"]["id"]) for a in opened] == [("data.gateway_offline", gw)], opened
    alert = opened[0]
    quoted = {"state": "offline", "received_at": int(at.timestamp())}
    assert alert["detail"]["last_status"] == quoted
    assert alert["evidence"]["last_status"] == quoted
    msg = alert["message"]
    assert f"The gateway's last word, {_local(quoted['received_at'], cfg.site.tz)}: offline" in msg, msg
    assert "e-a, e-b" in msg, msg


# -- backtests read the statuses from the campus database ----------------------------------------------------


def test_a_backtest_quotes_the_recorded_status_and_says_nothing_without_one(
    influxdb: Server, make_config: Callable[..., CampusConfig]
) -> None:
    cfg = make_config(None, influxdb, data={**DATA, "site": {"timezone": "Asia/Shanghai"}})
    store = open_store(cfg)
    store.ensure_database()
    for m in cfg.meters:
        write_meter(store, m.id, lambda ts: 5.0, S, S + 10 * 3600)
    _, sessions = init_db(cfg.database.url)
    rules = ["data.offline", "data.gateway_offline"]

    def gateway_alert(db: sessionmaker | None) -> dict:
        res = backtest(cfg, store, S, S + 16 * 3600, rules=rules, step_s=900, sessions=db)
        [a] = res.alerts
        assert (a["rule"], a["subject"]["id"]) == ("data.gateway_offline", GW)
        return a

    for db in (None, sessions):  # no campus database; one with no status recorded
        a = gateway_alert(db)
        assert "last_status" not in a["detail"] and "last word" not in a["message"], a["message"]
    will = S + 10 * 3600 + 120
    with sessions.begin() as s:
        s.add(
            GatewayStatus(
                gateway=GW, received_at=datetime.fromtimestamp(will, UTC), state="offline", payload="{}"
            )
        )
    a = gateway_alert(sessions)
    store.close()
    assert a["detail"]["last_status"] == {"state": "offline", "received_at": will}
    assert f"The gateway's last word, {_local(will, cfg.site.tz)}: offline (its last will" in a["message"]
