"""The bus engine: one thread owns one serial port and talks to its meters one frame at a time.

RS-485 is half duplex and shared, so frames must never interleave: every request on a port goes
through its one owner thread. Requests are paced by the protocol's silence rules (3.5 character
times before each request), the end of a reply is found from the frame's own length
(``driver.reply_length``) or an inter-character silence, never by sleeping a fixed time. A meter
that stops answering is backed off exponentially and probed with single attempts, so one dead
meter costs one timeout per backoff period instead of ``retries`` timeouts every sweep.
"""

from __future__ import annotations

import logging
import math
import select
import statistics
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from campusmon.quantities import QUANTITIES
from campusmon.reading import Reading
from gateway.config import BusEntry, Quarantine
from gateway.protocols.base import Decoded, FrameError, MeterDriver, Request

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 512  # no meter reply on these buses is longer; more is garbage
MAX_REQUESTS_PER_POLL = 64  # requests and follow-ups of one meter read
_POLL_S = 0.05  # longest single blocking read, so stop() and deadlines are noticed quickly


@dataclass(frozen=True, slots=True)
class ProtocolTiming:
    """Reply timing from the protocol texts (docs/references.md#dlt645, #cjt188, #modbus)."""

    timeout_s: float  # first reply byte, counted from the end of the request on the wire
    inter_char_s: float  # a silence this long inside a reply ends it
    gap_chars: float  # silence before each request, in character times
    min_reply: int  # shortest possible reply: read this much at once before asking the driver


TIMING: dict[str, ProtocolTiming] = {
    # Td <= 500 ms, Tb <= 500 ms. Frames are delimited by 68..16, not by silence; one character
    # lets the last replier release the line, and the FE preamble wakes the next meter.
    "dlt645": ProtocolTiming(timeout_s=0.5, inter_char_s=0.5, gap_chars=1.0, min_reply=12),
    "cjt188": ProtocolTiming(
        timeout_s=1.0, inter_char_s=0.2, gap_chars=1.0, min_reply=13
    ),  # battery meters wake slowly
    # t3.5 marks frame boundaries; t1.5 cannot be kept from user space, so only a longer silence ends a reply.
    "modbus-rtu": ProtocolTiming(timeout_s=0.5, inter_char_s=0.05, gap_chars=3.5, min_reply=5),
}
BUS_GAP_CHARS = 3.5  # after garbage, a port (re)open or a broadcast: the strictest silence of all
MIN_GAP_S = 0.00175  # Modbus fixes t3.5 at 1.75 ms above 19200 baud


class SerialPort(Protocol):
    timeout: float | None

    @property
    def in_waiting(self) -> int: ...
    def fileno(self) -> int: ...
    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes) -> int | None: ...
    def flush(self) -> None: ...
    def reset_input_buffer(self) -> None: ...
    def close(self) -> None: ...


def open_serial(entry: BusEntry) -> SerialPort:
    """Any pyserial URL: a device path, a pty, ``socket://`` (RS-485 serial servers), ``rfc2217://``.

    Ports that can be select()ed (devices, ptys, sockets) are opened non-blocking and the engine
    waits on their descriptor, so one read takes every byte that has arrived; others (rfc2217,
    loop) block for at most a short poll. The timeout is set before opening because changing it
    later re-applies termios, which ptys refuse when parity is set (docs/references.md#pty-parity).
    """
    import serial

    port = serial.serial_for_url(entry.port, do_not_open=True)
    port.baudrate, port.bytesize, port.parity, port.stopbits = (
        entry.baudrate,
        entry.bytesize,
        entry.parity,
        entry.stopbits,
    )
    port.timeout = 0 if callable(getattr(type(port), "fileno", None)) else _POLL_S
    port.write_timeout = 5.0
    port.open()
    return port


def bits_per_char(entry: BusEntry) -> int:
    return 1 + entry.bytesize + (0 if entry.parity == "N" else 1) + entry.stopbits


