"""Sealed per-dataset documents, and the bounds each batch was stored under.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dataset_documents",
        sa.Column("dataset", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("kek_id", sa.String(40), nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_index("ix_dataset_documents_kek_id", "dataset_documents", ["kek_id"])
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("bounds", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("bounds")
    op.drop_index("ix_dataset_documents_kek_id", table_name="dataset_documents")
    op.drop_table("dataset_documents")
