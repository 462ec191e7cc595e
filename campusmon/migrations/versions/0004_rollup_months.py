"""rollup_months: closed months per meter and hour of day, read by the monthly report

Revision ID: 0004
Revises: '0003'
Create Date: 2026-12-07 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rollup_months",
        sa.Column("meter", sa.String(length=200), nullable=False),
        sa.Column("quantity", sa.String(length=60), nullable=False),
        sa.Column("month_start", sa.BigInteger(), nullable=False),
        sa.Column("month_end", sa.BigInteger(), nullable=False),
        sa.Column("covered_until", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("readings", sa.BigInteger(), nullable=False),
        sa.Column("by_hod", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("meter", "quantity", "month_start"),
    )


def downgrade() -> None:
    op.drop_table("rollup_months")
