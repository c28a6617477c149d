"""Initial schema: batches, tokens, budget accounts, charges, releases, audit chain.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("dataset", sa.String(100), nullable=False, index=True),
        sa.Column("form", sa.String(10), nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("contacts", sa.BigInteger, nullable=False),
        sa.Column("cells", sa.Integer, nullable=False),
        sa.Column("truncated", sa.BigInteger, nullable=False),
        sa.Column("clamped", sa.BigInteger, nullable=False),
        sa.Column("kek_id", sa.String(40), nullable=False, index=True),
        sa.Column("blob", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("role", sa.String(10), nullable=False),
        sa.Column("subject", sa.String(100), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("last_used_at", TZ, nullable=True),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("revoked_at", TZ, nullable=True),
    )
    op.create_table(
        "budget_accounts",
        sa.Column("dataset", sa.String(100), primary_key=True),
        sa.Column("partner", sa.String(100), primary_key=True),
        sa.Column("spent_nano", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "charges",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("partner", sa.String(100), nullable=False),
        sa.Column("release_id", sa.String(40), nullable=False, unique=True),
        sa.Column("definition", sa.String(10), nullable=False),
        sa.Column("amount_nano", sa.BigInteger, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_index("ix_charges_dataset_partner", "charges", ["dataset", "partner"])
    op.create_table(
        "releases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("partner", sa.String(100), nullable=False),
        sa.Column("query_key", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("document", sa.Text, nullable=True),
        sa.Column("measurement", sa.Text, nullable=True),
        sa.Column("policy_version", sa.String(80), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.UniqueConstraint("dataset", "partner", "query_key", name="uq_releases_query"),
        sa.UniqueConstraint("partner", "idempotency_key", name="uq_releases_idempotency"),
    )
    op.create_index("ix_releases_dataset_query", "releases", ["dataset", "query_key"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("actor", sa.String(120), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("dataset", sa.String(100), nullable=True),
        sa.Column("details", sa.Text, nullable=False),
        sa.Column("prev_mac", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, mac) VALUES (1, 0, '" + "0" * 64 + "')"))


def downgrade() -> None:
    for table in ("audit_head", "audit_log", "releases", "charges", "budget_accounts", "tokens"):
        op.drop_table(table)
    op.drop_table("batches")
