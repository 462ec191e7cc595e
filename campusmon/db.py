"""The relational store (SQLite by default, PostgreSQL by URL) shared by dead letters, targets and alerts.

Every table hangs off one ``Base`` so ``create_all`` makes the whole schema in one place.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import JSON, DateTime, Engine, Index, Integer, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeadLetter(Base):
    """A rejected record with its whole raw message, so nothing refused is ever lost."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    source: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(40), index=True)
    detail: Mapped[str] = mapped_column(Text)
    record: Mapped[object | None] = mapped_column(JSON, nullable=True)
    payload: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_dead_letters_reason_id", "reason", "id"),)


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

    for mod in ("api.accounting.models", "api.alerts.models"):
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
