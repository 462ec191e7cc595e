"""The outbox keeps readings through kills and bounds, and gives them back in order, unchanged."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from campusmon.reading import Reading
from gateway.outbox import Outbox, OutboxBusy
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
# Recent: older readings would be expired by the age bound mid-test.
T0 = int(time.time()) // 60 * 60 - 3 * 3600


class CappedOutbox(Outbox):
    """An outbox whose SQLite file may not grow past ``page_cap`` pages (SQLITE_FULL, as on a full disk)."""

    page_cap: int | None = None

    def _apply(self, batch: list[tuple[str, object]]) -> None:
        if self.page_cap is not None:  # in the writer thread, on the writer's connection
            self._w.execute(f"PRAGMA max_page_count={int(self.page_cap)}")
        super()._apply(batch)


def readings(n: int, start: int = 0, meter: str = "e-1") -> list[Reading]:
    return [Reading(meter, "energy_kwh", 1000.0 + i / 100, T0 + 900 * i) for i in range(start, start + n)]


def test_rows_come_back_in_order_with_original_timestamps(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        ob.put(readings(3))
        ob.put([Reading("w-1", "volume_m3", 12.5, T0 + 1), Reading("e-1", "power_w", -350.0, T0 + 2)])
        assert ob.flush()
        rows = ob.fetch(0, 100)
        assert [r for _, r in rows] == readings(3) + [
            Reading("w-1", "volume_m3", 12.5, T0 + 1),
            Reading("e-1", "power_w", -350.0, T0 + 2),
        ]
        ids = [i for i, _ in rows]
        assert ids == sorted(ids)
        assert ob.fetch(ids[2], 100) == rows[3:]
        ob.ack(ids[:2])
        assert ob.flush()
        assert ob.depth == 3
        assert [r for _, r in ob.fetch(0, 100)] == [r for _, r in rows[2:]]
    finally:
        ob.close()


def test_ids_keep_growing_after_the_outbox_empties(tmp_path: Path) -> None:
    """The drain cursor relies on it: an emptied table must not hand out id 1 again."""
    ob = Outbox(tmp_path / "o.sqlite")
    ob.put(readings(2))
    ob.flush()
    ids = [i for i, _ in ob.fetch(0, 10)]
    ob.ack(ids)
    ob.flush()
    ob.close()
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        ob.put(readings(1, start=5))
        ob.flush()
        ((new_id, _),) = ob.fetch(0, 10)
        assert new_id > max(ids)
    finally:
        ob.close()


def test_full_outbox_drops_oldest_counts_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    ob = Outbox(tmp_path / "o.sqlite", max_readings=100, warn_fill=0.9)
    ob.put(readings(85))
    ob.flush()
    assert not ob.stats().warning
    ob.put(readings(10, start=85))
    ob.flush()
    st = ob.stats()
    assert st.warning and st.depth == 95 and st.dropped_full == 0
    assert any("95% full" in r.getMessage() for r in caplog.records)
    ob.put(readings(55, start=95))
    ob.flush()
    st = ob.stats()
    assert (st.depth, st.dropped_full, st.fill) == (100, 50, 1.0)
    kept = [r for _, r in ob.fetch(0, 1000)]
    assert kept == readings(100, start=50)
    assert st.oldest_ts == T0 + 900 * 50
    assert any("dropped the 50 oldest" in r.getMessage() for r in caplog.records)
    ob.close()
    ob = Outbox(tmp_path / "o.sqlite", max_readings=100)
    try:
        assert ob.stats().dropped_full == 50  # the count survives a restart
    finally:
        ob.close()


def test_readings_past_the_age_bound_expire_and_are_counted(tmp_path: Path) -> None:
    now = T0 + 100 * 86400
    ob = Outbox(tmp_path / "o.sqlite", max_age_s=10 * 86400, clock=lambda: now)
    try:
        old = [Reading("e-1", "energy_kwh", float(i), now - 20 * 86400 + i) for i in range(5)]
        fresh = [Reading("e-1", "energy_kwh", float(i), now - 86400 + i) for i in range(3)]
        ob.put(old + fresh)
        ob.expire_now()
        ob.flush()
        st = ob.stats()
        assert (st.depth, st.dropped_expired, st.dropped_full) == (3, 5, 0)
        assert [r for _, r in ob.fetch(0, 10)] == fresh
    finally:
        ob.close()


def test_nothing_committed_is_lost_on_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from campusmon.reading import Reading
        from gateway.outbox import Outbox, OutboxBusy
        ob = Outbox({str(path)!r})
        for i in range(2000):
            ob.put([Reading("e-1", "energy_kwh", i / 10, {T0} + i)])
        ob.flush()
        ids = [i for i, _ in ob.fetch(0, 500)]
        ob.ack(ids)
        ob.flush()
        print("ready", flush=True)
        n = 0
        while True:  # keep writing until killed: a kill mid-transaction must not corrupt the file
            ob.put([Reading("e-2", "power_w", 1.0, {T0})])
            n += 1
            if n == 200:
                ob.flush()
                print("writing", flush=True)  # commits are under way; the kill lands among them
            time.sleep(0.001)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ob = Outbox(path)
    try:
        rows = [r for _, r in ob.fetch(0, 10_000) if r.meter == "e-1"]
        assert rows == [Reading("e-1", "energy_kwh", i / 10, T0 + i) for i in range(500, 2000)]
        assert ob.depth == len(ob.fetch(0, 100_000))
    finally:
        ob.close()


def test_unreadable_file_is_kept_aside_and_a_fresh_outbox_starts(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    path = tmp_path / "o.sqlite"
    path.write_bytes(b"this is not a database" * 200)
    ob = Outbox(path)
    try:
        ob.put(readings(1))
        ob.flush()
        assert ob.depth == 1
        assert list(tmp_path.glob("o.sqlite.corrupt-*"))
        assert any("unreadable" in r.getMessage() for r in caplog.records)
    finally:
        ob.close()


def test_wait_beyond_wakes_on_commit(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        assert not ob.wait_beyond(0, 0.05)
        ob.put(readings(1))
        assert ob.wait_beyond(0, 60.0)  # True only once the row is committed; False had it timed out
        ((row_id, _),) = ob.fetch(0, 10)
        assert not ob.wait_beyond(row_id, 0.05)  # nothing newer yet
    finally:
        ob.close()


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        with pytest.raises(OutboxBusy, match="in use by another process"):
            Outbox(tmp_path / "o.sqlite")
    finally:
        ob.close()
    Outbox(tmp_path / "o.sqlite").close()  # free again once the first one is closed


def test_close_while_writes_fail_returns_and_says_what_was_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ob = CappedOutbox(tmp_path / "o.sqlite")
    ob.put(readings(1))
    assert ob.flush()
    ob.page_cap = 1  # no page more: every commit from now on fails
    ob.put(readings(500, start=1))
    wait_until(lambda: ob.stats().write_error is not None, 30, 0.02, "the first failed commit")
    assert "full" in (ob.stats().write_error or "")
    assert not ob.flush(0.2)
    closer = threading.Thread(target=ob.close, kwargs={"timeout": 1.0}, daemon=True)
    closer.start()
    closer.join(60)  # a bound for a hang, not a speed limit
    assert not closer.is_alive()
    assert any("500 queued readings were not written" in r.getMessage() for r in caplog.records)
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        assert [r for _, r in ob.fetch(0, 10)] == readings(1)  # what was committed is intact
    finally:
        ob.close()
