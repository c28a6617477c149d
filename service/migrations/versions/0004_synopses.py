"""Synopses: sealed post-processed marginal tables, one row per finished build.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
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
        "synopses",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("definition", sa.String(10), nullable=False),
        sa.Column("marginals", sa.Text, nullable=False),
        sa.Column("cost_nano", sa.BigInteger, nullable=False),
        sa.Column("batches", sa.Text, nullable=False),
        sa.Column("build_ms", sa.Integer, nullable=False),
        sa.Column("policy_version", sa.String(80), nullable=False),
        sa.Column("kek_id", sa.String(40), nullable=False),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_synopses_dataset", "synopses", ["dataset"])
    op.create_index("ix_synopses_kek_id", "synopses", ["kek_id"])


def downgrade() -> None:
    op.drop_index("ix_synopses_kek_id", table_name="synopses")
    op.drop_index("ix_synopses_dataset", table_name="synopses")
    op.drop_table("synopses")
