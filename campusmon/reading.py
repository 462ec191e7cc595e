"""The one value object that flows from codecs and payloads to InfluxDB."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one quantity of one meter at the moment it was read.

    ``ts`` is whole Unix seconds (UTC), stamped where the value was read and never replaced:
    (meter, quantity, ts) is the identity that makes re-delivery overwrite instead of double.
    """

    meter: str
    quantity: str
    value: float
    ts: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.meter, self.quantity, self.ts)
