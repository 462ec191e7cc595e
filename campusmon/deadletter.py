"""The dead-letter store: every refused record, with its raw message, kept for inspection and replay."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from campusmon.db import DeadLetter


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
    except (TypeError, ValueError):
        return repr(record)


class DeadLetters:
    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions

    def add(self, items: Sequence[tuple[str, str, str, Any, bytes | str]]) -> None:
        """Store (source, reason, detail, record, payload) rows in one transaction."""
        if not items:
            return
        with self.sessions.begin() as s:
            s.add_all(
                DeadLetter(
                    source=src[:200],
                    reason=reason,
                    detail=detail[:2000],
                    record=_jsonable(rec),
                    payload=payload_text(payload),
                )
                for src, reason, detail, rec, payload in items
            )

    def counts(self) -> dict[str, int]:
        with self.sessions() as s:
            return dict(s.execute(select(DeadLetter.reason, func.count()).group_by(DeadLetter.reason)).all())

    def page(self, reason: str | None = None, after: int | None = None, limit: int = 100) -> list[DeadLetter]:
        q = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
        if reason:
            q = q.where(DeadLetter.reason == reason)
        if after is not None:
            q = q.where(DeadLetter.id < after)
        with self.sessions() as s:
            return list(s.scalars(q))
