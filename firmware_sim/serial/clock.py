"""The simulator's notion of time, shared by every meter on a bus.

Meters integrate energy and volume over this clock, so a test can freeze it (values stop changing and
what a meter served equals what it reports now) or run it faster than real time for long scenarios.
"""

from __future__ import annotations

import threading
import time


class SimClock:
    """Unix time in seconds: real time, real time shifted/sped up, or frozen and stepped by hand."""

    def __init__(self, start: float | None = None, *, speed: float = 1.0, frozen: bool = False) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self._lock = threading.Lock()
        self._origin_real = time.time()
        self._origin_sim = self._origin_real if start is None else float(start)
        self._speed = speed
        self._frozen = frozen

    @property
    def frozen(self) -> bool:
        return self._frozen

    def now(self) -> float:
        with self._lock:
            if self._frozen:
                return self._origin_sim
            return self._origin_sim + (time.time() - self._origin_real) * self._speed

    def set(self, t: float) -> None:
        """Jump to ``t`` (the meters integrate over the jump the next time they are read)."""
        with self._lock:
            self._origin_real = time.time()
            self._origin_sim = float(t)

    def advance(self, seconds: float) -> None:
        self.set(self.now() + seconds)

    def freeze(self) -> None:
        now = self.now()
        with self._lock:
            self._origin_sim = now
            self._frozen = True

    def resume(self) -> None:
        with self._lock:
            self._origin_real = time.time()
            self._frozen = False
