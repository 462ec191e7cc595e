"""MQTT → InfluxDB collector with ack-after-store.

A message is acked only after its readings are in InfluxDB or in the dead-letter store. The broker
keeps every unacked message in a persistent session (fixed client id, MQTT 5 session expiry) and
hands over at most ReceiveMaximum of them, so while InfluxDB is down the collector stops acking,
its memory stays bounded by one batch, and the backlog waits safely in Mosquitto.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy.exc import OperationalError

from campusmon.config import CampusConfig
from campusmon.db import init_db
from campusmon.deadletter import DeadLetters
from campusmon.influx import InfluxStore, StoreUnavailable, open_store
from campusmon.ingest import Ingestor, Message, ReadingHook
from campusmon.metrics import BACKLOG, STORE_RETRIES, STORE_UP
from campusmon.wire import COLLECTOR_STATUS_TOPIC, READING_SUBSCRIPTIONS, TOPIC_ROOT

log = logging.getLogger(__name__)
VIA = "mqtt"


@dataclass(frozen=True, slots=True)
class _Inbound:
    mid: int
    qos: int
    generation: int
    msg: Message


class MqttCollector:
    def __init__(
        self,
        cfg: CampusConfig,
        store: InfluxStore | None = None,
        hooks: tuple[ReadingHook, ...] = (),
        probe_interval_s: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.mq = cfg.mqtt
        self.store = store or open_store(cfg)
        _, sessions = init_db(cfg.database.url)
        self.ingestor = Ingestor(cfg, self.store, DeadLetters(sessions), VIA, hooks)
        self.inbox: queue.Queue[_Inbound] = queue.Queue()
        self.generation = 0
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.probe_topic = f"{TOPIC_ROOT}/collectors/{self.mq.client_id}/probe"
        self.status_topic = COLLECTOR_STATUS_TOPIC.format(client_id=self.mq.client_id)
        self.subscribed = threading.Event()
        self.probe_interval_s = min(probe_interval_s, self.mq.watchdog_s / 2)
        self.last_probe_echo = time.monotonic()
        self.last_message = time.monotonic()
        self.reconnects = 0
        self.acked = 0
        self._threads: list[threading.Thread] = []
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.mq.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if self.mq.username:
            c.username_pw_set(self.mq.username, self.mq.password)
        if self.mq.tls:
            c.tls_set()
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.will_set(self.status_topic, "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.max_queued_messages_set(0)
        return c

    # -- MQTT callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: object, flags: object, rc: object, _p: object) -> None:
        if getattr(rc, "is_failure", False):
            log.error("MQTT connect refused: %s", rc)
            return
        self.generation += 1
        prefix = f"$share/{self.mq.share_group}/" if self.mq.share_group else ""
        subs = [(prefix + t, 1) for t in READING_SUBSCRIPTIONS] + [(self.probe_topic, 1)]
        client.subscribe(subs)
        self.last_probe_echo = time.monotonic()
        self.connected.set()
        log.info(
            "connected to %s:%s (session present: %s)",
            self.mq.host,
            self.mq.port,
            getattr(flags, "session_present", "?"),
        )

    def _on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, codes: list, _p: object) -> None:
        bad = [c for c in codes if getattr(c, "is_failure", False)]
        if bad:
            log.error("MQTT subscription refused: %s", bad)
            return
        # Retained, so deployments and tests can wait until readings will be queued for us.
        _c.publish(self.status_topic, "online", qos=1, retain=True)
        self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self.stopping.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects", rc)

    def _on_message(self, client: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        if m.topic == self.probe_topic:
            self.last_probe_echo = time.monotonic()
            client.ack(m.mid, m.qos)
            return
        self.last_message = time.monotonic()
        self.inbox.put(_Inbound(m.mid, m.qos, self.generation, Message(m.topic, m.payload, m.topic)))
        BACKLOG.labels(VIA).set(self.inbox.qsize())

    # -- worker ---------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Inbound]:
        try:
            first = self.inbox.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.mq.flush_interval_s
        while len(batch) < self.mq.batch_size:
            left = deadline - time.monotonic()
            try:
                batch.append(self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _store(self, batch: list[_Inbound]) -> bool:
        """Write until durable; False only when asked to stop first (then nothing is acked)."""
        started = time.monotonic()
        delay = 0.2
        msgs = [b.msg for b in batch]
        while True:
            try:
                self.ingestor.process(msgs, started)
                STORE_UP.labels(VIA).set(1)
                return True
            except (StoreUnavailable, OperationalError) as e:
                STORE_UP.labels(VIA).set(0)
                STORE_RETRIES.labels(VIA).inc()
                log.warning(
                    "store unavailable, %d messages held unacked, retry in %.1f s: %s", len(batch), delay, e
                )
            if self.stopping.wait(delay):
                return False
            delay = min(delay * 2, 15.0)

    def _worker(self) -> None:
        while not self.stopping.is_set():
            batch = self._take_batch()
            if not batch:
                continue
            if not self._store(batch):
                return
            gen = self.generation
            for b in batch:
                # Messages of an earlier connection are redelivered by the broker; acking their old
                # packet ids on the new connection could ack the wrong message.
                if b.generation == gen and b.qos > 0:
                    self.client.ack(b.mid, b.qos)
                    self.acked += 1
            BACKLOG.labels(VIA).set(self.inbox.qsize())

    def _watchdog(self) -> None:
        """Notice a subscription that went silent (the broker or a proxy lost it) and reconnect."""
        while not self.stopping.wait(self.probe_interval_s):
            if not self.connected.is_set():
                continue
            self.client.publish(self.probe_topic, str(time.time()), qos=1)
            if time.monotonic() - self.last_probe_echo > self.mq.watchdog_s:
                log.error("no echo of the watchdog probe for %.0f s: reconnecting", self.mq.watchdog_s)
                self.reconnects += 1
                self.last_probe_echo = time.monotonic()
                try:
                    self.client.reconnect()
                except OSError as e:
                    log.warning("reconnect failed: %s", e)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> MqttCollector:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.mq.session_expiry_s
        props.ReceiveMaximum = min(65535, max(self.mq.batch_size, 10))
        self.client.connect_async(
            self.mq.host, self.mq.port, keepalive=self.mq.keepalive, clean_start=False, properties=props
        )
        self.client.loop_start()
        for target, name in ((self._worker, "collector-worker"), (self._watchdog, "collector-watchdog")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once subscribed: from then on the broker queues readings for this collector."""
        return self.subscribed.wait(timeout)

    def stop(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(timeout=20)
        self.client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()
        self.store.close()


def run_collector(cfg: CampusConfig, hooks: tuple[ReadingHook, ...] = ()) -> None:
    """Run until SIGINT/SIGTERM."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    store = open_store(cfg)
    while not stop.is_set():
        try:
            store.ensure_database()
            break
        except StoreUnavailable as e:
            log.warning("InfluxDB not reachable yet (%s); retrying", e)
            stop.wait(2)
    c = MqttCollector(cfg, store, hooks).start()
    log.info("collector %s running; subscribed to %s", cfg.mqtt.client_id, ", ".join(READING_SUBSCRIPTIONS))
    stop.wait()
    c.stop()
