"""The relational store (SQLite by default, PostgreSQL by URL) shared by dead letters, targets and alerts.

Every table hangs off one ``Base`` so ``create_all`` makes the whole schema in one place.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeadLetter(Base):
    """A refused message, kept once with the refusals of its records: one row per message, not per record.

    ``records`` keeps the first few refusals (reason, detail, record); ``refused`` counts them all, and
    ``DeadLetterReason`` counts them per reason, so a 5,000-record pack costs one payload, not 5,000.
    """

    __tablename__ = "dead_letter_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(40), index=True)  # of the first refused record
    detail: Mapped[str] = mapped_column(Text)
    refused: Mapped[int] = mapped_column(Integer, default=1)
    records: Mapped[object | None] = mapped_column(JSON, nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    payload_bytes: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)  # what the row costs, for the store's bound


class DeadLetterReason(Base):
    """Refused records of one message per reason: filters and counts without reading payloads."""

    __tablename__ = "dead_letter_reasons"
    message_id: Mapped[int] = mapped_column(
        ForeignKey("dead_letter_messages.id", ondelete="CASCADE"), primary_key=True
    )
    reason: Mapped[str] = mapped_column(String(40), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_dead_letter_reasons_reason_message", "reason", "message_id"),)


class GatewayStatus(Base):
    """The last status a gateway published (retained status or its last will), for alerts to quote."""

    __tablename__ = "gateway_status"
    gateway: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state: Mapped[str] = mapped_column(String(40))  # online | offline | ... as the gateway said it
    payload: Mapped[str] = mapped_column(Text)


class DeadLetterDrop(Base):
    """Messages pruned from the bounded dead-letter store (oldest first), so the loss is counted."""

    __tablename__ = "dead_letter_drops"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    why: Mapped[str] = mapped_column(String(20))  # size | age
    messages: Mapped[int] = mapped_column(Integer)
    records: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)


def make_engine(url: str) -> Engine:
    """An engine whose SQLite flavour is safe for one writer and many readers across processes."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _rec) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def init_db(url: str) -> tuple[Engine, sessionmaker]:
    """Create every table of every capability that is imported, and hand back a session factory."""
    import importlib

    for mod in ("api.accounting.models", "api.alerts.models", "api.auth.models"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise
    engine = make_engine(url)
    create_schema(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def create_schema(engine: Engine, attempts: int = 5) -> None:
    """``create_all`` that tolerates another process creating the same tables at the same moment.

    The collector and the API start together; both check, both see no table, one CREATE loses.
    Checking again after the other has finished is all it takes.
    """
    import time

    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            return
        except DBAPIError as e:
            if attempt == attempts - 1 or "exist" not in str(e.orig).lower():
                raise
            time.sleep(0.1 * (attempt + 1))
