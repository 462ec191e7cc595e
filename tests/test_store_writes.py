"""The store's write outcomes under concurrency, outages and bounded request sizes. Real servers only."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path

import httpx

from campusmon.influx import StoreUnavailable, V2Store, WriteOutcome, open_store, tag_lookup, to_line
from campusmon.reading import Reading
from campusmon.services import InfluxDB, VictoriaMetrics, free_port
from tests.helpers import campus, stored

T0 = 1_760_000_000


def _vm_points(port: int, meter: str | None = None, span: tuple[int, int] | None = None) -> dict:
    """What VictoriaMetrics holds (made searchable first), optionally one meter over a time span."""
    httpx.get(f"http://127.0.0.1:{port}/internal/force_flush")
    match = f'electricity_energy_kwh{{meter="{meter}"}}' if meter else "electricity_energy_kwh"
    params: dict[str, str | int] = {"match[]": match}
    if span is not None:
        params.update(start=span[0], end=span[1])
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/export", params=params, timeout=30)
    got: dict[tuple[str, str, int], float] = {}
    for line in r.text.splitlines():
        obj = json.loads(line)
        for v, t in zip(obj["values"], obj["timestamps"], strict=True):
            got[(obj["metric"]["meter"], "energy_kwh", t // 1000)] = v
    return got


def test_v2_concurrent_writers_each_get_their_own_outcome_across_an_outage(
    tmp_path: Path, make_config
) -> None:
    """HTTP ingest writes from a thread pool: "stored" must mean that caller's lines are stored.

    Writers of different batch sizes run at once; the server is stopped while they run and started
    again. Each writer retries a batch that raised StoreUnavailable (as the collector does) and counts
    a batch as acked only when told it is stored; its readings must be on the server at that moment.
    """
    vm = VictoriaMetrics(tmp_path / "vm", free_port()).start()
    cfg = make_config(
        None,
        None,
        data=campus(6, 0),
        influxdb={"backend": "v2", "url": f"http://127.0.0.1:{vm.port}", "token": "t", "bucket": "campus"},
    )
    store = open_store(cfg)
    assert isinstance(store, V2Store)
    rng = random.Random(7)
    writers = 6
    plans: list[list[list[Reading]]] = []
    for w in range(writers):
        batches, k = [], 0
        for _ in range(16):
            n = rng.choice([1, 3, 40, 700, 2600, 6100])
            batches.append([Reading(f"e00{w}", "energy_kwh", float(k + i), T0 + k + i) for i in range(n)])
            k += n
        plans.append(batches)
    cond = threading.Condition()
    acked: list[list[Reading]] = []
    wrong: list[tuple[int, int, WriteOutcome]] = []
    early: list[tuple[int, int, int]] = []  # (writer, batch size, readings not yet on the server)
    waiting: set[int] = set()
    finished: set[int] = set()
    server_back = threading.Event()
    up, checking = [True], [0]  # the server is up; writers reading it back right now

    def run(w: int) -> None:
        try:
            for batch in plans[w]:
                while True:
                    try:
                        out = store.write(batch)
                    except StoreUnavailable:
                        with cond:
                            waiting.add(w)
                            cond.notify_all()
                        server_back.wait(120)
                        with cond:
                            waiting.discard(w)
                        continue
                    told_stored = out.stored == len(batch) and out.rejected == []
                    with cond:
                        check = told_stored and up[0]
                        checking[0] += check
                    if check:
                        try:
                            span = (batch[0].ts, batch[-1].ts)
                            there = _vm_points(vm.port, batch[0].meter, span)
                            missing = sum(1 for r in batch if there.get(r.key) != r.value)
                            if missing:
                                early.append((w, len(batch), missing))
                        finally:
                            with cond:
                                checking[0] -= 1
                                cond.notify_all()
                    with cond:
                        if told_stored:
                            acked.append(batch)
                        else:
                            wrong.append((w, len(batch), out))
                        cond.notify_all()
                    break
        finally:
            with cond:
                finished.add(w)
                cond.notify_all()

    def acked_by(w: int) -> int:
        return sum(b[0].meter == f"e00{w}" for b in acked)

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(writers)]
    try:
        for t in threads:
            t.start()
        with cond:
            # Stop the server while every writer is still busy: each has acked a few batches.
            assert cond.wait_for(lambda: min(acked_by(w) for w in range(writers)) >= 3, 120), "no progress"
            up[0] = False  # no new read-backs; wait for those under way
            cond.wait_for(lambda: checking[0] == 0)
        vm.stop()
        with cond:
            # Every writer still writing must be told the server is gone (not that it stored).
            assert cond.wait_for(lambda: waiting | finished == set(range(writers)), 120), (
                f"writers still waiting for an outcome: {set(range(writers)) - waiting - finished}"
            )
            assert waiting, "the outage came too late to matter"
        vm.start()
        with cond:
            up[0] = True
        server_back.set()
        for t in threads:
            t.join(180)
        assert finished == set(range(writers))
        assert early == []
        assert wrong == []
        assert len(acked) == writers * 16
        want = {r.key: r.value for batch in acked for r in batch}
        assert _vm_points(vm.port) == want
    finally:
        server_back.set()
        store.close()
        vm.stop()


def _httpd_stats(port: int) -> dict[str, int]:
    """InfluxDB 1.x's own request counters (writeReq, clientError, ...)."""
    v = httpx.get(f"http://127.0.0.1:{port}/debug/vars").json()
    return next(s["values"] for k, s in v.items() if k.startswith("httpd"))


