"""Sealed synopses: each finished build's integer table, encrypted at rest like a batch.

A synopsis is sealed under a fresh data key wrapped by the primary KEK, with the dataset id
and the synopsis id as associated data (the envelope of ``service.crypto.envelope``), so key
rotation moves synopses exactly as it moves batches. Rows are only ever inserted: a rebuild
adds a newer synopsis and the older ones stay readable, so every release that cites one
can still be traced to it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection, select

from service.crypto.envelope import open_sealed, seal
from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.schema import batches, synopses
from service.dp.accounting import from_nano, to_nano
from service.dp.synopsis import Estimate, decode_estimate, encode_estimate


@dataclass(frozen=True)
class StoredSynopsis:
    """What is known of a synopsis without opening it."""

    synopsis_id: str
    dataset: str
    definition: str
    marginals: tuple[tuple[str, ...], ...]
    cost: Fraction
    batches: tuple[str, ...]
    build_seconds: float
    policy_version: str
    built_at: datetime


def _stored(row: Any) -> StoredSynopsis:
    created = row.created_at
    return StoredSynopsis(
        synopsis_id=row.id,
        dataset=row.dataset,
        definition=row.definition,
        marginals=tuple(tuple(m) for m in json.loads(row.marginals)),
        cost=from_nano(int(row.cost_nano)),
        batches=tuple(json.loads(row.batches)),
        build_seconds=int(row.build_ms) / 1000,
        policy_version=row.policy_version,
        built_at=created.replace(tzinfo=UTC) if created.tzinfo is None else created,
    )


_LISTED = (
    synopses.c.id,
    synopses.c.dataset,
    synopses.c.definition,
    synopses.c.marginals,
    synopses.c.cost_nano,
    synopses.c.batches,
    synopses.c.build_ms,
    synopses.c.policy_version,
    synopses.c.created_at,
)


class SynopsisStore:
    """Seals, stores and opens synopses; opened tables are kept in memory by id."""

    def __init__(self, database: Database, keyring: Keyring) -> None:
        self.database = database
        self.keyring = keyring
        # A synopsis never changes after it is stored (rotation rewraps the same table).
        self._opened: dict[str, Estimate] = {}
        self._lock = threading.Lock()

    def insert(
        self,
        conn: Connection,
        *,
        synopsis_id: str,
        dataset: str,
        estimate: Estimate,
        cost: Fraction,
        included: Sequence[str],
        build_seconds: float,
        policy_version: str,
    ) -> StoredSynopsis:
        """Seal and insert one synopsis inside ``conn``'s transaction."""
        plaintext = encode_estimate(estimate)
        # Checked inside the transaction, as uploads do: no synopsis commits under a KEK
        # that a rotation finishing meanwhile has left behind.
        self.keyring.refresh()
        sealed = seal(self.keyring, plaintext, dataset=dataset, batch_id=synopsis_id)
        built_at = datetime.now(UTC)
        conn.execute(
            synopses.insert().values(
                id=synopsis_id,
                dataset=dataset,
                definition=estimate.definition,
                marginals=json.dumps([list(m) for m in estimate.marginals]),
                cost_nano=to_nano(cost),
                batches=json.dumps(list(included)),
                build_ms=round(build_seconds * 1000),
                policy_version=policy_version,
                kek_id=sealed.kek_id,
                blob=sealed.blob,
                created_at=built_at,
            )
        )
        with self._lock:
            self._opened[synopsis_id] = estimate
        return StoredSynopsis(
            synopsis_id=synopsis_id,
            dataset=dataset,
            definition=estimate.definition,
            marginals=estimate.marginals,
            cost=cost,
            batches=tuple(included),
            build_seconds=round(build_seconds * 1000) / 1000,
            policy_version=policy_version,
            built_at=built_at,
        )

    def newest(self, dataset: str) -> StoredSynopsis | None:
        """The latest synopsis of ``dataset``: the one that answers queries."""
        found = self.history(dataset, limit=1)
        return found[0] if found else None

    def history(self, dataset: str | None = None, *, limit: int = 100) -> list[StoredSynopsis]:
        """Synopses, newest first, of one dataset or of all."""
        query = select(*_LISTED).order_by(synopses.c.created_at.desc(), synopses.c.id.desc())
        if dataset is not None:
            query = query.where(synopses.c.dataset == dataset)
        with self.database.read() as conn:
            return [_stored(row) for row in conn.execute(query.limit(limit))]

    def get(self, synopsis_id: str) -> StoredSynopsis | None:
        with self.database.read() as conn:
            row = conn.execute(select(*_LISTED).where(synopses.c.id == synopsis_id)).first()
        return _stored(row) if row is not None else None

    def stale(self, stored: StoredSynopsis) -> bool:
        """Whether batches of the dataset arrived that the synopsis does not include."""
        with self.database.read() as conn:
            ids = conn.execute(select(batches.c.id).where(batches.c.dataset == stored.dataset))
            current = {row.id for row in ids}
        return bool(current - set(stored.batches))

    def batch_ids(self, dataset: str) -> list[str]:
        """The ids of every stored batch of ``dataset``, in id order."""
        with self.database.read() as conn:
            rows = conn.execute(
                select(batches.c.id).where(batches.c.dataset == dataset).order_by(batches.c.id)
            )
            return [row.id for row in rows]

    def open(self, stored: StoredSynopsis) -> Estimate:
        """The synopsis's table, decrypted and checked (``IntegrityError`` if tampered)."""
        cached = self._opened.get(stored.synopsis_id)
        if cached is not None:
            return cached
        plaintext = self._plaintext(stored)
        try:
            estimate = decode_estimate(plaintext)
        except ValueError as error:
            raise IntegrityError(f"synopsis {stored.synopsis_id}: {error}") from None
        with self._lock:
            self._opened[stored.synopsis_id] = estimate
        return estimate

    def _plaintext(self, stored: StoredSynopsis) -> bytes:
        for attempt in range(2):
            with self.database.read() as conn:
                blob = conn.execute(
                    select(synopses.c.blob).where(synopses.c.id == stored.synopsis_id)
                ).scalar_one()
            try:
                return open_sealed(
                    self.keyring, blob, dataset=stored.dataset, batch_id=stored.synopsis_id
                )
            except UnknownKey:
                # Rewrapped by a rotation in another process under a KEK added since this
                # process loaded the keyring: reload once, read the blob afresh.
                if attempt:
                    raise
                self.keyring.reload()
        raise AssertionError("unreachable")
