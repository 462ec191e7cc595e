"""Prometheus metrics of the ingest path, shared by the MQTT collector and HTTP ingest.

Each process exports its own: the collector on ``collector.metrics_port`` (via="mqtt"), the API on
``/metrics`` (via="http"). See docs/operations.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

READINGS_RECEIVED = Counter(
    "campusmon_readings_received_total", "Records received (accepted or rejected)", ["via"]
)
READINGS_STORED = Counter("campusmon_readings_stored_total", "Readings written to InfluxDB", ["via"])
READINGS_REJECTED = Counter(
    "campusmon_readings_rejected_total", "Records rejected, by reason", ["via", "reason"]
)
MESSAGES = Counter("campusmon_messages_total", "Messages processed", ["via"])
BATCH_SECONDS = Histogram(
    "campusmon_batch_seconds",
    "Time from a batch's first message to its ack",
    ["via"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STORE_RETRIES = Counter("campusmon_store_retries_total", "InfluxDB writes retried after a failure", ["via"])
BACKLOG = Gauge("campusmon_backlog_messages", "Messages received but not yet acked", ["via"])
STORE_UP = Gauge("campusmon_store_up", "1 if the last InfluxDB write succeeded", ["via"])
IGNORED = Counter(
    "campusmon_messages_ignored_total",
    "Messages on read topics that carry no readings (gateway status, health)",
    ["via"],
)
HOOK_ERRORS = Counter(
    "campusmon_reading_hook_errors_total", "Rule hooks on stored readings that raised (logged)", ["via"]
)
QOS0_DROPPED = Counter(
    "campusmon_qos0_dropped_total", "QoS 0 messages dropped because the collector inbox was full", ["via"]
)
REDELIVERED = Counter("campusmon_redelivered_total", "Messages the broker delivered again (DUP set)", ["via"])
COLLECTOR_HEALTHY = Gauge(
    "campusmon_collector_healthy", "1 while every collector thread runs; 0 once one died", ["client_id"]
)
MQTT_SUBSCRIBED = Gauge(
    "campusmon_collector_mqtt_subscribed",
    "1 while the collector is connected and subscribed to the broker (read at scrape time)",
    ["client_id"],
)

PER_VIA = (READINGS_RECEIVED, READINGS_STORED, MESSAGES, BATCH_SECONDS, STORE_RETRIES, BACKLOG, STORE_UP)


def declare(via: str) -> None:
    """Create this process's series at start, so a dashboard shows 0 rather than nothing.

    Only the ``via`` a process owns: a zero for another process's path would read as a fact.
    """
    for m in PER_VIA:
        m.labels(via)


def ingest_counts(via: str) -> dict[str, float]:
    """Totals of one ingest path, read from the same counters ``/metrics`` shows."""
    out = {"stored": 0.0, "rejected": 0.0, "messages": 0.0}
    for name, metric in (
        ("stored", READINGS_STORED),
        ("rejected", READINGS_REJECTED),
        ("messages", MESSAGES),
    ):
        for family in metric.collect():
            for s in family.samples:
                if s.name.endswith("_total") and s.labels.get("via") == via:
                    out[name] += s.value
    return out


def serve(host: str, port: int) -> WSGIServer:
    """This process's ``/metrics`` on a daemon thread; returns the server so it can be shut down."""
    server, _thread = start_http_server(port, addr=host)
    return server


class CountsLog:
    """One INFO line per interval with what an ingest path stored and rejected: an operator's log."""

    def __init__(self, via: str, interval_s: float, extra: Callable[[], str] = lambda: "") -> None:
        self.via = via
        self.interval_s = interval_s
        self.extra = extra
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"counts-{via}", daemon=True)

    def start(self) -> CountsLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        last = ingest_counts(self.via)
        while not self._stop.wait(self.interval_s):
            try:
                now = ingest_counts(self.via)
                extra = self.extra()
            except Exception:  # a logging line must never stop the process's work
                log.exception("counts line failed")
                continue
            d = {k: int(now[k] - last[k]) for k in now}
            last = now
            log.info(
                "last %.0f s: %d readings stored, %d rejected, %d messages (total %d stored, %d rejected)%s",
                self.interval_s, d["stored"], d["rejected"], d["messages"], now["stored"], now["rejected"],
                extra,
            )  # fmt: skip
