"""Tables of consumption accounting: energy-saving targets and their audit trail."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import JSON, Date, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from campusmon.db import Base, utcnow


class Target(Base):
    """A quota, intensity, per-capita or reduction target for a building, group or the campus."""

    __tablename__ = "targets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    scope: Mapped[str] = mapped_column(String(20))
    scope_id: Mapped[str] = mapped_column(String(100), default="")
    kind: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(20))
    type: Mapped[str] = mapped_column(String(20))
    period: Mapped[str | None] = mapped_column(String(10), nullable=True)
    value: Mapped[float] = mapped_column(Float)
    baseline_start: Mapped[date | None] = mapped_column(Date, nullable=True)
    baseline_end: Mapped[date | None] = mapped_column(Date, nullable=True)
    valid_from: Mapped[date | None] = mapped_column(Date, nullable=True)
    valid_to: Mapped[date | None] = mapped_column(Date, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    # AUTOINCREMENT: SQLite would otherwise hand a deleted newest target's id to the next one, whose
    # audit history (kept by target id) would then begin with the deleted target's.
    __table_args__ = (
        Index("ix_targets_scope", "scope", "scope_id", "kind", "category"),
        {"sqlite_autoincrement": True},
    )


class TargetAudit(Base):
    """Every change to a target, kept after the target itself is deleted (no foreign key on purpose)."""

    __tablename__ = "target_audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    target_id: Mapped[int] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(10))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200), default="")
    before: Mapped[object | None] = mapped_column(JSON, nullable=True)
    after: Mapped[object | None] = mapped_column(JSON, nullable=True)
