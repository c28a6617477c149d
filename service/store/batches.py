"""Encrypted batches of aggregate cells: the only form in which contact data is kept.

Each batch is sealed under a fresh data key (envelope encryption, see ``service.crypto.envelope``)
with the dataset id and batch id as associated data, and stored together with its audit
entry in one transaction, so a batch is either fully stored and recorded or not at all.

Key rotation (``service.store.rotation``) runs in another process while the service keeps
answering: a batch rewrapped under a KEK this process has not loaded yet is read after
reloading the keyring file, and an upload is sealed under the primary KEK of the keyring file
as it stands when the upload commits.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import polars as pl
from sqlalchemy import func, select

from service.audit.log import AuditLog
from service.crypto.envelope import open_sealed, seal
from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.schema import batches
from service.policy.model import DatasetPolicy
from service.store.cells import CellFormatError, decode_cells, empty_cells, encode_cells
from service.store.ingest import Aggregated
from service.store.uploads import Upload
from service.store.uploads import check as check_upload


@dataclass(frozen=True)
class StoredBatch:
    batch_id: str
    dataset: str
    form: str
    rows: int
    contacts: int
    cells: int
    truncated: int
    clamped: int
    created_at: datetime


class BatchStore:
    """Stores sealed batches and serves a dataset's cells, decrypted, to the query engine."""

    def __init__(self, database: Database, keyring: Keyring, audit: AuditLog) -> None:
        self.database = database
        self.keyring = keyring
        self.audit = audit
        # Decrypted cells by batch id. A batch's content never changes after upload
        # (rotation rewraps or re-encrypts the same cells), so entries never go stale.
        self._cells: dict[str, pl.DataFrame] = {}
        self._lock = threading.Lock()

    def add(
        self,
        dataset: DatasetPolicy,
        aggregated: Aggregated,
        *,
        form: str,
        actor: str,
        upload: Upload | None = None,
    ) -> StoredBatch:
        """Seal and store one batch, with its audit entry, atomically.

        With ``upload``, a re-sent upload is recognised first (``service.store.uploads``):
        `AlreadyStored`, `UploadConflict` or `DuplicateBatch`, and nothing is stored.
        """
        batch_id = "bat_" + secrets.token_hex(10)
        plaintext = encode_cells(aggregated.cells)
        sealed = seal(self.keyring, plaintext, dataset=dataset.id, batch_id=batch_id)
        stored = StoredBatch(
            batch_id=batch_id,
            dataset=dataset.id,
            form=form,
            rows=aggregated.rows,
            contacts=aggregated.contacts,
            cells=aggregated.cells.height,
            truncated=aggregated.truncated,
            clamped=aggregated.clamped,
            created_at=datetime.now(UTC),
        )
        with self.database.write() as conn:
            # The audit entry names counts only: row and contact totals are not released
            # to partners, and the audit log is read by the DPO alone.
            self.audit.append(
                conn,
                actor=actor,
                action="batch.upload",
                dataset=dataset.id,
                details={
                    "batch_id": batch_id,
                    "form": form,
                    "rows": stored.rows,
                    "cells": stored.cells,
                    "truncated": stored.truncated,
                    "clamped": stored.clamped,
                },
            )
            # The append above holds the audit head (a row lock on PostgreSQL, the write
            # lock on SQLite), which a key rotation also takes to finish and a KEK
            # retirement to remove its key. Checking the keyring file only now means
            # that no upload can commit under a KEK retired, or left behind by a finished
            # rotation, before it committed.
            if upload is not None:
                check_upload(conn, upload)
            self.keyring.refresh()
            if sealed.kek_id != self.keyring.primary_kek_id:
                sealed = seal(self.keyring, plaintext, dataset=dataset.id, batch_id=batch_id)
            conn.execute(
                batches.insert().values(
                    id=batch_id,
                    dataset=dataset.id,
                    form=form,
                    rows=stored.rows,
                    contacts=stored.contacts,
                    cells=stored.cells,
                    truncated=stored.truncated,
                    clamped=stored.clamped,
                    kek_id=sealed.kek_id,
                    blob=sealed.blob,
                    created_at=stored.created_at,
                    **(upload.columns() if upload is not None else {}),
                )
            )
        return stored

    def get(self, batch_id: str) -> StoredBatch:
        """The stored batch ``batch_id`` as its upload was answered; `LookupError` if none."""
        names = [f.name for f in fields(StoredBatch) if f.name != "batch_id"]
        with self.database.read() as conn:
            row = conn.execute(
                select(batches.c.id, *(batches.c[name] for name in names)).where(
                    batches.c.id == batch_id
                )
            ).first()
        if row is None:
            raise LookupError(f"no batch {batch_id}")
        values = row._mapping
        created_at = values["created_at"]
        if created_at.tzinfo is None:  # SQLite keeps no zone; every timestamp is UTC
            created_at = created_at.replace(tzinfo=UTC)
        return StoredBatch(
            batch_id=str(row.id),
            **{name: values[name] for name in names if name != "created_at"},
            created_at=created_at,
        )

    def cells(self, dataset: DatasetPolicy) -> pl.DataFrame:
        """All cells of ``dataset`` (one row per batch and cell), decrypted and checked."""
        with self.database.read() as conn:
            ids = [
                row.id
                for row in conn.execute(
                    select(batches.c.id)
                    .where(batches.c.dataset == dataset.id)
                    .order_by(batches.c.id)
                )
            ]
        missing = [batch_id for batch_id in ids if batch_id not in self._cells]
        if missing:
            with self.database.read() as conn:
                rows = conn.execute(
                    select(batches.c.id, batches.c.blob).where(batches.c.id.in_(missing))
                ).all()
            for row in rows:
                plain = self._open(dataset.id, row.id, row.blob)
                try:
                    frame = decode_cells(plain, dataset)
                except CellFormatError as error:
                    # Authentic but unreadable: written under another schema of the dataset.
                    raise IntegrityError(
                        f"batch {row.id} of dataset {dataset.id} does not match the dataset's "
                        f"current schema ({error})"
                    ) from None
                with self._lock:
                    self._cells[row.id] = frame
        frames = [self._cells[batch_id] for batch_id in ids]
        if not frames:
            return empty_cells(dataset)
        return pl.concat(frames, how="vertical")

    def _open(self, dataset_id: str, batch_id: str, blob: bytes) -> bytes:
        """The plaintext of one batch; after an `UnknownKey`, once more with the keyring
        and the batch as they are now.

        A rotation in another process may have rewrapped the batch under a KEK added after
        this process loaded the keyring, or (if the blob was read before the rotation
        finished and the old KEK has been retired since) the blob in hand may be stale.
        """
        try:
            return open_sealed(self.keyring, blob, dataset=dataset_id, batch_id=batch_id)
        except UnknownKey:
            self.keyring.reload()
            with self.database.read() as conn:
                current = conn.execute(
                    select(batches.c.blob).where(batches.c.id == batch_id)
                ).scalar()
            if current is None:
                raise
            return open_sealed(self.keyring, current, dataset=dataset_id, batch_id=batch_id)

    def count(self, dataset_id: str | None = None) -> int:
        query = select(func.count()).select_from(batches)
        if dataset_id is not None:
            query = query.where(batches.c.dataset == dataset_id)
        with self.database.read() as conn:
            return int(conn.execute(query).scalar_one())
