"""Table definitions (SQLAlchemy Core). Alembic migrations under ``service/migrations`` create them.

At rest the database holds only encrypted aggregate batches, token hashes, budget spend,
releases (already differentially private) and the audit chain: never raw values or keys.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset", String(100), nullable=False, index=True),
    Column("form", String(10), nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("contacts", BigInteger, nullable=False),
    Column("cells", Integer, nullable=False),
    Column("truncated", BigInteger, nullable=False),
    Column("clamped", BigInteger, nullable=False),
    # The key-encryption key that wraps this batch's data key; rotation compares-and-sets it.
    Column("kek_id", String(40), nullable=False, index=True),
    Column("blob", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # HMAC of the uploaded bytes under a keyring-derived key (never a plain hash, which a
    # small CSV would give away to guessing), and the uploader's Idempotency-Key: how a
    # re-sent upload is recognised. Batches stored before both existed hold NULL.
    Column("digest", String(64), nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Index("ix_batches_dataset_digest", "dataset", "digest"),
    Index("uq_batches_idempotency", "dataset", "idempotency_key", unique=True),
    # The dataset's bounds when the batch was stored (JSON; public policy values, no data):
    # a later policy may not shrink them below what stored data was truncated to.
    Column("bounds", Text, nullable=True),
)

# Per-dataset sealed documents (merged cells, person contributions, the pseudonym key),
# each replaced in the transaction that stores a batch; ``version`` grows with every change
# of content, so a process can cache what it decrypted.
dataset_documents = Table(
    "dataset_documents",
    metadata,
    Column("dataset", String(100), primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("kek_id", String(40), nullable=False, index=True),
    Column("blob", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# The bounds of each dataset's policy in force (``recorded_bounds``), replaced by a start or
# reload in the transaction that checks them against stored batches. An upload compares the
# bounds it was truncated under with this row, under the audit head, so a worker still
# holding an older policy set cannot store data wider than the set in force.
dataset_bounds = Table(
    "dataset_bounds",
    metadata,
    Column("dataset", String(100), primary_key=True),
    Column("bounds", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("role", String(10), nullable=False),
    Column("subject", String(100), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Spend per (dataset, partner) in integer nano-units of epsilon or rho; partner "*" is the
# dataset's global account. Grants themselves live in policy files, not here.
budget_accounts = Table(
    "budget_accounts",
    metadata,
    Column("dataset", String(100), primary_key=True),
    Column("partner", String(100), primary_key=True),
    Column("spent_nano", BigInteger, nullable=False),
)

charges = Table(
    "charges",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("dataset", String(100), nullable=False),
    Column("partner", String(100), nullable=False),
    Column("release_id", String(40), nullable=False, unique=True),
    Column("definition", String(10), nullable=False),
    Column("amount_nano", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_charges_dataset_partner", "dataset", "partner"),
)

releases = Table(
    "releases",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset", String(100), nullable=False),
    Column("partner", String(100), nullable=False),
    Column("query_key", String(64), nullable=False),
    Column("idempotency_key", String(200), nullable=True),
    Column("request_hash", String(64), nullable=False),
    # Written once, finished and signed, in the transaction that charges it.
    Column("document", Text, nullable=False),
    Column("measurement", Text, nullable=False),
    Column("policy_version", String(80), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("dataset", "partner", "query_key", name="uq_releases_query"),
    UniqueConstraint("partner", "idempotency_key", name="uq_releases_idempotency"),
    Index("ix_releases_dataset_query", "dataset", "query_key"),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(120), nullable=False),
    Column("action", String(40), nullable=False),
    Column("dataset", String(100), nullable=True),
    Column("details", Text, nullable=False),
    Column("prev_mac", String(64), nullable=False),
    Column("mac", String(64), nullable=False),
)

# One row (id 1): the chain head. Appending locks it, so the chain can never fork.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("mac", String(64), nullable=False),
)

# Dashboard sign-in sessions. The browser's cookie carries a random session id; only its
# SHA-256 is stored, so a copy of the database cannot be replayed as a session. Each request
# re-checks the token the session was opened with, so revoking the token ends its sessions.
sessions = Table(
    "sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column(
        "token_id",
        String(40),
        ForeignKey("tokens.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("role", String(10), nullable=False),
    Column("subject", String(100), nullable=True),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False, index=True),
)

# Synopses: a post-processed table of noisy marginals per build, sealed like a batch (its id
# is the envelope's associated data) and moved by key rotation with the batches. A row only
# exists for a finished build: a build killed after its charge leaves the charge alone.
synopses = Table(
    "synopses",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("dataset", String(100), nullable=False, index=True),
    Column("definition", String(10), nullable=False),
    Column("marginals", Text, nullable=False),
    Column("cost_nano", BigInteger, nullable=False),
    Column("batches", Text, nullable=False),
    Column("build_ms", Integer, nullable=False),
    Column("policy_version", String(80), nullable=False),
    Column("kek_id", String(40), nullable=False, index=True),
    Column("blob", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
