"""The release store: every differentially private answer, kept so it is never recomputed.

A release is written once, finished and signed, in the same transaction as its charge.
The unique constraint on (dataset, partner, canonical query) means two identical queries
racing each other cannot both be charged and answered with independent noise, which would
let the partner average the noise away: the second insert fails with ``ReleaseConflict``,
its transaction (and charge) rolls back, and it is answered from the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select
from sqlalchemy.exc import IntegrityError

from service.crypto.signing import canonical_json
from service.database.engine import Database
from service.database.schema import releases
from service.database.timestamps import as_utc
from service.dp.release import ReleaseDocument

# The statements of every query, built once (building one costs more than running it).
_OLDEST = (releases.c.created_at.asc(), releases.c.id.asc())
_SAME_QUERY = (
    releases.c.dataset == bindparam("dataset"),
    releases.c.query_key == bindparam("query_key"),
)
_FIND_ANY = select(releases).where(*_SAME_QUERY).order_by(*_OLDEST)
_FIND_OWN = (
    select(releases)
    .where(*_SAME_QUERY, releases.c.partner == bindparam("partner"))
    .order_by(*_OLDEST)
)
_FIND_IDEMPOTENT = select(releases).where(
    releases.c.partner == bindparam("partner"), releases.c.idempotency_key == bindparam("key")
)
_GET = select(releases).where(releases.c.id == bindparam("release_id"))
_INSERT = releases.insert()


class ReleaseConflict(Exception):
    """An identical query, or the same Idempotency-Key, was released by another request."""


@dataclass(frozen=True)
class StoredRelease:
    release_id: str
    dataset: str
    partner: str
    query_key: str
    request_hash: str
    document: ReleaseDocument
    created_at: datetime


@dataclass(frozen=True)
class Position:
    """Where a page of releases ended, in their stable order: newest first by creation
    time, ties broken by id. A release's place never changes once it is created."""

    created_at: datetime
    release_id: str

    @classmethod
    def of(cls, stored: StoredRelease) -> Position:
        return cls(as_utc(stored.created_at), stored.release_id)


def _stored(row: Any) -> StoredRelease:
    return StoredRelease(
        release_id=row.id,
        dataset=row.dataset,
        partner=row.partner,
        query_key=row.query_key,
        request_hash=row.request_hash,
        document=json.loads(row.document),
        created_at=row.created_at,
    )


class ReleaseStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def find(
        self,
        *,
        dataset: str,
        query_key: str,
        partner: str | None,
        within: Connection | None = None,
    ) -> StoredRelease | None:
        """The release of this exact query by ``partner`` (the oldest of any partner when
        ``None``)."""
        parameters = {"dataset": dataset, "query_key": query_key, "partner": partner}
        with self.database.read(within) as conn:
            row = conn.execute(_FIND_ANY if partner is None else _FIND_OWN, parameters).first()
        return _stored(row) if row else None

    def find_idempotent(self, partner: str, key: str) -> StoredRelease | None:
        with self.database.read() as conn:
            row = conn.execute(_FIND_IDEMPOTENT, {"partner": partner, "key": key}).first()
        return _stored(row) if row else None

    def get(self, release_id: str) -> StoredRelease | None:
        with self.database.read() as conn:
            row = conn.execute(_GET, {"release_id": release_id}).first()
        return _stored(row) if row else None

    def list(
        self,
        *,
        partners: list[str] | None,
        datasets: list[str] | None = None,
        limit: int = 100,
        after: Position | None = None,
    ) -> list[StoredRelease]:
        """Releases, newest first (then by id); ``partners=None`` means all partners.

        ``after`` continues a listing where an earlier page ended; no release is skipped or
        repeated, however many share a creation time.
        """
        query = select(releases)
        if partners is not None:
            query = query.where(releases.c.partner.in_(partners))
        if datasets is not None:
            query = query.where(releases.c.dataset.in_(datasets))
        if after is not None:
            created = after.created_at.astimezone(UTC)
            query = query.where(
                or_(
                    releases.c.created_at < created,
                    and_(releases.c.created_at == created, releases.c.id < after.release_id),
                )
            )
        query = query.order_by(releases.c.created_at.desc(), releases.c.id.desc()).limit(limit)
        with self.database.read() as conn:
            return [_stored(row) for row in conn.execute(query)]

    @staticmethod
    def insert(
        conn: Connection,
        *,
        release_id: str,
        dataset: str,
        partner: str,
        query_key: str,
        request_hash: str,
        idempotency_key: str | None,
        policy_version: str,
        document: ReleaseDocument,
        measurement: str,
    ) -> None:
        """Store a finished release in ``conn``'s transaction, or raise ``ReleaseConflict``.

        After a conflict the transaction is unusable (PostgreSQL aborts it): let the
        exception roll it back, then read the release that won.
        """
        try:
            conn.execute(
                _INSERT,
                {
                    "id": release_id,
                    "dataset": dataset,
                    "partner": partner,
                    "query_key": query_key,
                    "idempotency_key": idempotency_key,
                    "request_hash": request_hash,
                    "document": canonical_json(document).decode("utf-8"),
                    "measurement": measurement,
                    "policy_version": policy_version,
                    "created_at": datetime.now(UTC),
                },
            )
        except IntegrityError as conflict:
            raise ReleaseConflict(
                "an identical query or the same Idempotency-Key was already released"
            ) from conflict
