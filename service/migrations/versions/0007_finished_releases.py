"""Releases are stored finished, in the transaction that charges them: no pending state.

A release row used to be written pending with its charge and completed in a second
transaction; a worker killed in between left a pending row whose charge stays spent and
whose output never left the service. Such rows are removed (their charges and ledger lines
stay), and the status column goes: every stored release is a finished, signed one, so
its document and measurement are never empty.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM releases WHERE status <> 'done'"))
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("status")
        batch.alter_column("document", existing_type=sa.Text, nullable=False)
        batch.alter_column("measurement", existing_type=sa.Text, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.alter_column("document", existing_type=sa.Text, nullable=True)
        batch.alter_column("measurement", existing_type=sa.Text, nullable=True)
        batch.add_column(sa.Column("status", sa.String(10), nullable=False, server_default="done"))
