"""One validation-and-store path for every way readings arrive (MQTT collector, HTTP ingest).

``process`` returns only once every record of the batch is durable: stored in InfluxDB or kept
in the dead-letter store. Callers ack after it returns and retry when it raises StoreUnavailable,
which is what makes delivery at-least-once; InfluxDB's overwrite-on-same-point makes it idempotent.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from campusmon.config import CampusConfig
from campusmon.db import GatewayStatus, utcnow
from campusmon.deadletter import DeadLetters, Limits, payload_text
from campusmon.influx import InfluxStore
from campusmon.metrics import (
    BATCH_SECONDS,
    HOOK_ERRORS,
    IGNORED,
    MESSAGES,
    READINGS_RECEIVED,
    READINGS_REJECTED,
    READINGS_STORED,
)
from campusmon.quantities import QUANTITIES
from campusmon.reading import Reading
from campusmon.wire import (
    DEFAULT_ALIASES,
    DEFAULT_RANGES,
    STORE_REJECTED,
    MeterRule,
    Rejection,
    Rules,
    full_id,
    ignored_topic,
    parse_payload,
)

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
    meters = {
        m.id: MeterRule(m.kind.value, m.max_rate, m.rated_current_a, m.rollover, m.gateway)
        for m in cfg.meters
    }
    aliases = {k: dict(v) for k, v in DEFAULT_ALIASES.items()}
    for name, by_unit in cfg.ingest.aliases.items():
        aliases.setdefault(name, {}).update(by_unit)
    return Rules(
        strict=cfg.registry.strict,
        max_future_s=cfg.ingest.max_future_s,
        min_ts=cfg.ingest.min_ts,
        max_payload_bytes=cfg.ingest.max_payload_bytes,
        meters=meters,
        gateways=frozenset(g.id for g in cfg.gateways) if cfg.registry.strict else None,
        aliases=aliases,
        ranges={**DEFAULT_RANGES, **cfg.ingest.ranges},
        max_records=cfg.ingest.max_records,
    )


class RefusalLog:
    """Refusals at WARNING, at most one line per (reason, source) per interval, with the count since."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def note(self, reason: str, source: str, detail: str, n: int = 1) -> None:
        now = time.monotonic()
        key = (reason, source[:200])
        with self._lock:
            last, suppressed = self._last.get(key, (-math.inf, 0))
            if now - last < self.interval_s:
                self._last[key] = (last, suppressed + n)
                return
            if len(self._last) > 10_000:  # many distinct hostile topics must not grow memory
                self._last.clear()
            self._last[key] = (now, 0)
        more = f" (+{suppressed} more since the last line)" if suppressed else ""
        log.warning("refused %d record(s) from %s: %s: %s%s", n, key[1], reason, detail[:300], more)


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
        ing = cfg.ingest
        dead.limits = Limits(
            ing.deadletter_max_bytes, ing.deadletter_max_age_days, ing.deadletter_records_per_message
        )
        self.via = via
        self.rules = rules_from(cfg)
        self.hooks = list(hooks)
        self.refusals = RefusalLog(ing.refusal_log_interval_s)

    def process(self, messages: Sequence[Message], started: float | None = None) -> BatchResult:
        readings: list[Reading] = []
        origin: list[int] = []
        result = BatchResult()
        now = time.time()
        statuses: dict[str, bytes] = {}
        for i, msg in enumerate(messages):
            if ignored_topic(msg.topic):
                IGNORED.labels(self.via).inc()
                if msg.topic is not None and msg.topic.endswith("/status"):
                    statuses[msg.topic.split("/")[3]] = msg.payload
                continue
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
        self._mark_for_rollups(readings, outcome.rejected)
        self._dead_letter(messages, result.rejected)
        if statuses:
            self._gateway_status(statuses)
        result.stored = outcome.stored
        self._count(len(messages), n_records, result, started)
        if readings and self.hooks:
            refused = {id(r) for r, _ in outcome.rejected}
            stored = [r for r in readings if id(r) not in refused] if refused else readings
            for hook in self.hooks:
                try:
                    hook(stored)
                except Exception:  # a rule bug must never block or lose ingest; it is logged and counted
                    HOOK_ERRORS.labels(self.via).inc()
                    log.exception("reading hook %r failed", hook)
        return result

    def _mark_for_rollups(self, readings: list[Reading], refused: list[tuple[Reading, str]]) -> None:
        """Tell the hourly rollups (campusmon/rollups.py) which meters got registers, from when.

        Written after the readings are stored and before the batch is acked: a failure here means no
        ack and a redelivery, so no stored register can be missed by the rollups.
        """
        skip = {id(r) for r, _ in refused}
        marks: dict[str, int] = {}
        for r in readings:
            q = QUANTITIES.get(r.quantity)
            if q is None or not q.cumulative or id(r) in skip:
                continue
            t = marks.get(r.meter)
            if t is None or r.ts < t:
                marks[r.meter] = int(r.ts)
        if marks:
            from campusmon.rollups import mark_dirty

            mark_dirty(self.dead.sessions, marks)

    def _dead_letter(self, messages: Sequence[Message], rejected: list[tuple[int, Rejection]]) -> None:
        by_msg: dict[int, list[Rejection]] = {}
        for i, rej in rejected:
            by_msg.setdefault(i, []).append(rej)
        items = []
        for i, rejs in by_msg.items():
            src = _source(messages[i])
            items.append((src, messages[i].payload, rejs))
            per: dict[str, list[Rejection]] = {}
            for r in rejs:
                per.setdefault(r.reason, []).append(r)
            for reason, rs in per.items():
                self.refusals.note(reason, src, rs[0].detail, len(rs))
        self.dead.add_messages(items)

    def _gateway_status(self, statuses: dict[str, bytes]) -> None:
        """Keep each gateway's last word, so a gateway-offline alert can say what it said."""
        with self.dead.sessions.begin() as s:
            for gw, payload in statuses.items():
                if not full_id(gw):
                    continue
                text = payload_text(payload)[:4000]
                state = text.strip()[:40]
                try:
                    doc = json.loads(text)
                    if isinstance(doc, dict) and isinstance(doc.get("state"), str):
                        state = doc["state"][:40]
                except ValueError:
                    pass
                s.merge(GatewayStatus(gateway=gw, received_at=utcnow(), state=state, payload=text))

    def refuse(self, messages: Sequence[Message], reason: str, detail: str) -> None:
        """Dead-letter whole messages that could not be handled, so they can be acked and not lost."""
        self.dead.add_messages([(_source(m), m.payload, [Rejection(reason, detail)]) for m in messages])
        for m in messages:
            self.refusals.note(reason, _source(m), detail)
        MESSAGES.labels(self.via).inc(len(messages))
        READINGS_REJECTED.labels(self.via, reason).inc(len(messages))

    def _count(self, n_msgs: int, n_records: int, result: BatchResult, started: float | None) -> None:
        MESSAGES.labels(self.via).inc(n_msgs)
        READINGS_RECEIVED.labels(self.via).inc(n_records)
        READINGS_STORED.labels(self.via).inc(result.stored)
        for _, rej in result.rejected:
            READINGS_REJECTED.labels(self.via, rej.reason).inc()
        if started is not None:
            BATCH_SECONDS.labels(self.via).observe(time.monotonic() - started)


def _source(m: Message) -> str:
    return m.source or m.topic or "http"
