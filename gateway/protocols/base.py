"""What the bus engine needs from a protocol, and nothing more.

A ``MeterDriver`` turns one configured meter into the request frames of one poll and each reply
into (quantity, value) pairs. It is pure: the bus engine owns the port, the timing and retries.
This mirrors pymodbus's framer/PDU split: the driver knows frames, the engine knows the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class FrameError(Exception):
    """A reply that cannot be used: truncated, bad checksum, wrong address, garbage, error reply.

    ``kind`` is a short stable word (``truncated``, ``checksum``, ``address``, ``garbage``,
    ``error_reply``, ``unexpected``) so the engine can count failures by kind.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Request:
    """One frame to send, and what to do with its reply."""

    frame: bytes
    # Free-form context the driver needs to parse the reply (data identifier, register block...).
    context: Any = None
    # False for broadcasts (DL/T 645 address 99..99, Modbus id 0): nothing comes back.
    expects_reply: bool = True


@dataclass(frozen=True, slots=True)
class Decoded:
    """Values read from one reply; quantities are names from campusmon.quantities."""

    values: dict[str, float] = field(default_factory=dict)
    # Further frames to send before the poll is complete (DL/T 645 follow-up frames).
    follow_up: tuple[Request, ...] = ()


class MeterDriver(Protocol):
    meter_id: str

    def poll(self) -> list[Request]:
        """The requests of one complete read of this meter."""
        ...

    def reply_length(self, buf: bytes) -> int | None:
        """Total bytes of the reply that starts in ``buf`` (leading garbage included), or None while
        too few bytes have arrived to tell. Lets the engine stop reading without fixed sleeps."""
        ...

    def decode(self, request: Request, reply: bytes) -> Decoded:
        """Parse one reply; raises FrameError for anything unusable."""
        ...
