"""Tables of waste alerts: alerts, their notes, the event log the feeds read, rule state and deliveries.

Times are Unix seconds (UTC) so that ordering, cursors and SQLite/PostgreSQL behave the same.
``open_key`` is set only while an alert is active; its unique index is what guarantees at most
one open alert per (rule, subject) even with several writer processes.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from campusmon.db import Base


class Alert(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(60), index=True)
    subject_kind: Mapped[str] = mapped_column(String(10))
    subject_id: Mapped[str] = mapped_column(String(120))
    variant: Mapped[str] = mapped_column(String(60), default="")
    building: Mapped[str] = mapped_column(String(120), index=True)
    meter: Mapped[str | None] = mapped_column(String(120), nullable=True)
    open_key: Mapped[str | None] = mapped_column(String(400), nullable=True, unique=True)
    severity: Mapped[str] = mapped_column(String(10), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    silenced: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(10), default="live")
    first_seen: Mapped[int] = mapped_column(Integer, index=True)
    last_seen: Mapped[int] = mapped_column(Integer)
    since: Mapped[int | None] = mapped_column(Integer, nullable=True)
    acked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    acked_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    cleared_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cleared_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    assignee: Mapped[str | None] = mapped_column(String(120), nullable=True)
    ok_count: Mapped[int] = mapped_column(Integer, default=0)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str] = mapped_column(String(20), default="")
    waste_per_day: Mapped[float | None] = mapped_column(Float, nullable=True)
    waste_unit: Mapped[str] = mapped_column(String(10), default="")
    cost_per_day: Mapped[float | None] = mapped_column(Float, nullable=True)
    currency: Mapped[str] = mapped_column(String(10), default="")
    title: Mapped[str] = mapped_column(String(200), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[object | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[int] = mapped_column(Integer, default=0, index=True)

    __table_args__ = (Index("ix_alerts_rule_subject", "rule", "subject_kind", "subject_id"),)


class AlertNote(Base):
    __tablename__ = "alert_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[int] = mapped_column(Integer)
    author: Mapped[str] = mapped_column(String(120), default="")
    text: Mapped[str] = mapped_column(Text)


class AlertEvent(Base):
    """The append-only log behind SSE, Atom and notifications; ids only grow (never reused)."""

    __tablename__ = "alert_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(Integer, index=True)
    type: Mapped[str] = mapped_column(String(20))
    at: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(120), default="")
    data: Mapped[object] = mapped_column(JSON)

    __table_args__ = ({"sqlite_autoincrement": True},)


class RuleState(Base):
    """What a rule remembers about one subject between passes (baselines, a step in progress...)."""

    __tablename__ = "alert_rule_state"
    rule: Mapped[str] = mapped_column(String(60), primary_key=True)
    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    state: Mapped[object] = mapped_column(JSON)
    latched: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[int] = mapped_column(Integer, default=0)


class Delivery(Base):
    """One notification of one event to one channel; failed ones stay, with their last error."""

    __tablename__ = "alert_deliveries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(Integer, index=True)
    alert_id: Mapped[int] = mapped_column(Integer, index=True)
    channel: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(10), index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    created_at: Mapped[int] = mapped_column(Integer)
    delivered_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AlertSilence(Base):
    """Silences and maintenance windows added through the API (config ones live in campus.yaml)."""

    __tablename__ = "alert_silences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(12))
    rules: Mapped[object] = mapped_column(JSON)
    buildings: Mapped[object] = mapped_column(JSON)
    subjects: Mapped[object] = mapped_column(JSON)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(120), default="")
    created_at: Mapped[int] = mapped_column(Integer)
