"""targets never reuse a deleted target's id (SQLite AUTOINCREMENT)

Revision ID: 0003
Revises: '0002'
Create Date: 2026-12-07 04:20:00.000000

Target history is kept by target id, so an id must never be handed out twice. PostgreSQL's sequences
never reuse one, so this is a no-op there. On SQLite the table is rebuilt with AUTOINCREMENT, and its
counter starts past every id the audit trail has seen, so a target deleted before this revision cannot
lend its id either.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("targets", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass
    # The counter starts past every audited id (a target deleted before this revision included); the
    # table copy above may have left no counter row at all when no target exists.
    op.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'targets', 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'targets')"
    )
    op.execute(
        "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(target_id), 0) FROM target_audit)) "
        "WHERE name = 'targets'"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("targets", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