@dataclass
class MeterSlot:
    """One meter on the bus: its driver, its timing and its reachability state."""

    id: str
    protocol: str
    driver: MeterDriver
    timeout_s: float
    inter_char_s: float
    gap_s: float
    retries: int
    min_reply: int = 1
    failures: int = 0  # consecutive polls without any valid reply
    online: bool | None = None
    retry_at: float = 0.0  # monotonic; quarantined until then
    backoff_s: float = 0.0
    polls: int = 0
    answered: int = 0
    skipped: int = 0
    last_ok_ts: int | None = None
    last_error: str | None = None

    def quarantined(self, now: float) -> bool:
        return self.backoff_s > 0 and now < self.retry_at


class _NoReply(Exception):
    def __init__(self, kind: str, got: int) -> None:
        super().__init__(kind)
        self.kind = kind
        self.got = got


@dataclass
class _Counters:
    requests: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    rtt: deque[float] = field(default_factory=lambda: deque(maxlen=500))
    reads: int = 0
    port_opens: int = 0
    sweeps: int = 0
    last_sweep_s: float | None = None


Sink = Callable[[list[Reading]], None]
StateCallback = Callable[[str, bool, str | None], None]


class BusEngine:
    """Owns one port; ``submit`` queues meters to read, ``broadcast`` queues a no-reply frame."""

    def __init__(
        self,
        entry: BusEntry,
        slots: Sequence[MeterSlot],
        sink: Sink,
        on_state: StateCallback | None = None,
        open_port: Callable[[BusEntry], SerialPort] = open_serial,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.entry = entry
        self.id = entry.id
        self.slots = {s.id: s for s in slots}
        self.sink = sink
        self.on_state = on_state
        self.open_port = open_port
        self.clock = clock
        self.char_s = bits_per_char(entry) / entry.baudrate
        self.gap_s = entry.gap_s if entry.gap_s is not None else max(BUS_GAP_CHARS * self.char_s, MIN_GAP_S)
        self.quarantine: Quarantine = entry.quarantine
        self.port: SerialPort | None = None
        self._port_retry_at = 0.0
        self._port_backoff = 0.0
        self._idle_at = 0.0  # monotonic time the line last fell silent (or was opened)
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._broadcasts: deque[Callable[[], bytes]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._sweep_started: float | None = None
        self._stop = False
        self.c = _Counters()
        self._thread = threading.Thread(target=self._run, name=f"bus-{entry.id}", daemon=True)

    def wire_s(self, nbytes: int) -> float:
        return nbytes * self.char_s

    # -- control, from any thread ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close_port()

    def submit(self, meter_ids: Sequence[str] | None = None) -> int:
        """Queue meters for reading; a meter already waiting is not queued twice (overrun coalesces)."""
        ids = list(self.slots) if meter_ids is None else [m for m in meter_ids if m in self.slots]
        added = 0
        with self._cond:
            if not self._pending and not self._busy:
                self._sweep_started = time.monotonic()
            for m in ids:
                if m not in self._pending:
                    self._pending[m] = None
                    added += 1
            if added < len(ids):
                log.warning("bus %s: %d meters still waiting from the previous poll; the poll interval is "
                            "shorter than a sweep", self.id, len(ids) - added)  # fmt: skip
            self._cond.notify_all()
        return added

    def broadcast(self, build: Callable[[], bytes]) -> None:
        """Queue a frame nobody answers (DL/T 645 time set); built just before it is sent."""
        with self._cond:
            self._broadcasts.append(build)
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._broadcasts and not self._busy,
                                       timeout)  # fmt: skip

    # -- the owner thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or self._pending or self._broadcasts)
                if self._stop:
                    return
                build = self._broadcasts.popleft() if self._broadcasts else None
                meter = None if build else self._pending.popitem(last=False)[0]
                self._busy = True
            try:
                if build is not None:
                    self._send_broadcast(build)
                elif meter is not None:
                    self._read_meter(self.slots[meter])
            except Exception:  # a bug in a driver must not end the bus
                log.exception("bus %s: unexpected error", self.id)
                self.c.errors["internal"] += 1
            with self._cond:
                self._busy = False
                if not self._pending and not self._broadcasts:
                    if self._sweep_started is not None:
                        self.c.last_sweep_s = time.monotonic() - self._sweep_started
                        self.c.sweeps += 1
                        self._sweep_started = None
                    self._cond.notify_all()

    def _ensure_port(self) -> SerialPort | None:
        if self.port is not None:
            return self.port
        now = time.monotonic()
        if now < self._port_retry_at:
            return None
        try:
            self.port = self.open_port(self.entry)
        except Exception as e:
            self._port_backoff = min(max(self._port_backoff * 2, 1.0), 60.0)
            self._port_retry_at = now + self._port_backoff
            self.c.errors["port"] += 1
            log.error(
                "bus %s: cannot open %s: %s (retry in %.0f s)",
                self.id,
                self.entry.port,
                e,
                self._port_backoff,
            )
            return None
        self._port_backoff = 0.0
        self.c.port_opens += 1
        self._idle_at = time.monotonic() + self.gap_s
        log.info("bus %s: opened %s at %d %d%s%d", self.id, self.entry.port, self.entry.baudrate,
                 self.entry.bytesize, self.entry.parity, self.entry.stopbits)  # fmt: skip
        return self.port

    def _close_port(self) -> None:
        if self.port is not None:
            try:
                self.port.close()
            except Exception:
                pass
            self.port = None

    def _port_failed(self, e: Exception) -> None:
        self.c.errors["port"] += 1
        log.error("bus %s: port %s failed: %s; reopening", self.id, self.entry.port, e)
        self._close_port()

    def _read_meter(self, slot: MeterSlot) -> None:
        now = time.monotonic()
        if slot.quarantined(now):
            slot.skipped += 1
            return
        if self._ensure_port() is None:
            return  # a port problem is the bus's, not the meter's: no quarantine
        probing = slot.backoff_s > 0
        attempts = 1 if probing else slot.retries + 1
        queue_: deque[Request] = deque(slot.driver.poll())
        readings: list[Reading] = []
        answered = False
        last_kind: str | None = None
        sent = 0
        while queue_ and sent < MAX_REQUESTS_PER_POLL:  # follow-ups cannot hold the bus for ever
            req = queue_.popleft()
            sent += 1
            try:
                outcome = self._transact(slot, req, attempts)
            except OSError as e:  # SerialException is an OSError
                self._port_failed(e)
                return
            if outcome is None:
                continue  # a broadcast inside a poll
            decoded, ts, kind = outcome
            if kind == "error_reply":
                answered = True  # the meter is alive; it just lacks this item
            elif decoded is None:
                last_kind = kind
                if not answered:
                    break  # silent or babbling meter: do not spend retries on each of its other requests
                continue
            if decoded is not None:
                answered = True
                readings.extend(self._readings(slot, decoded, ts))
                queue_.extend(decoded.follow_up)
        slot.polls += 1
        if readings:
            self.c.reads += 1
            self.sink(readings)
        self._update_state(slot, answered, last_kind)

    def _readings(self, slot: MeterSlot, decoded: Decoded, ts: int) -> list[Reading]:
        out = []
        for q, v in decoded.values.items():
            if q not in QUANTITIES or not isinstance(v, int | float) or not math.isfinite(v):
                self.c.errors["bad_value"] += 1
                log.warning("bus %s meter %s: dropped %s=%r (not a known quantity or not finite)", self.id,
                            slot.id, q, v)  # fmt: skip
                continue
            out.append(Reading(slot.id, q, float(v), ts))
        return out

    def _update_state(self, slot: MeterSlot, answered: bool, kind: str | None) -> None:
        if answered:
            slot.answered += 1
            slot.failures = 0
            slot.backoff_s = 0.0
            slot.last_ok_ts = int(self.clock())
            if slot.online is not True:
                if slot.online is False:
                    log.info("bus %s: meter %s answers again", self.id, slot.id)
                slot.online = True
                self._notify(slot.id, True, None)
            return
        slot.failures += 1
        slot.last_error = kind
        if slot.failures < self.quarantine.after_failures:
            return
        q = self.quarantine
        slot.backoff_s = q.base_s if slot.backoff_s == 0 else min(slot.backoff_s * 2, q.max_s)
        slot.retry_at = time.monotonic() + slot.backoff_s
        if slot.online is not False:
            slot.online = False
            log.warning("bus %s: meter %s does not answer (%s); backing off, next try in %.0f s", self.id,
                        slot.id, kind, slot.backoff_s)  # fmt: skip
            self._notify(slot.id, False, kind)

    def _notify(self, meter: str, online: bool, why: str | None) -> None:
        if self.on_state is not None:
            try:
                self.on_state(meter, online, why)
            except Exception:
                log.exception("meter state callback failed")

    def _transact(
        self, slot: MeterSlot, req: Request, attempts: int
    ) -> tuple[Decoded | None, int, str | None] | None:
        """Send one request (with retries); returns (decoded, ts, failure kind) or None for a broadcast."""
        kind: str | None = None
        for _ in range(attempts):
            self.c.requests += 1
            self._wait_quiet(slot.gap_s)
            t0 = time.monotonic()
            try:
                reply = self._exchange(slot, req)
            except _NoReply as e:
                kind = e.kind
                self.c.errors[kind] += 1
                if e.got:
                    self._flush_input()
                continue
            if reply is None:
                self.c.requests -= 1
                return None
            ts = int(self.clock())  # when the reply arrived: the reading's timestamp, never changed
            try:
                decoded = slot.driver.decode(req, reply)
            except FrameError as e:
                kind = e.kind
                self.c.errors[kind] += 1
                log.debug("bus %s meter %s: %s: %s", self.id, slot.id, e.kind, e)
                if kind == "error_reply":
                    return None, ts, kind  # retrying will not make the meter have the item
                self._flush_input()
                continue
            except Exception as e:
                kind = "decode_bug"
                self.c.errors[kind] += 1
                log.error("bus %s meter %s: driver failed on %s: %r", self.id, slot.id, reply.hex(), e)
                continue
            self.c.ok += 1
            self.c.rtt.append(time.monotonic() - t0)
            return decoded, ts, None
        return None, 0, kind

    def _wait_quiet(self, gap_s: float) -> None:
        delay = self._idle_at + gap_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the protocol's inter-frame silence, computed, not a guess

    def _exchange(self, slot: MeterSlot, req: Request) -> bytes | None:
        port = self.port
        assert port is not None
        port.reset_input_buffer()  # whatever came before the request is not its reply
        t0 = time.monotonic()
        port.write(req.frame)
        port.flush()
        tx_end = max(time.monotonic(), t0 + self.wire_s(len(req.frame)))
        leftover = self._read_echo(port, req.frame, tx_end + slot.inter_char_s) if self.entry.echo else b""
        if not req.expects_reply:
            self._idle_at = tx_end + self.gap_s
            return None
        first_deadline = tx_end + slot.timeout_s
        hard_deadline = first_deadline + self.wire_s(MAX_REPLY_BYTES) + slot.inter_char_s
        buf = bytearray(leftover)
        need: int | None = None
        last_rx = time.monotonic() if buf else 0.0
        try:
            while True:
                if buf:
                    try:
                        need = slot.driver.reply_length(bytes(buf))
                    except FrameError as e:
                        raise _NoReply(e.kind, len(buf)) from None
                    if need is not None and len(buf) >= need:
                        return bytes(buf[:need])
                    if len(buf) > MAX_REPLY_BYTES:
                        raise _NoReply("garbage", len(buf))
                # Ask for bytes that must come anyway: the rest of a known length, or the shortest reply.
                chunk = self._read(
                    port, need - len(buf) if need is not None else max(slot.min_reply - len(buf), 1)
                )
                now = time.monotonic()
                if chunk:
                    buf += chunk
                    last_rx = now
                elif not buf:
                    if now >= first_deadline:
                        raise _NoReply("timeout", 0)
                elif now - last_rx >= slot.inter_char_s:
                    raise _NoReply("truncated" if need is not None else "garbage", len(buf))
                if now >= hard_deadline:
                    raise _NoReply("garbage", len(buf))
        finally:
            self._idle_at = last_rx or time.monotonic()

    def _read(self, port: SerialPort, want: int) -> bytes:
        """Whatever has arrived, waiting at most one poll period for the first byte."""
        if port.timeout == 0:
            ready, _, _ = select.select([port.fileno()], [], [], _POLL_S)
            return port.read(4096) if ready else b""
        return port.read(max(want, port.in_waiting))

    def _read_echo(self, port: SerialPort, frame: bytes, deadline: float) -> bytes:
        """Swallow the adapter's copy of our request; returns any reply bytes read with it."""
        got = bytearray()
        while len(got) < len(frame) and time.monotonic() < deadline:
            got += self._read(port, len(frame) - len(got))
        return bytes(got[len(frame) :])

    def _flush_input(self) -> None:
        """After garbage: wait for the line to go quiet, then drop what is buffered."""
        port = self.port
        if port is None:
            return
        deadline = time.monotonic() + max(0.5, 4 * self.gap_s)
        last = time.monotonic()
        while time.monotonic() < deadline:
            if self._read(port, 4096):
                last = time.monotonic()
            elif time.monotonic() - last >= self.gap_s:
                break
        port.reset_input_buffer()
        self._idle_at = time.monotonic() + self.gap_s

    def _send_broadcast(self, build: Callable[[], bytes]) -> None:
        if self._ensure_port() is None:
            return
        self._wait_quiet(self.gap_s)
        frame = build()
        try:
            self.port.write(frame)  # type: ignore[union-attr]
            self.port.flush()  # type: ignore[union-attr]
        except OSError as e:
            self._port_failed(e)
            return
        self._idle_at = time.monotonic() + self.wire_s(len(frame)) + self.gap_s
        log.info("bus %s: broadcast %d bytes", self.id, len(frame))

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        c = self.c
        rtt = sorted(c.rtt)
        now = time.monotonic()
        meters = {
            s.id: {
                "state": {True: "online", False: "offline", None: "unknown"}[s.online],
                "polls": s.polls,
                "answered": s.answered,
                "last_ok_ts": s.last_ok_ts,
                "last_error": s.last_error,
                "retry_in_s": round(s.retry_at - now, 1) if s.quarantined(now) else None,
            }
            for s in self.slots.values()
        }
        return {
            "port": self.entry.port,
            "port_open": self.port is not None,
            "requests": c.requests,
            "ok": c.ok,
            "success_rate": round(c.ok / c.requests, 4) if c.requests else None,
            "errors": dict(c.errors),
            "rtt_ms": {
                "mean": round(statistics.fmean(rtt) * 1000, 1),
                "p50": round(rtt[len(rtt) // 2] * 1000, 1),
                "p95": round(rtt[min(len(rtt) - 1, int(len(rtt) * 0.95))] * 1000, 1),
                "max": round(rtt[-1] * 1000, 1),
            }
            if rtt
            else None,
            "reads": c.reads,
            "sweeps": c.sweeps,
            "last_sweep_s": round(c.last_sweep_s, 3) if c.last_sweep_s is not None else None,
            "meters_online": sum(1 for s in self.slots.values() if s.online),
            "meters_offline": sorted(s.id for s in self.slots.values() if s.online is False),
            "meters": meters,
        }


def make_slots(entry: BusEntry, make_driver: Callable[[str, str, str, dict[str, Any]], MeterDriver]
               ) -> list[MeterSlot]:  # fmt: skip
    """Drivers and timing for every meter of a bus; per-meter settings override the bus's."""
    slots = []
    char_s = bits_per_char(entry) / entry.baudrate
    for i, m in enumerate(entry.meters):
        t = TIMING[m.protocol]
        try:
            driver = make_driver(m.protocol, m.id, m.address, m.driver_options())
        except Exception as e:
            raise ValueError(f"meters[{i}] ({m.id}): {e}") from None
        slots.append(
            MeterSlot(
                id=m.id,
                protocol=m.protocol,
                driver=driver,
                timeout_s=m.timeout_s or entry.timeout_s or t.timeout_s,
                inter_char_s=entry.inter_char_s or t.inter_char_s,
                gap_s=entry.gap_s if entry.gap_s is not None else max(t.gap_chars * char_s, MIN_GAP_S),
                retries=entry.retries if m.retries is None else m.retries,
                min_reply=t.min_reply,
            )
        )
    return slots
