"""What the outbox is for: broker outages, a killed gateway, a full disk budget. Real Mosquitto and InfluxDB."""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from campusmon.influx import open_store
from campusmon.reading import Reading
from campusmon.services import Mosquitto, free_port
from collectors.mqtt_collector import MqttCollector
from gateway.config import MqttSection
from gateway.outbox import Outbox
from gateway.publisher import Publisher
from gateway.service import Gateway
from tests.conftest import ROOT
from tests.gateway_sim import (
    LossyLink,
    Subscriber,
    Tee,
    campus_data,
    dlt645_fleet,
    fleet,
    gateway_config,
    influx_readings,
    outbox_rows,
    start_sim,
)
from tests.helpers import wait_until
from tests.test_outbox import CappedOutbox


def _tee(gw: Gateway) -> Tee:
    tee = Tee(gw.outbox.put)
    for bus in gw.buses:
        bus.sink = tee
    return tee


def _expected(readings: list[Reading]) -> dict[tuple[str, str, int], float]:
    out = {r.key: r.value for r in readings}
    assert len(out) == len(readings), (
        "a meter was read twice in one second; the test cannot tell readings apart"
    )
    return out


@pytest.mark.slow
def test_long_broker_outage_loses_nothing_and_drains_at_the_set_rate(
    server_factory: Any, influxdb: Any, make_config: Any, tmp_path: Path
) -> None:
    specs = [*dlt645_fleet(3), fleet()[2]]
    mq = server_factory("mosquitto")
    gid = "gw-" + uuid.uuid4().hex[:8]
    campus = make_config(mq, influxdb, data=campus_data(specs, gid))
    collector = MqttCollector(campus).start()
    collector.store.ensure_database()
    sim, url = start_sim(specs, "tcp")
    cfg = gateway_config(tmp_path, url, specs, mq.port, gateway_id=gid, gateway={"poll_on_start": False},
                         poll_groups={"default": {"interval_s": 2}},
                         mqtt={"drain_rate_msgs_s": 10, "pack_max_readings": 20})  # fmt: skip
    sub = Subscriber(mq.port, cfg.gateway.id, client_id="t-sub-" + cfg.gateway.id, clean=False)
    gw = Gateway(cfg)
    tee = _tee(gw)
    try:
        gw.start()
        wait_until(lambda: len(sub.readings) >= 50, 20, 0.2, "readings flowing before the outage")
        mq.stop()
        # An outage long enough to pile up a real backlog: 1,500 readings are 75 packs of 20, enough
        # to see the drain rate rather than its one-second burst.
        wait_until(lambda: gw.outbox.depth >= 1500, 900, 0.5, "1,500 readings queued during the outage")
        backlog = gw.outbox.depth
        sent_before = gw.publisher.c.packs_sent
        mq.start()
        t_back = time.monotonic()
        wait_until(lambda: gw.outbox.depth < 100, 90, 0.1, "the backlog to drain")
        drained_in = time.monotonic() - t_back
        packs = gw.publisher.c.packs_sent - sent_before
        assert packs >= 50  # enough to see the rate, not the one-second burst
        # One-sided: a slow machine only lengthens drained_in, so this fails only if the rate is exceeded.
        assert packs <= 10 * drained_in + 11, f"{packs} packs in {drained_in:.1f} s exceeds 10 packs/s"
        gw.stop_reading()
        gw.outbox.flush()
        wait_until(lambda: gw.outbox.depth == 0, 30, 0.1, "the outbox to empty")
    finally:
        gw.stop()
        sim.stop()
    want = _expected(tee.snapshot())
    assert len(want) >= backlog
    store = open_store(campus)
    try:
        # The gateway is stopped, so nothing more can arrive: wait until InfluxDB holds exactly what was read.
        got = wait_until(
            lambda: (g := influx_readings(store)) == want and g, 90, 0.5, "every reading in InfluxDB"
        )
    finally:
        store.close()
        collector.stop()
    assert got == want  # every reading once, with the value and the time it was read
    wait_until(lambda: sub.keys() >= set(want), 20, 0.2, "every reading at the subscriber")
    assert (
        len(sub.readings) - len(want) <= cfg.mqtt.max_inflight * cfg.mqtt.pack_max_readings
    )  # re-sent in flight
    sub.close()


