"""CPU cost of the protocol drivers per reply, against baselines measured in the same run.

For each protocol, one poll's reply is decoded many times, and ``reply_length`` is called after
every single byte (the worst case for the bus engine, which calls it after each chunk it reads).
Baselines: the bare frame checksum (DL/T 645, CJ/T 188) and pymodbus's own RTU framer + PDU
decoder (Modbus). The reply's wire time at the protocol's usual baud rate is printed alongside:
decoding has to be a small fraction of it.

Run: .venv/bin/python bench/protocols.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadInputRegistersResponse

from gateway.protocols import dlt645, sumframe
from gateway.protocols.drivers import make_driver


def per_call(fn: Callable[[], object], min_time: float = 0.3) -> float:
    """Seconds per call, from enough repetitions to run at least ``min_time``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n
        n *= 2


def wire_ms(nbytes: int, baud: int, bits: int = 11) -> float:
    return nbytes * bits / baud * 1000


def main() -> None:
    rows = []

    dlt = make_driver("dlt645", "e", "000000000161", {"dis": ["0201FF00"]})
    (req,) = dlt.poll()
    body = (0x0201FF00).to_bytes(4, "little") + bytes.fromhex("00 23 10 23 20 23")
    reply = dlt645.encode_frame(dlt645.Frame("000000000161", 0x91, body))
    rows.append(("dlt645 0201FF00", reply, 2400, lambda: dlt.decode(req, reply),
                 lambda: sumframe.checksum(reply[4:-2]), dlt.reply_length))  # fmt: skip

    cjt = make_driver("cjt188", "w", "00201809230001", {})
    (creq,) = cjt.poll()
    creply = bytes.fromhex(
        "FE FE 68 10 01 00 23 09 18 20 00 81 16 90 1F 01 60 00 00 00 2C 60 00 00 00 2C"
        "60 20 20 00 00 00 00 00 00 DC 16"
    )
    rows.append(("cjt188 901F", creply, 2400, lambda: cjt.decode(creq, creply),
                 lambda: sumframe.checksum(creply[2:-2]), cjt.reply_length))  # fmt: skip

    rtu = make_driver("modbus-rtu", "p", 1, {"profile": "eastron_sdm630"})
    (mreq,) = rtu.poll()
    words = [0x4366, 0x3334] * 38
    mreply = FramerRTU(DecodePDU(False)).buildFrame(ReadInputRegistersResponse(registers=words, dev_id=1))
    framer = FramerRTU(DecodePDU(False))

    def pymodbus_only() -> object:
        _, _, _, pdu = framer.decode(mreply)
        return framer.decoder.decode(pdu)

    rows.append(("modbus sdm630 76 regs", mreply, 9600, lambda: rtu.decode(mreq, mreply), pymodbus_only,
                 rtu.reply_length))  # fmt: skip

    print(f"{'reply':24} {'bytes':>5} {'wire ms':>8} {'decode us':>10} {'baseline us':>11} {'ratio':>6} "
          f"{'len/byte us':>11} {'cpu/wire':>9}")  # fmt: skip
    for name, frame, baud, decode, baseline, reply_length in rows:
        t_dec = per_call(decode)
        t_base = per_call(baseline)

        def byte_by_byte(
            frame: bytes = frame, reply_length: Callable[[bytes], int | None] = reply_length
        ) -> None:
            for k in range(1, len(frame) + 1):
                reply_length(frame[:k])

        t_len = per_call(byte_by_byte)
        wire = wire_ms(len(frame), baud, 11 if baud == 2400 else 10)
        cpu_ms = (t_dec + t_len) * 1000
        print(f"{name:24} {len(frame):5d} {wire:8.1f} {t_dec * 1e6:10.1f} {t_base * 1e6:11.1f} "
              f"{t_dec / t_base:6.1f} {t_len * 1e6 / len(frame):11.1f} {cpu_ms / wire:9.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
