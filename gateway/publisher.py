"""MQTT side of the gateway: drains the outbox as SenML packs and deletes rows only on PUBACK.

MQTT 5 by default: its PUBACK carries a reason code, so a broker that refuses a publish (not
authorised, quota exceeded) is told apart from one that stored it, where 3.1.1 acks or drops the
connection silently; CONNACK's Receive Maximum also caps our in-flight window. 3.1.1 stays
available for old brokers.

Flow (docs/references.md#mqtt-flow): a fixed client id; at most ``max_inflight`` packs awaiting PUBACK, each
``publish`` return code checked (paho refuses with ERR_QUEUE_SIZE once message ids wrap or its
queue is full, without raising); packs in flight when the link drops are re-sent by paho with
DUP set after the reconnect, under the same message id, so the mid -> rows map stays valid.
A retained status with a last will of ``offline`` tells the campus whether the gateway is alive.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from campusmon.mqtt import MqttAuth, make_client
from campusmon.wire import GATEWAY_STATUS_TOPIC, GATEWAY_TOPIC, TOPIC_ROOT, encode_senml
from gateway.config import MqttSection
from gateway.outbox import Outbox

log = logging.getLogger(__name__)

GATEWAY_HEALTH_TOPIC = TOPIC_ROOT + "/gateways/{gateway_id}/health"


@dataclass
class PublisherCounters:
    packs_sent: int = 0
    readings_acked: int = 0
    refused: int = 0
    queue_full: int = 0
    connects: int = 0
    disconnects: int = 0


class TokenBucket:
    """Packs per second while catching up, with a one-second burst, so a backlog does not flood."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = max(1.0, rate)
        self.stamp = time.monotonic()

    def delay(self) -> float:
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Publisher:
    def __init__(self, cfg: MqttSection, gateway_id: str, client_id: str, outbox: Outbox,
                 status: Callable[[], dict[str, Any]]) -> None:  # fmt: skip
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.status = status
        self.topic = GATEWAY_TOPIC.format(gateway_id=gateway_id)
        self.status_topic = GATEWAY_STATUS_TOPIC.format(gateway_id=gateway_id)
        self.health_topic = GATEWAY_HEALTH_TOPIC.format(gateway_id=gateway_id)
        self.c = PublisherCounters()
        self.window = max(1, cfg.max_inflight - 1)
        self._inflight: dict[int, list[int]] = {}  # mid -> outbox row ids; owned by the drain thread
        self._acks: queue.Queue[tuple[int, bool, str]] = queue.Queue()
        self._cursor = 0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._bucket = TokenBucket(cfg.drain_rate_msgs_s)
        self.v5 = cfg.protocol == "5"
        self.client = self._make_client(client_id)
        self._thread = threading.Thread(target=self._drain, name="mqtt-drain", daemon=True)

    def _make_client(self, client_id: str) -> mqtt.Client:
        c = make_client(client_id, MqttAuth.of(self.cfg), protocol=self.cfg.protocol)
        c.max_inflight_messages_set(self.window)
        c.reconnect_delay_set(1, self.cfg.reconnect_max_s)
        c.will_set(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        return c

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
        self.client.loop_start()
        self._thread.start()

    def stop(self, drain_timeout: float = 5.0) -> None:
        """Wait briefly for packs in flight, say ``offline`` on purpose (no will on a clean exit), leave."""
        if not self._thread.is_alive():
            return
        deadline = time.monotonic() + drain_timeout
        self._stop.set()
        self._thread.join(drain_timeout)
        while self._inflight and self._connected.is_set() and time.monotonic() < deadline:
            self._process_acks(0.1)
        if self._connected.is_set():
            info = self.client.publish(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.5, deadline - time.monotonic()))
            except (ValueError, RuntimeError):
                pass
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- paho callbacks (network thread: no locks of ours, hand over through queues) ---------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            log.error("mqtt broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, rc)
            return
        recv_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        # One slot stays free for the QoS 1 status, so paho never exceeds what the broker allows.
        self.window = max(1, min(self.cfg.max_inflight, int(recv_max or 65535)) - 1)
        self.c.connects += 1
        log.info("mqtt connected to %s:%d (window %d)", self.cfg.host, self.cfg.port, self.window)
        client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _flags: Any, rc: Any, _props: Any = None) -> None:
        if self._connected.is_set():
            self.c.disconnects += 1
            log.warning("mqtt disconnected (%s); %d packs in flight will be re-sent", rc, len(self._inflight))
        self._connected.clear()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _props: Any) -> None:
        self._acks.put((mid, not rc.is_failure, str(rc)))

    # -- status and health ----------------------------------------------------------------------

    def _status_payload(self, state: str) -> bytes:
        doc: dict[str, Any] = {"gateway": self.gateway_id, "state": state, "ts": int(time.time())}
        if state == "online":
            doc.update(self.status())
        return json.dumps(doc, separators=(",", ":")).encode()

    def publish_status(self) -> None:
        if self.connected:
            self._check(
                self.client.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
            )

    def publish_health(self, doc: dict[str, Any]) -> None:
        if self.connected:
            payload = json.dumps(
                {"gateway": self.gateway_id, "ts": int(time.time()), **doc}, separators=(",", ":")
            )
            self._check(self.client.publish(self.health_topic, payload, qos=0, retain=True))

    def _check(self, info: mqtt.MQTTMessageInfo) -> None:
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("mqtt: status/health publish not queued: %s", mqtt.error_string(info.rc))

    # -- the drain thread -----------------------------------------------------------------------

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._process_acks(0.0)
            if not self._connected.is_set():
                self._process_acks(0.2)
                continue
            if len(self._inflight) >= self.window:
                self._process_acks(0.5)
                continue
            rows = self.outbox.fetch(self._cursor, self.cfg.pack_max_readings)
            if not rows:
                if not self._acks.empty():
                    continue
                self.outbox.wait_beyond(self._cursor, 0.2)
                continue
            wait = self._bucket.delay()
            if wait > 0:
                self._process_acks(wait)
                continue
            self._send(rows)

    def _send(self, rows: list[tuple[int, Any]]) -> None:
        payload = encode_senml(r for _, r in rows)
        info = self.client.publish(self.topic, payload, qos=1)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            # Not queued (message id still in use after a wrap, or paho's queue is full): try again later.
            self.c.queue_full += 1
            self._bucket.tokens += 1.0
            self._process_acks(0.1)
            return
        # SUCCESS, or NO_CONN: paho keeps a QoS 1 message and sends it after the reconnect.
        self._inflight[info.mid] = [i for i, _ in rows]
        self._cursor = rows[-1][0]
        self.c.packs_sent += 1

    def _process_acks(self, timeout: float) -> None:
        try:
            item = self._acks.get(timeout=timeout) if timeout > 0 else self._acks.get_nowait()
        except queue.Empty:
            return
        acked: list[int] = []
        while True:
            mid, ok, why = item
            ids = self._inflight.pop(mid, None)
            if ids is not None:
                if ok:
                    acked.extend(ids)
                else:
                    self.c.refused += 1
                    log.error(
                        "mqtt broker refused a pack of %d readings (%s); it stays queued", len(ids), why
                    )
                    self._cursor = min(self._cursor, ids[0] - 1)
                    self._stop.wait(1.0)
            try:
                item = self._acks.get_nowait()
            except queue.Empty:
                break
        if acked:
            self.outbox.ack(acked)
            self.c.readings_acked += len(acked)

    def health(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "inflight": len(self._inflight),
            "packs_sent": self.c.packs_sent,
            "readings_acked": self.c.readings_acked,
            "refused": self.c.refused,
            "queue_full": self.c.queue_full,
            "connects": self.c.connects,
            "disconnects": self.c.disconnects,
        }
