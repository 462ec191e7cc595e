"""Frame hunting shared by DL/T 645 and CJ/T 188: ``68 ... L DATA CS 16`` with a mod-256 sum.

Both protocols start a frame with 68H, carry the data length at a fixed offset, end with a byte sum
and 16H, and may be preceded by FE wake-up bytes or line noise. Hunting lives here once so the two
codecs differ only in their header layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gateway.protocols.base import FrameError

START = 0x68
END = 0x16
PREAMBLE = 0xFE


def checksum(data: bytes) -> int:
    """Mod-256 byte sum, the check byte of both protocols."""
    return sum(data) & 0xFF


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a protocol keeps its length byte, and what makes a header plausible."""

    name: str
    length_pos: int  # offset of L from the opening 68H
    header_ok: Callable[[bytes], bool]  # called with the header bytes up to and including L
    max_data: int = 255

    @property
    def overhead(self) -> int:
        """Frame bytes besides the data: header, L, CS and 16H."""
        return self.length_pos + 3


@dataclass(frozen=True, slots=True)
class Candidate:
    """A 68H in the buffer that could start a frame, and how far it got."""

    start: int
    end: int | None  # None while the buffer is too short to tell
    terminated: bool = False  # 16H where the length says the frame ends
    sum_ok: bool = False

    @property
    def valid(self) -> bool:
        return self.terminated and self.sum_ok


def candidates(buf: bytes, layout: Layout) -> Iterator[Candidate]:
    """Every plausible frame start in ``buf``, in order; incomplete ones end the scan."""
    pos = buf.find(START)
    while pos >= 0:
        header_end = pos + layout.length_pos + 1
        if header_end > len(buf):
            yield Candidate(pos, None)
            return
        header = buf[pos:header_end]
        length = header[-1]
        if layout.header_ok(header) and length <= layout.max_data:
            end = pos + layout.overhead + length
            if end > len(buf):
                yield Candidate(pos, None)
            else:
                terminated = buf[end - 1] == END
                sum_ok = checksum(buf[pos : end - 2]) == buf[end - 2]
                yield Candidate(pos, end, terminated, sum_ok)
        pos = buf.find(START, pos + 1)


def reply_length(buf: bytes, layout: Layout, is_reply: Callable[[bytes], bool]) -> int | None:
    """Bytes up to the end of the first reply in ``buf``, or None while one may still be arriving.

    A complete valid frame that is not a reply (a TX echo from the adapter) is skipped. When only
    a terminated frame with a bad sum is there, its length is returned so the decoder can report it
    instead of the engine waiting for a time-out. A 68H inside a terminated frame (DL/T 645 has a
    second one in every header) does not count as a frame still arriving.
    """
    pending = False
    covered = 0
    bad_end: int | None = None
    for cand in candidates(buf, layout):
        if cand.end is None:
            pending = pending or cand.start >= covered
        elif cand.valid and is_reply(buf[cand.start : cand.end]):
            return cand.end
        elif cand.terminated:
            covered = max(covered, cand.end)
            if not cand.sum_ok and bad_end is None:
                bad_end = cand.end
    return None if pending else bad_end


def extract(
    buf: bytes,
    layout: Layout,
    accept: Callable[[bytes], bool] | None = None,
    strict: bool = True,
    wanted: str = "replies",
) -> bytes:
    """The first valid frame in ``buf`` (from 68H through 16H) for which ``accept`` holds.

    With ``strict=False`` a terminated frame with a wrong sum is returned too, so a field tool can
    still show what it says. Anything else raises a FrameError naming what was wrong.
    """
    bad: Candidate | None = None
    truncated: Candidate | None = None
    unterminated = False
    skipped = 0
    covered = 0
    for cand in candidates(buf, layout):
        if cand.end is None:
            if cand.start >= covered:
                truncated = truncated or cand
            continue
        frame = buf[cand.start : cand.end]
        covered = max(covered, cand.end)
        if cand.valid:
            if accept is None or accept(frame):
                return frame
            skipped += 1
        elif cand.terminated:
            bad = bad or cand
        else:
            unterminated = True
    if bad is not None and bad.end is not None:
        frame = buf[bad.start : bad.end]
        if not strict:
            return frame
        raise FrameError(
            "checksum",
            f"{layout.name}: checksum mismatch: frame has {frame[-2]:02X}, "
            f"computed {checksum(frame[:-2]):02X}",
        )
    if truncated is not None:
        have = len(buf) - truncated.start
        raise FrameError("truncated", f"{layout.name}: frame cut short after {have} bytes")
    body = buf.lstrip(bytes([PREAMBLE]))
    if not body:
        raise FrameError("truncated", f"{layout.name}: no frame (empty or only FE preamble)")
    if skipped:
        raise FrameError("unexpected", f"{layout.name}: found only frames that are not {wanted}")
    if unterminated:
        raise FrameError("garbage", f"{layout.name}: no 16H end byte where the length says the frame ends")
    raise FrameError("garbage", f"{layout.name}: no frame start (68H) with a plausible header")