def _spawn_gateway(cfg_path: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "gateway.service", "--config", str(cfg_path)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip


def _write(cfg: Any, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def test_sigkilled_gateway_loses_nothing_it_had_queued(
    influxdb: Any, make_config: Any, tmp_path: Path
) -> None:
    """Killed twice: once with readings queued (broker away), once with packs sent but never acknowledged."""
    specs = dlt645_fleet(3)
    # Not running yet: everything queues in the outbox.
    mq = Mosquitto(tmp_path / "mq", free_port(), anonymous=True)
    link = LossyLink(mq.port)  # the gateway's way to the broker
    sim, url = start_sim(specs, "tcp")
    cfg = gateway_config(tmp_path, url, specs, link.port, gateway={"poll_on_start": False},
                         poll_groups={"default": {"interval_s": 2}},
                         mqtt={"drain_rate_msgs_s": 2, "pack_max_readings": 50})  # fmt: skip
    cfg_path = _write(cfg, tmp_path / "gateway.yaml")
    log = tmp_path / "gateway.log"
    procs: list[subprocess.Popen[bytes]] = []
    collector = None
    sub = None

    def kill() -> None:
        os.kill(procs[-1].pid, signal.SIGKILL)  # a power cut, as the process sees it
        procs[-1].wait(10)

    try:
        procs.append(_spawn_gateway(cfg_path, log))
        wait_until(lambda: cfg.outbox_path.exists() and len(outbox_rows(cfg.outbox_path)) >= 200, 40, 0.2,
                   "readings queued while the broker is away")  # fmt: skip
        kill()  # mid-poll, perhaps mid-commit
        want = _expected(outbox_rows(cfg.outbox_path))
        assert len(want) >= 200

        mq.start()
        campus = make_config(mq, influxdb, data=campus_data(specs, cfg.gateway.id))
        collector = MqttCollector(campus).start()
        collector.store.ensure_database()
        sub = Subscriber(mq.port, cfg.gateway.id)
        procs.append(_spawn_gateway(cfg_path, log))  # drains at 100 readings/s: slow enough to act mid-drain
        wait_until(lambda: len(sub.readings) >= 100, 30, 0.1, "the drain to start")
        link.dropping.set()  # from now on publishes leave the gateway and are lost on the way
        wait_until(lambda: link.dropped > 4000, 15, 0.05, "packs sent into the void")
        kill()
        link.heal()
        assert len(outbox_rows(cfg.outbox_path)) > 0, "the drain finished before the kill; slow it down"

        procs.append(_spawn_gateway(cfg_path, log))
        store = open_store(campus)
        try:
            wait_until(
                lambda: set(want) <= set(influx_readings(store)), 60, 0.5, "every queued reading stored"
            )
            got = influx_readings(store)
        finally:
            store.close()
        assert {
            k: got[k] for k in want
        } == want  # same values, same timestamps: nothing lost, nothing re-stamped

        kill()  # with the broker reachable: the last will tells the campus
        wait_until(lambda: sub.status and sub.status[-1]["state"] == "offline", 15, 0.2, "the last will")
        procs.append(_spawn_gateway(cfg_path, log))
        wait_until(lambda: sub.status[-1]["state"] == "online", 15, 0.2, "online again")
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(20) == 0
        wait_until(lambda: sub.status[-1]["state"] == "offline", 10, 0.1, "offline on SIGTERM")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        if sub is not None:
            sub.close()
        if collector is not None:
            collector.stop()
        link.close()
        mq.stop()
        sim.stop()
    assert "Traceback" not in log.read_text()


def test_full_outbox_drops_the_oldest_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    specs = dlt645_fleet(1)
    mq = Mosquitto(tmp_path / "mq", free_port(), anonymous=True)
    sim, url = start_sim(specs, "pty")
    cfg = gateway_config(tmp_path, url, specs, mq.port, gateway={"poll_on_start": False},
                         outbox={"max_readings": 100})  # fmt: skip
    gw = Gateway(cfg)
    tee = _tee(gw)
    sub = None
    try:
        gw.start()
        for _ in range(9):
            gw.poll_all()
            assert gw.buses[0].wait_idle(10)
            last = max(r.ts for r in tee.snapshot())
            # A new second before the next poll keeps every reading's key (meter, quantity, ts) unique.
            wait_until(lambda last=last: int(time.time()) > last, 10, 0.05, "the next second")
        gw.outbox.flush()
        made = tee.snapshot()
        assert len(made) > 110
        kept = made[-100:]
        st = gw.outbox.stats()
        assert (st.depth, st.dropped_full, st.warning) == (100, len(made) - 100, True)
        assert any(f"({len(made) - 100} dropped in total)" in r.getMessage() for r in caplog.records)
        mq.start()
        sub = Subscriber(mq.port, cfg.gateway.id)
        wait_until(lambda: sub.keys() >= {r.key for r in kept}, 30, 0.2, "the 100 newest readings")
        assert {r.key: r.value for r in sub.readings} == {r.key: r.value for r in kept}
        wait_until(lambda: any(s.get("outbox", {}).get("dropped_full") == len(made) - 100 for s in sub.status), 15,
                   0.2, "the drop count on the status topic")  # fmt: skip
        status = next(s for s in sub.status if s.get("outbox", {}).get("dropped_full"))
        assert status["outbox"]["capacity"] == 100
    finally:
        gw.stop()
        sim.stop()
        if sub is not None:
            sub.close()
        mq.stop()


# -- a full disk ----------------------------------------------------------------------------------


class _Disk:
    """A directory on a file system the test fills and frees: a tmpfs of 2 MiB, or a SQLite page cap."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.dir = root / "fs"
        self.dir.mkdir()
        self.ballast = self.dir / "ballast"
        self.outbox: Outbox | None = None
        if kind == "tmpfs":
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(self.dir)],
                                  capture_output=True, text=True)  # fmt: skip
            if done.returncode != 0:
                pytest.skip(
                    f"cannot mount a tmpfs here ({done.stderr.strip()}); the max_page_count case runs"
                )

    def open(self, **kw: Any) -> Outbox:
        self.outbox = (CappedOutbox if self.kind == "max_page_count" else Outbox)(self.dir / "o.sqlite", **kw)
        return self.outbox

    def fill(self) -> None:
        if self.kind == "tmpfs":
            with open(self.ballast, "wb", buffering=0) as fh:
                try:
                    while True:
                        fh.write(b"\0" * 4096)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
        else:
            assert isinstance(self.outbox, CappedOutbox)
            self.outbox.page_cap = 1  # SQLite keeps the cap at the current size: no new page fits

    def free(self) -> None:
        if self.kind == "tmpfs":
            self.ballast.unlink()
        else:
            assert isinstance(self.outbox, CappedOutbox)
            self.outbox.page_cap = 1 << 30

    def remove(self) -> None:
        if self.kind == "tmpfs":
            subprocess.run(["umount", "-l", str(self.dir)], check=True)  # lazy: a wedged writer holds files


@pytest.fixture(params=["tmpfs", "max_page_count"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Disk]:
    d = _Disk(request.param, tmp_path)
    yield d
    d.remove()


def test_full_disk_never_wedges_the_outbox_and_every_queued_reading_is_delivered(
    disk: _Disk, mosquitto: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Producers outrun a writer that cannot commit: they must see back-pressure or counted drops.

    30,000 single-reading puts exceed the queue (20,000 operations) plus one commit's batch (5,000),
    so a writer that put its failed batch back into its own queue would block there, and the bus
    threads behind it, for good.
    """
    caplog.set_level(logging.INFO, logger="gateway.outbox")
    ob = disk.open(put_wait_s=0.5)
    t0 = int(time.time()) - 86400  # a day of one-second readings, all in the past
    first = [Reading("e-0", "energy_kwh", 1.0 + i, t0 + i) for i in range(50)]
    ob.put(first)
    assert ob.flush()
    disk.fill()
    per_producer = 15_000
    results: dict[int, list[tuple[Reading, bool]]] = {}

    def produce(k: int) -> None:
        out = []
        for i in range(per_producer):
            r = Reading(f"e-{k + 1}", "energy_kwh", float(i), t0 + i)
            out.append((r, ob.put([r])))
        results[k] = out

    producers = [threading.Thread(target=produce, args=(k,), daemon=True) for k in range(2)]
    for p in producers:
        p.start()
    deadline = time.monotonic() + 120  # a bound for a deadlock, not a speed limit: they need well under 1 s
    for p in producers:
        p.join(max(0.0, deadline - time.monotonic()))
    wedged = any(p.is_alive() for p in producers)
    sub = pub = None
    try:
        assert not wedged, "producers are blocked for good: the outbox writer wedged on its own queue"
        queued = first + [r for k in sorted(results) for r, ok in results[k] if ok]
        dropped = sum(1 for k in results for _, ok in results[k] if not ok)
        st = ob.stats()
        assert st.write_error is not None, "the disk never refused a write; the test proves nothing"
        assert dropped > 0 and st.dropped_unwritable == dropped
        assert len(queued) - len(first) + dropped == 2 * per_producer
        assert any("outbox write failed" in r.getMessage() for r in caplog.records)
        assert any("dropping new readings" in r.getMessage() for r in caplog.records)
        assert not ob.flush(0.2)  # nothing is committed while the disk is full

        disk.free()
        wait_until(lambda: ob.flush(1.0), 60, 0.0, "the writer to commit after space came back")
        st = ob.stats()
        assert (st.depth, st.write_error, st.dropped_unwritable) == (len(queued), None, dropped)
        rows = [r for _, r in ob.fetch(0, len(queued) + 10)]
        for meter in ("e-0", "e-1", "e-2"):  # all of it, each meter's readings in the order put
            assert [r for r in rows if r.meter == meter] == [r for r in queued if r.meter == meter]
        assert len(rows) == len(queued)
        assert any("outbox writes again" in r.getMessage() for r in caplog.records)

        gw_id = "gw-disk-" + disk.kind.replace("_", "-")
        sub = Subscriber(mosquitto.port, gw_id)
        mqtt_cfg = MqttSection(port=mosquitto.port, drain_rate_msgs_s=1000, pack_max_readings=1000)
        pub = Publisher(mqtt_cfg, gw_id, "t-pub-" + gw_id, ob, lambda: {"outbox": ob.stats().as_dict()})
        pub.start()
        wait_until(
            lambda: sub.keys() >= {r.key for r in queued}, 60, 0.2, "every queued reading at the broker"
        )
        assert {r.key: r.value for r in sub.readings} == {r.key: r.value for r in queued}
        wait_until(lambda: ob.depth == 0, 30, 0.1, "acknowledged rows to be deleted")
    finally:
        if pub is not None:
            pub.stop()
        if sub is not None:
            sub.close()
        if not wedged:
            ob.close()
    reopened = Outbox(disk.dir / "o.sqlite")
    try:
        assert reopened.stats().dropped_unwritable == dropped  # the count survives a restart
    finally:
        reopened.close()
