"""One validation-and-store path for every way readings arrive (MQTT collector, HTTP ingest).

``process`` returns only once every record of the batch is durable: stored in InfluxDB or kept
in the dead-letter store. Callers ack after it returns and retry when it raises StoreUnavailable,
which is what makes delivery at-least-once; InfluxDB's overwrite-on-same-point makes it idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from campusmon.config import CampusConfig
from campusmon.deadletter import DeadLetters
from campusmon.influx import InfluxStore
from campusmon.metrics import BATCH_SECONDS, MESSAGES, READINGS_RECEIVED, READINGS_REJECTED, READINGS_STORED
from campusmon.reading import Reading
from campusmon.wire import STORE_REJECTED, Rejection, Rules, parse_payload

log = logging.getLogger(__name__)

ReadingHook = Callable[[list[Reading]], object]


@dataclass(frozen=True, slots=True)
class Message:
    topic: str | None  # None for HTTP, which carries no topic
    payload: bytes
    source: str = ""


@dataclass(slots=True)
class BatchResult:
    stored: int = 0
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)  # (message index, why)


def rules_from(cfg: CampusConfig) -> Rules:
    kinds = {m.id: m.kind.value for m in cfg.meters}
    return Rules(
        meter_kind=kinds.get,
        strict=cfg.registry.strict,
        max_future_s=cfg.ingest.max_future_s,
        min_ts=cfg.ingest.min_ts,
        max_payload_bytes=cfg.ingest.max_payload_bytes,
    )


class Ingestor:
    def __init__(
        self,
        cfg: CampusConfig,
        store: InfluxStore,
        dead: DeadLetters,
        via: str,
        hooks: Sequence[ReadingHook] = (),
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.dead = dead
        self.via = via
        self.rules = rules_from(cfg)
        self.hooks = list(hooks)

    def process(self, messages: Sequence[Message], started: float | None = None) -> BatchResult:
        readings: list[Reading] = []
        origin: list[int] = []
        result = BatchResult()
        now = time.time()
        for i, msg in enumerate(messages):
            parsed = parse_payload(msg.payload, msg.topic, self.rules, now)
            readings.extend(parsed.readings)
            origin.extend([i] * len(parsed.readings))
            result.rejected.extend((i, rej) for rej in parsed.rejections)
        n_records = len(readings) + len(result.rejected)
        outcome = self.store.write(readings)  # raises StoreUnavailable: nothing acked, caller retries
        if outcome.rejected:
            index = {id(r): origin[k] for k, r in enumerate(readings)}
            for r, why in outcome.rejected:
                rec = {"meter": r.meter, "quantity": r.quantity, "value": r.value, "ts": r.ts}
                result.rejected.append((index[id(r)], Rejection(STORE_REJECTED, why, rec)))
        self.dead.add(
            [
                (
                    messages[i].source or messages[i].topic or "http",
                    rej.reason,
                    rej.detail,
                    rej.record,
                    messages[i].payload,
                )
                for i, rej in result.rejected
            ]
        )
        result.stored = outcome.stored
        self._count(len(messages), n_records, result, started)
        if readings and self.hooks:
            refused = {id(r) for r, _ in outcome.rejected}
            stored = [r for r in readings if id(r) not in refused] if refused else readings
            for hook in self.hooks:
                try:
                    hook(stored)
                except Exception:  # a rule bug must never block or lose ingest
                    log.exception("reading hook %r failed", hook)
        return result

    def _count(self, n_msgs: int, n_records: int, result: BatchResult, started: float | None) -> None:
        MESSAGES.labels(self.via).inc(n_msgs)
        READINGS_RECEIVED.labels(self.via).inc(n_records)
        READINGS_STORED.labels(self.via).inc(result.stored)
        for _, rej in result.rejected:
            READINGS_REJECTED.labels(self.via, rej.reason).inc()
        if started is not None:
            BATCH_SECONDS.labels(self.via).observe(time.monotonic() - started)
