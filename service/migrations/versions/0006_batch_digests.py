"""Batches remember how they were uploaded: a keyed digest of the bytes and the
Idempotency-Key, so that a re-sent upload is answered, not stored twice.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("digest", sa.String(64), nullable=True))
    op.add_column("batches", sa.Column("idempotency_key", sa.String(200), nullable=True))
    op.create_index("ix_batches_dataset_digest", "batches", ["dataset", "digest"])
    # NULL keys never collide (SQLite and PostgreSQL alike), so uploads without a key
    # are unconstrained.
    op.create_index(
        "uq_batches_idempotency", "batches", ["dataset", "idempotency_key"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_batches_idempotency", table_name="batches")
    op.drop_index("ix_batches_dataset_digest", table_name="batches")
    # batch_alter_table: SQLite drops columns by copying the table.
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("idempotency_key")
        batch.drop_column("digest")
