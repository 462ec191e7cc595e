"""A simulated RS-485 bus: many meters behind one port, served on a pseudo-terminal or on TCP.

The bus reads request bytes, hunts for complete frames (skipping FE preambles and noise), hands each
frame to the meter(s) it addresses and writes the reply back with byte pacing at the configured line
speed: a byte of ``1 + bytesize + parity + stopbits`` bits arrives ``bits / baud`` seconds after the
previous one, the request is taken to end when its own bytes would have finished arriving, and the
meter's turnaround time passes before its reply starts. One transaction at a time (half duplex).

Modbus meters are answered by the bus itself with pymodbus's PDU decoder, datastore and RTU framer
(see :mod:`firmware_sim.serial.modbus_meter`), so they mix freely with DL/T 645 and CJ/T 188 meters
and get the same pacing and faults; :class:`~firmware_sim.serial.modbus_meter.PymodbusServer` serves
a Modbus-only set through pymodbus's own server instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
import tty
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_sim.serial.cjt188_meter import Cjt188Meter
from firmware_sim.serial.clock import SimClock
from firmware_sim.serial.dlt645_meter import Dlt645Meter
from firmware_sim.serial.meter import INCOMPLETE, SerialMeter
from firmware_sim.serial.modbus_meter import ModbusMeter

log = logging.getLogger(__name__)

PARITY_BITS = {"N": 0, "E": 1, "O": 1, "M": 1, "S": 1}
# Order in which frame rules are tried at each offset (the first complete match wins).
_KINDS: tuple[type[SerialMeter], ...] = (Dlt645Meter, Cjt188Meter, ModbusMeter)
_WRITE_SLICE_S = 0.002  # pace in slices of about this long (one byte at 2400 baud)


def char_time(baud: int, bytesize: int = 8, parity: str = "N", stopbits: float = 1) -> float:
    """Seconds one character occupies on the line: start bit, data bits, parity bit, stop bits."""
    return (1 + bytesize + PARITY_BITS[parity] + stopbits) / baud


@dataclass
class Found:
    """A complete request frame found in a line's input."""

    kind: type[SerialMeter]
    frame: bytes
    wire_bytes: int  # frame plus the FE preamble right before it
    t_first: float  # monotonic arrival time of the first of those bytes
    t_last: float


class FrameHunter:
    """Finds request frames in the bytes received on one line, however they were split or polluted."""

    def __init__(self, max_buffer: int = 2048) -> None:
        self.buf = bytearray()
        self.times: list[float] = []
        self.max_buffer = max_buffer
        self.noise_bytes = 0

    def feed(self, data: bytes, t: float) -> None:
        self.buf += data
        self.times += [t] * len(data)

    def _drop(self, n: int) -> None:
        self.noise_bytes += n
        del self.buf[:n]
        del self.times[:n]

    def reset(self) -> None:
        self._drop(len(self.buf))

    @property
    def last_arrival(self) -> float | None:
        return self.times[-1] if self.times else None

    def next_frame(self, kinds: Sequence[type[SerialMeter]]) -> Found | None:
        """The earliest complete valid frame; bytes before it are noise and are dropped."""
        droppable = 0  # leading bytes at which no frame can start
        for start in range(len(self.buf)):
            pending = False
            for kind in kinds:
                n = kind.frame_length(self.buf, start)
                if n > 0:
                    pre = start
                    while pre > 0 and self.buf[pre - 1] == 0xFE:
                        pre -= 1
                    found = Found(
                        kind,
                        bytes(self.buf[start : start + n]),
                        start + n - pre,
                        self.times[pre],
                        self.times[start + n - 1],
                    )
                    self.noise_bytes += pre
                    del self.buf[: start + n]
                    del self.times[: start + n]
                    return found
                if n == INCOMPLETE:
                    pending = True
            if not pending and droppable == start and self.buf[start] != 0xFE:
                droppable = start + 1
        if droppable:
            self._drop(droppable)
        if len(self.buf) > self.max_buffer:  # only a flood without frames gets here
            self._drop(len(self.buf) - self.max_buffer)
        return None


@dataclass
class Transaction:
    """One request on the bus and what went back, for tests and benchmarks."""

    t: float  # simulator time of the request
    request: bytes
    wire_in: int  # bytes the request occupied on the line (frame + preamble)
    replies: list[tuple[str, bytes]] = field(default_factory=list)  # (meter address, bytes sent)
    wire_out: int = 0
    faults: dict[str, list[str]] = field(default_factory=dict)
    collision: bool = False


