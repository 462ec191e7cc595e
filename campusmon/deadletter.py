"""The dead-letter store: every refused message, kept once with its refusals, bounded like the outbox.

One row per message holds the raw payload and the first few refusals; a per-reason count row lets
the API filter and count without reading payloads. The store is bounded by size and age: the oldest
messages go first, and what was pruned is counted in ``dead_letter_drops``, never lost silently.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from campusmon.db import DeadLetter, DeadLetterDrop, DeadLetterReason, utcnow

log = logging.getLogger(__name__)


class Refusal(Protocol):
    reason: str
    detail: str
    record: Any


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 256 * 1024 * 1024
    max_age_days: float = 30.0
    records_per_message: int = 50


def payload_text(payload: bytes | str) -> str:
    """Raw payload as text; bytes that are not UTF-8 are kept as base64 so nothing is mangled."""
    if isinstance(payload, str):
        return payload
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(payload).decode()


def _jsonable(record: Any) -> Any:
    try:
        json.dumps(record, allow_nan=False)
        return record
    except (TypeError, ValueError, RecursionError):
        return repr(record)[:500]


class DeadLetters:
    def __init__(self, sessions: sessionmaker, limits: Limits | None = None) -> None:
        self.sessions = sessions
        self.limits = limits or Limits()
        self._lock = threading.Lock()
        self._last_age_prune = 0.0

    def add_messages(self, items: Sequence[tuple[str, bytes | str, Sequence[Refusal]]]) -> None:
        """Store (source, payload, refusals) per message in one transaction, then keep the bound."""
        rows = [self._row(src, payload, refusals) for src, payload, refusals in items if refusals]
        if not rows:
            return
        with self.sessions.begin() as s:
            for row, per_reason in rows:
                s.add(row)
                s.flush()
                s.add_all(
                    DeadLetterReason(message_id=row.id, reason=r, count=n) for r, n in per_reason.items()
                )
        self._prune()

    def _row(
        self, source: str, payload: bytes | str, refusals: Sequence[Refusal]
    ) -> tuple[DeadLetter, dict[str, int]]:
        per_reason: dict[str, int] = {}
        for r in refusals:
            per_reason[r.reason] = per_reason.get(r.reason, 0) + 1
        kept = [
            {"reason": r.reason, "detail": r.detail[:500], "record": _jsonable(r.record)}
            for r in refusals[: self.limits.records_per_message]
        ]
        text = payload_text(payload)
        records_size = len(json.dumps(kept))
        first = refusals[0]
        row = DeadLetter(
            source=source[:200],
            reason=first.reason,
            detail=first.detail[:2000],
            refused=len(refusals),
            records=kept,
            payload=text,
            payload_bytes=len(payload),
            size_bytes=len(text) + records_size + 200,
        )
        return row, per_reason

    # -- the bound ---------------------------------------------------------------------------

    def _prune(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_age_prune > 60:
                self._last_age_prune = now
                cutoff = utcnow() - timedelta(days=self.limits.max_age_days)
                with self.sessions.begin() as s:
                    last = s.scalar(select(func.max(DeadLetter.id)).where(DeadLetter.received_at < cutoff))
                    if last is not None:
                        self._drop_through(s, last, "age")
            with self.sessions.begin() as s:
                total = s.scalar(select(func.coalesce(func.sum(DeadLetter.size_bytes), 0))) or 0
                excess = total - self.limits.max_bytes
                if excess <= 0:
                    return
                # Drop the oldest rows until 10 % below the bound, so pruning is not run on every add.
                excess += self.limits.max_bytes // 10
                freed, last = 0, None
                for mid, size in s.execute(
                    select(DeadLetter.id, DeadLetter.size_bytes).order_by(DeadLetter.id)
                ):
                    freed += size
                    last = mid
                    if freed >= excess:
                        break
                if last is not None:
                    self._drop_through(s, last, "size")

    @staticmethod
    def _drop_through(s: Session, last_id: int, why: str) -> None:
        n, records, size = s.execute(
            select(
                func.count(),
                func.coalesce(func.sum(DeadLetter.refused), 0),
                func.coalesce(func.sum(DeadLetter.size_bytes), 0),
            ).where(DeadLetter.id <= last_id)
        ).one()
        if not n:
            return
        s.execute(delete(DeadLetterReason).where(DeadLetterReason.message_id <= last_id))
        s.execute(delete(DeadLetter).where(DeadLetter.id <= last_id))
        s.add(DeadLetterDrop(why=why, messages=n, records=records, size_bytes=size))
        log.warning(
            "dead-letter store over its %s bound: dropped the %d oldest messages (%d refused records)",
            why,
            n,
            records,
        )

    # -- reading -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Refused records kept, by reason."""
        with self.sessions() as s:
            q = select(DeadLetterReason.reason, func.sum(DeadLetterReason.count)).group_by(
                DeadLetterReason.reason
            )
            return {r: int(n) for r, n in s.execute(q).all()}

    def dropped(self) -> dict[str, int]:
        """What the bound pruned so far: messages, records and bytes."""
        with self.sessions() as s:
            n, records, size = s.execute(
                select(
                    func.coalesce(func.sum(DeadLetterDrop.messages), 0),
                    func.coalesce(func.sum(DeadLetterDrop.records), 0),
                    func.coalesce(func.sum(DeadLetterDrop.size_bytes), 0),
                )
            ).one()
        return {"messages": int(n), "records": int(records), "bytes": int(size)}

    def size_bytes(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.coalesce(func.sum(DeadLetter.size_bytes), 0))) or 0)

    def page(
        self, reason: str | None = None, before: int | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        """Newest first; with ``reason``, the messages that hold at least one record refused for it."""
        q = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
        if reason:
            q = q.where(
                DeadLetter.id.in_(
                    select(DeadLetterReason.message_id).where(DeadLetterReason.reason == reason)
                )
            )
        if before is not None:
            q = q.where(DeadLetter.id < before)
        with self.sessions() as s:
            return list(s.scalars(q))

    def reasons_of(self, ids: Sequence[int]) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {i: {} for i in ids}
        if not ids:
            return out
        with self.sessions() as s:
            q = select(DeadLetterReason).where(DeadLetterReason.message_id.in_(list(ids)))
            for r in s.scalars(q):
                out[r.message_id][r.reason] = r.count
        return out

    def get(self, message_id: int) -> DeadLetter | None:
        with self.sessions() as s:
            return s.get(DeadLetter, message_id)
