"""The bounds in force per dataset, which uploads compare theirs with before storing.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Empty at first: the next start (or the first upload of a dataset) records the bounds
    # in force.
    op.create_table(
        "dataset_bounds",
        sa.Column("dataset", sa.String(100), primary_key=True),
        sa.Column("bounds", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dataset_bounds")
