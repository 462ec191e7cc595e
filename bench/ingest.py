"""Ingest benchmark: collector end to end against the raw speeds of the broker and InfluxDB, in one run.

(a) a bare paho subscriber's receive rate from the same Mosquitto (QoS 1, same payloads, same publisher);
(b) InfluxDB's raw line-protocol write rate (pre-built 5,000-line bodies, one keep-alive connection);
(c) the collector end to end: first publish → last reading queryable in InfluxDB.
Prints readings/s for each and c / min(a, b). Machines here are shared and noisy: compare ratios.

    .venv/bin/python bench/ingest.py [--messages 20000] [--per-message 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from campusmon.config import parse_config  # noqa: E402
from campusmon.influx import open_store, tag_lookup, to_line  # noqa: E402
from campusmon.reading import Reading  # noqa: E402
from campusmon.services import InfluxDB, Mosquitto, free_port  # noqa: E402
from campusmon.wire import METER_TOPIC, encode_senml  # noqa: E402

N_METERS = 200


def payloads(n_msgs: int, per_msg: int, t0: int) -> list[tuple[str, bytes, list[Reading]]]:
    out = []
    for i in range(n_msgs):
        meter = f"e{i % N_METERS:03d}"
        ts = t0 + i // N_METERS * 60
        rs = [Reading(meter, q, 1000.0 + i + k, ts) for k, q in enumerate(["energy_kwh", "power_w", "voltage_v",
              "current_a", "power_factor", "frequency_hz"][:per_msg])]  # fmt: skip
        out.append((METER_TOPIC.format(meter_id=meter), encode_senml(rs), rs))
    return out


def _publisher(port: int, msgs: list[tuple[str, bytes]], started: mp.Event, go: mp.Event) -> None:
    from firmware_sim.mqtt_meters import BackpressurePublisher

    pub = BackpressurePublisher("127.0.0.1", port, f"bench-pub-{time.time_ns()}")
    started.set()
    go.wait()
    for topic, body in msgs:
        pub.publish(topic, body)
    pub.close()


def publish_in_child(port: int, msgs: list[tuple[str, bytes]]) -> tuple[mp.Process, mp.Event]:
    ctx = mp.get_context("fork")
    started, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_publisher, args=(port, msgs, started, go))
    p.start()
    started.wait(30)
    return p, go


def bench_bare_subscriber(port: int, msgs: list[tuple[str, bytes]], per_msg: int) -> float:
    """QoS 1 with ack on receipt: the fastest any MQTT consumer of this broker can go."""
    got = 0
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-{time.time_ns()}", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    c.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        nonlocal got
        json.loads(m.payload)  # a consumer has to parse at least
        got += 1
        if got == len(msgs):
            done.set()

    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 1000
    c.connect("127.0.0.1", port, properties=props)
    c.subscribe("campus/v1/meters/+/readings", 1)
    c.loop_start()
    subscribed.wait(10)
    p, go = publish_in_child(port, msgs)
    t0 = time.perf_counter()
    go.set()
    done.wait(600)
    dt = time.perf_counter() - t0
    p.join()
    c.disconnect()
    c.loop_stop()
    return len(msgs) * per_msg / dt


def bench_raw_influx(url: str, readings: list[Reading], cfg: object) -> float:
    db = f"raw{time.time_ns()}"
    tags = tag_lookup(cfg)  # type: ignore[arg-type]
    lines = [to_line(r, tags) for r in readings]
    bodies = ["\n".join(lines[i : i + 5000]).encode() for i in range(0, len(lines), 5000)]
    with httpx.Client(base_url=url, timeout=60) as h:
        h.post("/query", params={"q": f'CREATE DATABASE "{db}"'})
        t0 = time.perf_counter()
        for b in bodies:
            r = h.post("/write", params={"db": db, "precision": "s"}, content=b)
            assert r.status_code == 204, r.text
        dt = time.perf_counter() - t0
        h.post("/query", params={"q": f'DROP DATABASE "{db}"'})
    return len(readings) / dt


def bench_collector(
    mq_port: int, influx_port: int, msgs: list[tuple[str, bytes]], n_readings: int, tmp: Path
) -> float:
    from collectors.mqtt_collector import MqttCollector

    cfg = parse_config({
        "meters": [{"id": f"e{i:03d}", "building": "b", "kind": "electricity", "category": "01A00"} for i in range(N_METERS)],
        "buildings": [{"id": "b"}],
        "mqtt": {"port": mq_port, "client_id": f"bench-col-{time.time_ns()}", "batch_size": 1000, "flush_interval_s": 0.2},
        "influxdb": {"url": f"http://127.0.0.1:{influx_port}", "database": f"col{time.time_ns()}"},
        "database": {"url": f"sqlite:///{tmp}/bench-{time.time_ns()}.sqlite"},
    }, environ={})  # fmt: skip
    col = MqttCollector(cfg).start()
    col.store.ensure_database()
    assert col.wait_connected(10)
    store = open_store(cfg)

    def stored() -> int:
        s = store.query('SELECT count("energy_kwh") FROM "electricity"')
        return int(s[0]["values"][0][1]) if s else 0

    p, go = publish_in_child(mq_port, msgs)
    want_energy = len(msgs)
    t0 = time.perf_counter()
    go.set()
    while col.acked < len(msgs):  # acked means written to InfluxDB
        time.sleep(0.01)
    dt = time.perf_counter() - t0
    p.join()
    assert stored() == want_energy, f"{stored()} of {want_energy} stored"
    col.stop()
    return n_readings / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--per-message", type=int, default=2, help="readings per SenML pack (1-6)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    t0 = int(time.time()) - 86400 * 3
    data = payloads(args.messages, args.per_message, t0)
    msgs = [(t, b) for t, b, _ in data]
    readings = [r for _, _, rs in data for r in rs]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mq = Mosquitto(tmp / "mq", free_port(), anonymous=True).start()
        ix = InfluxDB(tmp / "ix", free_port()).start()
        cfg = parse_config({"buildings": [{"id": "b"}], "meters": [{"id": f"e{i:03d}", "building": "b",
                            "kind": "electricity", "category": "01A00"} for i in range(N_METERS)]}, environ={})  # fmt: skip
        res: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        try:
            for i in range(args.repeat):
                res["a"].append(bench_bare_subscriber(mq.port, msgs, args.per_message))
                res["b"].append(bench_raw_influx(f"http://127.0.0.1:{ix.port}", readings, cfg))
                res["c"].append(bench_collector(mq.port, ix.port, msgs, len(readings), tmp))
                print(f"run {i + 1}: a={res['a'][-1]:,.0f}  b={res['b'][-1]:,.0f}  c={res['c'][-1]:,.0f} readings/s",
                      flush=True)  # fmt: skip
        finally:
            mq.stop()
            ix.stop()
    a, b, c = (statistics.median(res[k]) for k in "abc")
    print(
        f"\n{args.messages:,} messages x {args.per_message} readings = {len(readings):,} readings; median of {args.repeat}"
    )
    print(f"(a) bare paho subscriber, QoS 1      {a:>10,.0f} readings/s")
    print(f"(b) raw InfluxDB line-protocol write {b:>10,.0f} readings/s")
    print(f"(c) collector end to end             {c:>10,.0f} readings/s")
    print(f"ratio c / min(a, b) = {c / min(a, b):.2f}   (goal >= 0.6)")


if __name__ == "__main__":
    main()
