"""Prometheus metrics of the ingest path, shared by the MQTT collector and HTTP ingest."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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

# Series exist from the start, so a dashboard shows 0 rather than nothing before the first message.
for _via in ("mqtt", "http", "serial"):
    for _m in (READINGS_RECEIVED, READINGS_STORED, MESSAGES, BATCH_SECONDS, STORE_RETRIES, BACKLOG, STORE_UP):
        _m.labels(_via)
