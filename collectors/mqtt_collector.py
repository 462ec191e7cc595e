"""MQTT → InfluxDB collector with ack-after-store.

A message is acked only after its readings are in InfluxDB or in the dead-letter store. The broker
keeps every unacked message in a persistent session (fixed client id, MQTT 5 session expiry) and
hands over at most ReceiveMaximum of them, so while InfluxDB is down the collector stops acking,
its memory stays bounded by one window, and the backlog waits safely in Mosquitto. QoS 0 messages,
which ReceiveMaximum does not limit, are dropped (and counted) once the inbox holds a window's worth.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import OperationalError

from campusmon.config import CampusConfig
from campusmon.db import init_db
from campusmon.deadletter import DeadLetters
from campusmon.influx import InfluxStore, StoreUnavailable, open_store
from campusmon.ingest import Ingestor, Message, ReadingHook
from campusmon.metrics import (
    BACKLOG,
    COLLECTOR_HEALTHY,
    QOS0_DROPPED,
    REDELIVERED,
    STORE_RETRIES,
    STORE_UP,
)
from campusmon.mqtt import MqttAuth, make_client
from campusmon.wire import COLLECTOR_STATUS_TOPIC, INTERNAL_ERROR, READING_SUBSCRIPTIONS, TOPIC_ROOT

log = logging.getLogger(__name__)
VIA = "mqtt"
T = TypeVar("T")
Tap = Callable[[mqtt.MQTTMessage], object]


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
        store_probe_s: float = 0.5,
        tap: Tap | None = None,
    ) -> None:
        self.cfg = cfg
        self.mq = cfg.mqtt
        self.store = store or open_store(cfg)
        _, sessions = init_db(cfg.database.url)
        self.ingestor = Ingestor(cfg, self.store, DeadLetters(sessions), VIA, hooks)
        self.receive_max = min(65535, max(self.mq.batch_size, 10))
        # QoS 1/2 are bounded by ReceiveMaximum; QoS 0 is admitted only below this many held messages.
        self.inbox_limit = self.receive_max
        self.inbox: queue.Queue[_Inbound] = queue.Queue()
        self.generation = 0
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.failed = threading.Event()  # a collector thread died: the process must exit non-zero
        self.failed_thread: str | None = None
        self.probe_topic = f"{TOPIC_ROOT}/collectors/{self.mq.client_id}/probe"
        self.status_topic = COLLECTOR_STATUS_TOPIC.format(client_id=self.mq.client_id)
        self.subscribed = threading.Event()
        self.probe_interval_s = min(probe_interval_s, self.mq.watchdog_s / 2)
        self.store_probe_s = store_probe_s
        self.tap = tap
        self.last_probe_echo = time.monotonic()
        self.last_message = time.monotonic()
        self.backpressure = threading.Event()  # set while the worker holds acks back for the store
        self.reconnects = 0
        self.received = 0
        self.redelivered = 0
        self.acked = 0
        self.qos0_dropped = 0
        self.watchdog_checks = 0
        # (event, time.monotonic()) of the store's outages: "down", "ping_ok", "write_ok".
        self.store_events: list[tuple[str, float]] = []
        self._tracebacks_seen: set[tuple[str, str, int]] = set()
        self._ping_failed = False
        self._threads: list[threading.Thread] = []
        self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = make_client(self.mq.client_id, MqttAuth.of(self.mq), manual_ack=True)
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
        self.subscribed.clear()  # until this connection's SUBACK: a reconnect may not have said so
        prefix = f"$share/{self.mq.share_group}/" if self.mq.share_group else ""
        # The probe is QoS 0: ReceiveMaximum does not hold it back, so it comes back even while the
        # window of unacked readings is full, and it is not queued behind a backlog.
        # Retain handling 2: retained messages (gateway status and health) are not re-sent on every
        # (re)subscribe; readings are never retained, and live publishes arrive as usual.
        subs = [(prefix + t, SubscribeOptions(qos=1, retainHandling=2)) for t in READING_SUBSCRIPTIONS]
        subs.append((self.probe_topic, SubscribeOptions(qos=0)))
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
        _c.publish(self.status_topic, "failed" if self.failed.is_set() else "online", qos=1, retain=True)
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
        self.received += 1
        if m.dup:
            self.redelivered += 1
            REDELIVERED.labels(VIA).inc()
        if self.tap is not None:
            try:
                self.tap(m)
            except Exception:  # an observer must never stop the network thread
                log.exception("collector tap failed")
        if m.qos == 0 and self.inbox.qsize() >= self.inbox_limit:
            # QoS 0 is at most once by contract; holding it without bound would exhaust memory.
            self.qos0_dropped += 1
            QOS0_DROPPED.labels(VIA).inc()
            return
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

    def _durably(self, what: Callable[[], T], n_held: int) -> tuple[bool, T | None]:
        """Run ``what`` until the stores take it; (False, None) only when asked to stop first.

        Writes back off up to 15 s, but the store's health is probed every ``store_probe_s`` in
        between, so a store that comes back is written to at once rather than after the back-off.
        """
        delay = 0.2
        down = False
        self._ping_failed = False
        while True:
            try:
                out = what()
            except (StoreUnavailable, OperationalError) as e:
                if not down:
                    down = True
                    self.store_events.append(("down", time.monotonic()))
                self.backpressure.set()
                STORE_UP.labels(VIA).set(0)
                STORE_RETRIES.labels(VIA).inc()
                log.warning(
                    "store unavailable, %d messages held unacked, retry in %.1f s: %s", n_held, delay, e
                )
            else:
                if down:
                    self.store_events.append(("write_ok", time.monotonic()))
                self.backpressure.clear()
                STORE_UP.labels(VIA).set(1)
                return True, out
            if not self._wait_for_store(delay):
                return False, None
            delay = min(delay * 2, 15.0)

    def _wait_for_store(self, delay: float) -> bool:
        """Sleep up to ``delay``, ending early once a store that did not answer its health probe does.

        A store that answers the probe but still fails (a full disk, the dead-letter database) is
        retried on the back-off alone, so it is not hammered twice a second.
        """
        deadline = time.monotonic() + delay
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return not self.stopping.is_set()
            if self.stopping.wait(min(self.store_probe_s, left)):
                return False
            if not self.store.ping():
                self._ping_failed = True
            elif self._ping_failed:
                self._ping_failed = False
                self.store_events.append(("ping_ok", time.monotonic()))
                return True

    def _store(self, batch: list[_Inbound]) -> bool:
        """Make the batch durable; False only when asked to stop first (then nothing is acked)."""
        started = time.monotonic()
        try:
            ok, _ = self._durably(lambda: self.ingestor.process([b.msg for b in batch], started), len(batch))
            return ok
        except Exception:  # one bad message must not stop the others: isolate it
            pass
        for b in batch:
            try:
                ok, _ = self._durably(lambda b=b: self.ingestor.process([b.msg], started), len(batch))
            except Exception as e:  # contained: dead-lettered below and acked
                detail = self._internal_error(b.msg, e)
                ok, _ = self._durably(
                    lambda b=b, d=detail: self.ingestor.refuse([b.msg], INTERNAL_ERROR, d), len(batch)
                )
            if not ok:
                return False
        return True

    def _internal_error(self, msg: Message, e: Exception) -> str:
        """Log a handling failure: the traceback once per code site, one line for each message."""
        tb = traceback.extract_tb(e.__traceback__)
        site = (type(e).__name__, tb[-1].filename, tb[-1].lineno) if tb else (type(e).__name__, "", 0)
        detail = f"{type(e).__name__}: {e}"[:500]
        if site not in self._tracebacks_seen:
            self._tracebacks_seen.add(site)
            log.error("internal error handling a message on %s; dead-lettered", msg.topic, exc_info=e)
        else:
            log.error("internal error handling a message on %s; dead-lettered: %s", msg.topic, detail)
        return detail

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
        """Notice a subscription that went silent (the broker or a proxy lost it) and reconnect.

        Silence is not evidence while the worker holds acks back for the store: the broker may then
        deliver nothing, and a reconnect would only make it re-deliver the whole window.
        """
        while not self.stopping.wait(self.probe_interval_s):
            self.watchdog_checks += 1
            if not self.connected.is_set():
                continue
            now = time.monotonic()
            if self.backpressure.is_set():
                self.last_probe_echo = now  # the silence is our own; count afresh once we ack again
            self.client.publish(self.probe_topic, str(time.time()), qos=1)
            silent = now - max(self.last_probe_echo, self.last_message)
            if silent > self.mq.watchdog_s:
                log.error("no echo of the watchdog probe for %.0f s: reconnecting", self.mq.watchdog_s)
                self.reconnects += 1
                self.last_probe_echo = time.monotonic()
                self.subscribed.clear()
                try:
                    self.client.reconnect()
                except OSError as e:
                    log.warning("reconnect failed: %s", e)

    def _guarded(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException:
                log.critical("collector thread %s died; the collector is failed", name, exc_info=True)
                self._fail(name)

        return run

    def _fail(self, name: str) -> None:
        self.failed_thread = name
        self.failed.set()
        COLLECTOR_HEALTHY.labels(self.mq.client_id).set(0)
        try:
            self.client.publish(self.status_topic, "failed", qos=1, retain=True)
        except Exception as e:  # the broker may be gone too; the exit code still says it
            log.warning("could not publish the failed status: %s", e)

    # -- health ---------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Every collector thread is running (a dead one never comes back: restart the process)."""
        return not self.failed.is_set() and all(t.is_alive() for t in self._threads)

    def ready(self) -> bool:
        """Healthy, subscribed, and the last store write succeeded."""
        return self.healthy() and self.subscribed.is_set() and not self.backpressure.is_set()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> MqttCollector:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.mq.session_expiry_s
        props.ReceiveMaximum = self.receive_max
        self.client.connect_async(
            self.mq.host, self.mq.port, keepalive=self.mq.keepalive, clean_start=False, properties=props
        )
        self.client.loop_start()
        for target, name in ((self._worker, "collector-worker"), (self._watchdog, "collector-watchdog")):
            t = threading.Thread(target=self._guarded(name, target), name=name, daemon=True)
            t.start()
            self._threads.append(t)
        COLLECTOR_HEALTHY.labels(self.mq.client_id).set(1)
        return self

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once subscribed: from then on the broker queues readings for this collector."""
        return self.subscribed.wait(timeout)

    def stop(self) -> None:
        """Stop whatever is already down: each step is tried, and the store is always closed."""
        self.stopping.set()
        try:
            for t in self._threads:
                t.join(timeout=20)
            if self.connected.is_set() and not self.failed.is_set():
                try:
                    self.client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(5)
                except Exception as e:  # the broker went away meanwhile; its last will says offline
                    log.warning("could not publish the offline status: %s", e)
            try:
                self.client.disconnect()
            finally:
                self.client.loop_stop()
        finally:
            self.store.close()


def run_collector(cfg: CampusConfig, hooks: tuple[ReadingHook, ...] = ()) -> None:
    """Run until SIGINT/SIGTERM; the log says start, stop and counts per interval, not every write."""
    import signal

    from campusmon.metrics import MQTT_SUBSCRIBED, CountsLog, declare, serve

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    declare(VIA)
    ops = cfg.collector
    metrics = None
    if ops.metrics_port:
        try:
            metrics = serve(ops.metrics_host, ops.metrics_port)
        except OSError as e:  # storing readings matters more than the metrics page
            log.error("cannot serve /metrics on %s:%d: %s", ops.metrics_host, ops.metrics_port, e)
    store = open_store(cfg)
    waiting = None
    while not stop.is_set():
        try:
            store.ensure_database()
            break
        except StoreUnavailable as e:
            if waiting is None:  # one line for the outage, not one per attempt
                log.warning("InfluxDB not reachable at %s (%s); waiting for it", cfg.influxdb.url, e)
                waiting = time.monotonic()
            stop.wait(2)
    if stop.is_set():
        store.close()
        return
    if waiting is not None:
        log.info("InfluxDB reachable after %.0f s", time.monotonic() - waiting)
    STORE_UP.labels(VIA).set(1)
    c = MqttCollector(cfg, store, hooks).start()
    MQTT_SUBSCRIBED.labels(cfg.mqtt.client_id).set_function(lambda: 1.0 if c.subscribed.is_set() else 0.0)
    counts = CountsLog(VIA, ops.counts_log_s, lambda: f", backlog {c.inbox.qsize()}").start()
    log.info(
        "collector %s started: broker %s:%d, InfluxDB %s, metrics %s",
        cfg.mqtt.client_id,
        cfg.mqtt.host,
        cfg.mqtt.port,
        cfg.influxdb.url,
        f"http://{ops.metrics_host}:{ops.metrics_port}/metrics" if metrics else "off",
    )
    while not stop.wait(1.0) and not c.failed.is_set():
        pass
    log.info("collector %s stopping", cfg.mqtt.client_id)
    counts.stop()
    c.stop()
    if metrics is not None:
        metrics.shutdown()
    if c.failed.is_set():  # a dead thread never comes back: exit non-zero so the supervisor restarts us
        log.critical("collector %s stopped: thread %s died", cfg.mqtt.client_id, c.failed_thread)
        raise SystemExit(1)
    log.info("collector %s stopped (%d messages acked)", cfg.mqtt.client_id, c.acked)
