"""The gateway's own health as Prometheus metrics, built from the same snapshot as the health topic.

A private registry and a collector that reads the snapshot at scrape time: no counters are kept
twice, and the numbers on ``/metrics`` and on ``campus/v1/gateways/<id>/health`` always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Snapshot = Callable[[], dict[str, Any]]


class GatewayCollector(Collector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        h = self.snapshot()
        gw = h["gateway"]
        ob = h["outbox"]
        depth = GaugeMetricFamily(
            "campusmon_gateway_outbox_readings", "Readings waiting in the outbox", labels=["gateway"]
        )
        depth.add_metric([gw], ob["depth"])
        fill = GaugeMetricFamily(
            "campusmon_gateway_outbox_fill_ratio", "Outbox fill, 0..1", labels=["gateway"]
        )
        fill.add_metric([gw], ob["fill"])
        dropped = CounterMetricFamily("campusmon_gateway_outbox_dropped", "Readings dropped unsent",
                                      labels=["gateway", "reason"])  # fmt: skip
        dropped.add_metric([gw, "full"], ob["dropped_full"])
        dropped.add_metric([gw, "expired"], ob["dropped_expired"])
        dropped.add_metric([gw, "unwritable"], ob["dropped_unwritable"])
        yield from (depth, fill, dropped)
        if "mqtt" in h:
            up = GaugeMetricFamily(
                "campusmon_gateway_mqtt_connected", "1 when connected to the broker", labels=["gateway"]
            )
            up.add_metric([gw], 1.0 if h["mqtt"]["connected"] else 0.0)
            yield up
        req = CounterMetricFamily(
            "campusmon_gateway_bus_requests", "Request attempts", labels=["gateway", "bus"]
        )
        ok = CounterMetricFamily(
            "campusmon_gateway_bus_replies_ok", "Valid replies", labels=["gateway", "bus"]
        )
        err = CounterMetricFamily(
            "campusmon_gateway_bus_errors", "Failed attempts by kind", labels=["gateway", "bus", "kind"]
        )
        rate = GaugeMetricFamily(
            "campusmon_gateway_bus_success_ratio", "Valid replies / attempts", labels=["gateway", "bus"]
        )
        rtt = GaugeMetricFamily("campusmon_gateway_bus_rtt_seconds", "Round-trip time of recent requests",
                                labels=["gateway", "bus", "stat"])  # fmt: skip
        sweep = GaugeMetricFamily(
            "campusmon_gateway_bus_sweep_seconds", "Duration of the last sweep", labels=["gateway", "bus"]
        )
        meter_up = GaugeMetricFamily(
            "campusmon_gateway_meter_up", "1 answering, 0 backed off", labels=["gateway", "bus", "meter"]
        )
        for bus, b in h["buses"].items():
            req.add_metric([gw, bus], b["requests"])
            ok.add_metric([gw, bus], b["ok"])
            for kind, n in b["errors"].items():
                err.add_metric([gw, bus, kind], n)
            if b["success_rate"] is not None:
                rate.add_metric([gw, bus], b["success_rate"])
            for stat, ms in (b["rtt_ms"] or {}).items():
                rtt.add_metric([gw, bus, stat], ms / 1000)
            if b["last_sweep_s"] is not None:
                sweep.add_metric([gw, bus], b["last_sweep_s"])
            for meter, m in b["meters"].items():
                if m["state"] != "unknown":
                    meter_up.add_metric([gw, bus, meter], 1.0 if m["state"] == "online" else 0.0)
        yield from (req, ok, err, rate, rtt, sweep, meter_up)


def serve_metrics(snapshot: Snapshot, host: str, port: int) -> Any:
    """Start ``/metrics`` on a daemon thread; returns the server so it can be shut down."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(snapshot))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