class _Endpoint:
    """One way into the bus (the pty, or one TCP connection) with its own input buffer."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hunter = FrameHunter()
        self.event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def received(self, data: bytes) -> None:
        self.hunter.feed(data, time.monotonic())
        self.event.set()

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class _PtyEndpoint(_Endpoint):
    def __init__(self, loop: asyncio.AbstractEventLoop, link: Path | None) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line editing before the poller configures the port
        os.set_blocking(master, False)
        self.master, self.slave = master, slave
        self.path = os.ttyname(slave)
        super().__init__(self.path)
        self.link = link
        if link is not None:
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                os.close(master)
                os.close(slave)
                raise FileExistsError(f"{link} exists and is not a symlink")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(self.path)
        self.loop = loop
        self.dropped = 0
        loop.add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # EIO while no one has the slave open; we keep the slave open, so rare
        if data:
            self.received(data)

    async def write(self, data: bytes) -> None:
        try:
            os.write(self.master, data)
        except BlockingIOError:
            self.dropped += len(data)  # nobody reads the port and its buffer is full: bytes are lost

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.loop.remove_reader(self.master)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()


class _TcpEndpoint(_Endpoint):
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        super().__init__(f"tcp {peer}")
        self.writer = writer

    async def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        self.writer.close()


class SimBus:
    """Meters sharing one simulated RS-485 line.

    ``pace=False`` answers as fast as possible (unit tests of the codecs); with ``pace=True`` every
    transaction takes its real wire time at ``baud``/``bytesize``/``parity``/``stopbits`` plus the
    meter's turnaround. ``clock`` drives every meter's model (a frozen :class:`SimClock` makes the
    values a test reads stable).
    """

    def __init__(
        self,
        meters: Iterable[SerialMeter] = (),
        *,
        baud: int = 2400,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: float = 1,
        pace: bool = True,
        turnaround_s: float = 0.02,
        clock: SimClock | None = None,
        idle_reset_s: float = 0.5,
        log_size: int = 10000,
    ) -> None:
        if baud <= 0:
            raise ValueError("baud must be positive")
        if bytesize not in (5, 6, 7, 8):
            raise ValueError("bytesize must be 5..8")
        if parity not in PARITY_BITS:
            raise ValueError(f"parity must be one of {', '.join(PARITY_BITS)}")
        if stopbits not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        if turnaround_s < 0:
            raise ValueError("turnaround must not be negative")
        self.baud, self.bytesize, self.parity, self.stopbits = baud, bytesize, parity, stopbits
        self.pace = pace
        self.turnaround_s = turnaround_s
        self.clock = clock
        self.idle_reset_s = idle_reset_s
        self.meters: list[SerialMeter] = []
        self.transactions: deque[Transaction] = deque(maxlen=log_size)
        self.stats: dict[str, int] = {
            "requests": 0,
            "replies": 0,
            "unanswered": 0,
            "collisions": 0,
            "errors": 0,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._line: asyncio.Lock | None = None
        self._endpoints: list[_Endpoint] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self.pty_path: str | None = None
        self.tcp_url: str | None = None
        for m in meters:
            self.add(m)

    # -- meters ---------------------------------------------------------------------------------------

    def add(self, meter: SerialMeter) -> SerialMeter:
        key = (meter.protocol, meter.address)
        if any((m.protocol, m.address) == key for m in self.meters):
            raise ValueError(f"{meter.describe()} is already on this bus")
        if self.clock is not None:
            meter.clock = self.clock
            meter.model.clock = self.clock  # type: ignore[attr-defined]
        self.meters.append(meter)
        return meter

    def meter(self, address: str | int) -> SerialMeter:
        """The meter with this address (12 digits DL/T 645, 14 digits CJ/T 188, unit id for Modbus)."""
        key = str(address)
        for m in self.meters:
            if m.address == key:
                return m
        raise KeyError(f"no meter with address {key} on this bus")

    @property
    def char_time(self) -> float:
        return char_time(self.baud, self.bytesize, self.parity, self.stopbits)

    def wire_time(self, nbytes: int) -> float:
        """Seconds ``nbytes`` occupy on this line."""
        return nbytes * self.char_time

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> SimBus:
        if self._thread is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="simbus", daemon=True)
        self._thread.start()
        return self

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        self.start()
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def serve_pty(self, link: str | Path | None = None) -> str:
        """Open a pseudo-terminal for the poller; returns the path to open (the link, when given)."""
        path = self._call(self._open_pty(Path(link) if link else None))
        self.pty_path = path
        return str(link) if link else path

    def serve_tcp(self, port: int = 0, host: str = "127.0.0.1") -> str:
        """Listen like a transparent serial server; returns the pyserial URL ``socket://host:port``."""
        url = self._call(self._open_tcp(host, port))
        self.tcp_url = url
        return url

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._close(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None
        self._thread = None
        self._line = None  # bound to the closed loop; a restarted bus makes a new one
        self.pty_path = self.tcp_url = None

    def __enter__(self) -> SimBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _open_pty(self, link: Path | None) -> str:
        assert self._loop is not None
        ep = _PtyEndpoint(self._loop, link)
        self._attach(ep)
        return ep.path

    async def _open_tcp(self, host: str, port: int) -> str:
        server = await asyncio.start_server(self._on_connection, host, port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        return f"socket://{bound[0]}:{bound[1]}"

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ep = _TcpEndpoint(writer)
        self._attach(ep)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while data := await reader.read(4096):
                ep.received(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if ep.task is not None:
                ep.task.cancel()
            ep.close()
            if ep in self._endpoints:
                self._endpoints.remove(ep)
            if handler is not None:
                self._handlers.discard(handler)

    def _attach(self, ep: _Endpoint) -> None:
        self._endpoints.append(ep)
        ep.task = asyncio.get_running_loop().create_task(self._serve(ep))

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        tasks = [t for t in self._handlers if not t.done()]
        for ep in list(self._endpoints):
            if ep.task is not None:
                tasks.append(ep.task)
            ep.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._endpoints.clear()
        self._handlers.clear()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()

    # -- the line -------------------------------------------------------------------------------------

    def _kinds(self) -> list[type[SerialMeter]]:
        present = {type(m) for m in self.meters}
        return [k for k in _KINDS if any(issubclass(p, k) for p in present)]

    async def _serve(self, ep: _Endpoint) -> None:
        if self._line is None:
            self._line = asyncio.Lock()
        while not ep.closed:
            try:
                await asyncio.wait_for(ep.event.wait(), timeout=self.idle_reset_s)
            except TimeoutError:
                last = ep.hunter.last_arrival
                if last is not None and time.monotonic() - last >= self.idle_reset_s:
                    ep.hunter.reset()  # a partial frame followed by silence is abandoned, as a UART would
                continue
            ep.event.clear()
            while (found := ep.hunter.next_frame(self._kinds())) is not None:
                async with self._line:
                    try:
                        await self._transact(ep, found)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        self.stats["errors"] += 1
                        log.exception("simulated bus failed on request %s", found.frame.hex(" "))

    async def _sleep_until(self, t: float) -> None:
        while (delay := t - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    async def _transact(self, ep: _Endpoint, found: Found) -> None:
        self.stats["requests"] += 1
        t_request_end = found.t_last
        if self.pace:
            t_request_end = max(found.t_last, found.t_first + self.wire_time(found.wire_bytes))
        await self._sleep_until(t_request_end)
        now = self.clock.now() if self.clock else time.time()
        tx = Transaction(now, found.frame, found.wire_bytes)
        outputs: list[tuple[float, float, bytes]] = []  # (turnaround, fault delay, bytes)
        for meter in [m for m in self.meters if isinstance(m, found.kind) and m.claims(found.frame)]:
            before = dict(meter.served)
            reply = await meter.respond(found.frame)
            if reply is None:
                continue
            plan = meter.line_plan()
            if plan.faults:
                tx.faults[meter.address] = plan.faults
            if plan.drop:
                meter.served = before  # the poller never saw these values
                reply = b""
            else:
                if plan.corrupt_checksum:
                    reply = meter.corrupt_checksum(reply)
                if plan.keep is not None:
                    reply = reply[: len(reply) // 2 if plan.keep < 0 else plan.keep]
            data = plan.garbage_before + reply + plan.garbage_after
            if not data:
                continue
            turnaround = self.turnaround_s if meter.turnaround_s is None else meter.turnaround_s
            outputs.append((turnaround, plan.delay_s, data))
            tx.replies.append((meter.address, data))
        self.transactions.append(tx)
        if not outputs:
            self.stats["unanswered"] += 1
            return
        data = outputs[0][2]
        if len(outputs) > 1:  # several drivers at once: the line carries garbage
            tx.collision = True
            self.stats["collisions"] += 1
            merged = bytearray(b"\xff" * max(len(d) for _, _, d in outputs))
            for _, _, d in outputs:
                for i, b in enumerate(d):
                    merged[i] &= b
            data = bytes(merged)
        self.stats["replies"] += 1
        tx.wire_out = len(data)
        if self.pace:
            await self._send_paced(ep, data, t_request_end + min(t + d for t, d, _ in outputs))
        else:
            fault_delay = min(d for _, d, _ in outputs)
            if fault_delay > 0:
                await asyncio.sleep(fault_delay)  # a late reply is late on an unpaced bus too
            await ep.write(data)

    async def _send_paced(self, ep: _Endpoint, data: bytes, t_start: float) -> None:
        """Write ``data`` so that byte i is complete at ``t_start + (i + 1) * char_time``."""
        char = self.char_time
        per = max(1, math.ceil(_WRITE_SLICE_S / char))
        for i in range(0, len(data), per):
            chunk = data[i : i + per]
            await self._sleep_until(t_start + (i + len(chunk)) * char)
            await ep.write(chunk)
