"""Counting what the broker delivers to a collector, so "none doubled" checks can fail.

InfluxDB overwrites a re-delivered reading with itself, so the stored data cannot show a double;
the collector's tap sees every delivery, duplicates included.
"""

from __future__ import annotations

import threading
from collections import Counter

import paho.mqtt.client as mqtt


class Deliveries:
    """A collector tap: how often each payload was delivered, and how many came flagged DUP."""

    def __init__(self) -> None:
        self.counts: Counter[bytes] = Counter()
        self.dup = 0
        self.dup_payloads: set[bytes] = set()
        self.lock = threading.Lock()

    def __call__(self, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.counts[m.payload] += 1
            self.dup += bool(m.dup)
            if m.dup:
                self.dup_payloads.add(m.payload)

    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def doubled(self) -> dict[bytes, int]:
        with self.lock:
            return {p: n for p, n in self.counts.items() if n > 1}