def _readings(n: int, meters: int = 4) -> list[Reading]:
    return [Reading(f"e00{i % meters}", "energy_kwh", 100.0 + i, T0 + i) for i in range(n)]


def test_v1_keeps_each_request_within_max_body_bytes(tmp_path: Path, make_config) -> None:
    """A batch larger than influxdb.max_body_bytes goes as several requests, none refused as too large."""
    srv = InfluxDB(tmp_path / "influx", free_port(), max_body_size=4096).start()
    try:
        cfg = make_config(None, srv, data=campus(4, 0), influxdb={"max_body_bytes": 4096})
        store = open_store(cfg)
        store.ensure_database()
        before = _httpd_stats(srv.port)
        rs = _readings(600)
        body = sum(len(to_line(r, tag_lookup(cfg))) + 1 for r in rs)
        out = store.write(rs)
        after = _httpd_stats(srv.port)
        assert (out.stored, out.rejected) == (600, [])
        assert after["clientError"] == before["clientError"]  # no 413
        assert after["writeReq"] - before["writeReq"] >= body // 4096 + 1
        assert stored(store, ("energy_kwh",)) == {r.key: r.value for r in rs}
        store.close()
    finally:
        srv.stop()


def test_v1_a_413_splits_the_batch_and_rejects_only_what_cannot_fit(tmp_path: Path, make_config) -> None:
    """A server bound below the store's: the batch is halved until it fits; a lone line too large for
    the server comes back as rejected, with the reason, instead of being retried for ever."""
    srv = InfluxDB(tmp_path / "influx", free_port(), max_body_size=4096).start()
    try:
        huge_id = "e-" + "x" * 5000
        data = campus(4, 0)
        data["meters"].append({"id": huge_id, "building": "b0", "kind": "electricity", "category": "01A00"})
        cfg = make_config(None, srv, data=data)
        assert cfg.influxdb.max_body_bytes > 4096
        store = open_store(cfg)
        store.ensure_database()
        rs = _readings(600)
        huge = Reading(huge_id, "energy_kwh", 1.0, T0)
        batch = [*rs[:300], huge, *rs[300:]]
        before = _httpd_stats(srv.port)
        out = store.write(batch)
        assert out.stored == 600
        assert [r for r, _ in out.rejected] == [huge]
        assert out.rejected[0][1].startswith("influxdb refused the line as too large (HTTP 413")
        assert _httpd_stats(srv.port)["clientError"] > before["clientError"]
        assert stored(store, ("energy_kwh",)) == {r.key: r.value for r in rs}
        store.close()
    finally:
        srv.stop()


def test_collector_is_not_stalled_by_batches_the_server_finds_too_large(
    tmp_path: Path, mosquitto, make_config
) -> None:
    """End to end: a server with a small max-body-size and the store's default bound; all arrives."""
    from collectors.mqtt_collector import MqttCollector
    from firmware_sim.mqtt_meters import MqttFleet
    from firmware_sim.profiles import sim_meters_for
    from tests.helpers import count, expected, wait_until

    srv = InfluxDB(tmp_path / "influx", free_port(), max_body_size=8192).start()
    c = None
    try:
        cfg = make_config(mosquitto, srv, data=campus(10, 10), mqtt={"batch_size": 1000})
        c = MqttCollector(cfg).start()
        c.store.ensure_database()
        assert c.wait_connected(10)
        fleet = MqttFleet(
            sim_meters_for(cfg, seed=3),
            "127.0.0.1",
            mosquitto.port,
            interval_s=60,
            seed=3,
            client_id="sim-" + cfg.mqtt.client_id,
        )
        fleet.keep_history = True
        start = T0 // 60 * 60
        fleet.backfill(start, start + 60 * 60)
        fleet.close()
        want = expected(fleet.published)
        store = open_store(cfg)
        wait_until(lambda: count(store) >= len(want), 90, 0.2, f"{len(want)} readings in InfluxDB")
        assert stored(store) == want
        assert c.ingestor.dead.counts() == {}
        assert _httpd_stats(srv.port)["clientError"] > 0  # the server did refuse requests as too large
    finally:
        if c is not None:
            c.stop()
        srv.stop()
