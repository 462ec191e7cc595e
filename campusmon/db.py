"""The relational store (SQLite by default, PostgreSQL by URL) shared by dead letters, targets and alerts.

Every table hangs off one ``Base`` so ``create_all`` makes the whole schema in one place.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
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


class WorkerLease(Base):
    """One unit of scheduled work (or a worker's membership), held by one process until it expires.

    Claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and renewed by its holder; times are the
    database's clock, so workers on hosts with skewed clocks agree (campusmon/coordination.py).
    """

    __tablename__ = "worker_leases"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    holder: Mapped[str] = mapped_column(String(120), default="")
    epoch: Mapped[int] = mapped_column(Integer, default=0)  # grows at every change of holder
    expires_at: Mapped[float] = mapped_column(Float, default=0.0)
    acquired_at: Mapped[float] = mapped_column(Float, default=0.0)
    renewed_at: Mapped[float] = mapped_column(Float, default=0.0)


class FuelEntry(Base):
    """A delivery or a stock-taking of a stock fuel (coal, diesel, petrol, LPG), entered by hand.

    ``quantity``/``unit`` are as written on the receipt; ``quantity_kg`` is what every figure uses
    (docs/assessment.md#fuel). A receipt is entered once per supplier.
    """

    __tablename__ = "fuel_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    entry: Mapped[str] = mapped_column(String(20), default="delivery")  # delivery | stock
    fuel: Mapped[str] = mapped_column(String(20), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    quantity: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(10))
    density_kg_per_l: Mapped[float | None] = mapped_column(Float, nullable=True)
    quantity_kg: Mapped[float] = mapped_column(Float)
    building: Mapped[str | None] = mapped_column(String(200), nullable=True)
    org_unit: Mapped[str | None] = mapped_column(String(200), nullable=True)
    supplier: Mapped[str] = mapped_column(String(200), default="")
    receipt: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    entered_by: Mapped[str] = mapped_column(String(200))
    entered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("supplier", "receipt", name="uq_fuel_entries_supplier_receipt"),)


class AssessmentOverride(Base):
    """An assessor's decision to judge a unit whose data is under the completeness line, and why."""

    __tablename__ = "assessment_overrides"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    year: Mapped[int] = mapped_column(Integer)
    org_unit: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    decided_by: Mapped[str] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (UniqueConstraint("year", "org_unit", name="uq_assessment_overrides_year_unit"),)


class RollupWatermark(Base):
    """How far the hourly rollups of one meter's cumulative quantity are complete (docs/consumption.md, "Hourly rollups").

    Hours before ``until_ts`` are in ``energy_hourly``; ``resume_ts`` is a reading the next pass
    starts from (a few accepted readings before ``until_ts``, so the policy resumes in the same state);
    ``last_ts`` is the newest reading seen, to tell a late reading (at or before it) from a new one.
    """

    __tablename__ = "rollup_watermarks"
    meter: Mapped[str] = mapped_column(String(200), primary_key=True)
    quantity: Mapped[str] = mapped_column(String(60), primary_key=True)
    until_ts: Mapped[int] = mapped_column(BigInteger)
    resume_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    grid: Mapped[str] = mapped_column(String(64))  # the site time zone whose local hours are rolled up
    checked_at: Mapped[float] = mapped_column(Float, default=0.0)


class RollupDirty(Base):
    """The earliest reading time written for a meter since the last rollup pass (upserted with min).

    ``version`` grows with every mark, so a pass clears only the mark it read.
    """

    __tablename__ = "rollup_dirty"
    meter: Mapped[str] = mapped_column(String(200), primary_key=True)
    dirty_from: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(BigInteger, default=1)


class RollupMonth(Base):
    """One meter's register summed over one closed local month, per local hour of day.

    Kept beside ``energy_hourly`` so a monthly report asks InfluxDB nothing: each rollup pass adds the
    hours it appends (``covered_until`` moves on), a pass that rewrites an hour already summed (a
    late reading, a rebuild) deletes the row, and a report sums such a month from ``energy_hourly``
    once and keeps it (docs/consumption.md, "Hourly rollups"). Complete when ``covered_until`` is
    ``month_end``.
    """

    __tablename__ = "rollup_months"
    meter: Mapped[str] = mapped_column(String(200), primary_key=True)
    quantity: Mapped[str] = mapped_column(String(60), primary_key=True)
    month_start: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    month_end: Mapped[int] = mapped_column(BigInteger)
    covered_until: Mapped[int] = mapped_column(BigInteger)  # hours before this are summed
    value: Mapped[float] = mapped_column(Float)
    readings: Mapped[int] = mapped_column(BigInteger)
    by_hod: Mapped[str] = mapped_column(Text)  # JSON list of the 24 sums, local hours 0..23


class RollupEvent(Base):
    """A consumption-policy event (or estimated interval) inside the rolled-up hours, for reports."""

    __tablename__ = "rollup_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meter: Mapped[str] = mapped_column(String(200))
    quantity: Mapped[str] = mapped_column(String(60))
    ts: Mapped[int] = mapped_column(BigInteger)  # the event's time; an estimated interval's end
    kind: Mapped[str] = mapped_column(String(20))  # consumption.EventKind or "estimated"
    value: Mapped[float] = mapped_column(Float)  # the register value; an estimated interval's amount
    previous: Mapped[float | None] = mapped_column(Float, nullable=True)
    start_ts: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # estimated interval's start
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (Index("ix_rollup_events_meter_quantity_ts", "meter", "quantity", "ts"),)


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


MODEL_MODULES = ("api.accounting.models", "api.alerts.models", "api.auth.models")


def load_models() -> None:
    """Import every capability's models, so ``Base.metadata`` is the whole schema."""
    import importlib

    for mod in MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise


def init_db(url: str) -> tuple[Engine, sessionmaker]:
    """Bring the schema to the newest revision (campusmon/migrate.py) and hand back a session factory."""
    from campusmon.migrate import migrate

    engine = make_engine(url)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
