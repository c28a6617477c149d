"""Encrypted batches of aggregate cells: the only form in which contact data is kept.

Each batch is sealed under a fresh data key (envelope encryption, see ``service.crypto.envelope``)
with the dataset id and batch id as associated data, and stored together with its audit
entry in one transaction, so a batch is either fully stored and recorded or not at all.

The same transaction replaces the dataset's sealed documents (``service.store.documents``):
the merged cells, which queries read instead of every batch, and the persons' contributions,
against which a new batch with a ``person`` column is truncated so that a person's bounds
hold across batches ("first contacts kept", as within one batch). The batch is built on the
documents as read before the transaction; if another upload to the dataset committed in
between (the versions differ once the transaction holds the audit head, which every upload
takes), it is built again on the new documents. Two concurrent uploads therefore never both
spend the same remaining allowance of a person.

Key rotation (``service.store.rotation``) runs in another process while the service keeps
answering: a batch or document rewrapped under a KEK this process has not loaded yet is read
after reloading the keyring file, and an upload is sealed under the primary KEK of the
keyring file as it stands when the upload commits.

The module is long because it is one concept: a batch and the documents derived from it
are written in one transaction, and storing, reading, rebuilding and checking them share
the same sealing, the same retry after a concurrent upload and the same reload after a
rotation; split apart, each half would need the other's private steps.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import polars as pl
from sqlalchemy import Connection, func, select

from service.audit.log import AuditLog
from service.crypto.envelope import Sealed, open_sealed, seal
from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring
from service.crypto.pseudonyms import new_pseudonym_key, pseudonyms
from service.database.engine import Database
from service.database.schema import batches
from service.dp.mechanisms import ENGINE_INTEGER_MAX
from service.policy.model import CONTACTS_COLUMN, PERSON_COLUMN, DatasetPolicy
from service.store.bounds import check_in_force, recorded_bounds
from service.store.cells import (
    CellFormatError,
    decode_cells,
    encode_cells,
    merge_cells,
)
from service.store.contributions import (
    add_contributions,
    decode_contributions,
    empty_contributions,
)
from service.store.documents import (
    CELLS,
    CONTRIBUTIONS,
    PSEUDONYM_KEY,
    DocumentStore,
    StaleDocument,
    document_version,
    document_versions,
    sealed_label,
    write_document,
)
from service.store.errors import InvalidBatch, RowError
from service.store.ingest import (
    Aggregated,
    bound_contacts,
    contact_cells,
)
from service.store.uploads import Upload
from service.store.uploads import check as check_upload

_KEYED = "__dpx_keyed"

# Each failed attempt means another upload to the same dataset committed meanwhile.
_ATTEMPTS = 100


class UploadContention(RuntimeError):
    """Uploads to one dataset kept committing while this one was being built."""


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


@dataclass(frozen=True)
class CellsCheck:
    """The merged cells of a dataset against the sum of its batches."""

    dataset: str
    batches: int
    cells: int
    differing: int
    stored: bool

    @property
    def agree(self) -> bool:
        return self.stored and self.differing == 0


@dataclass(frozen=True)
class _Base:
    """The documents an upload builds on, decrypted, and the versions they were read at."""

    versions: dict[str, int]
    cells: pl.DataFrame
    contributions: pl.DataFrame


class BatchStore:
    """Stores sealed batches and serves a dataset's cells, decrypted, to the query engine."""

    def __init__(self, database: Database, keyring: Keyring, audit: AuditLog) -> None:
        self.database = database
        self.keyring = keyring
        self.audit = audit
        # Decrypted cells by batch id. A batch's content never changes after upload
        # (rotation rewraps or re-encrypts the same cells), so entries never go stale.
        self._cells: dict[str, pl.DataFrame] = {}
        self.documents = DocumentStore(database, keyring)
        self._lock = threading.Lock()

    # -- storing ---------------------------------------------------------------------------

    def add(
        self,
        dataset: DatasetPolicy,
        aggregated: Aggregated,
        *,
        form: str,
        actor: str,
        upload: Upload | None = None,
    ) -> StoredBatch:
        """Seal and store one batch, with its audit entry and the dataset's documents,
        atomically.

        A batch with a ``person`` column is truncated against what each person contributed
        in earlier batches; ``truncated`` counts the contacts of this batch that the bounds
        dropped, given what the earlier batches hold. Raises ``InvalidBatch`` (nothing
        stored) when the dataset's totals would exceed what the DP engine's integers hold.
        With ``upload``, a re-sent upload is recognised first (``service.store.uploads``):
        `AlreadyStored`, `UploadConflict` or `DuplicateBatch`, and nothing is stored.
        """
        batch_id = "bat_" + secrets.token_hex(10)
        keyed: pl.DataFrame | None = None
        new_key: Sealed | None = None
        bounds = recorded_bounds(dataset)
        for _ in range(_ATTEMPTS):
            if aggregated.person_contacts is not None and keyed is None:
                key, new_key = self._pseudonym_key(dataset.id)
                keyed = self._keyed(dataset, aggregated.person_contacts, key)
            base = self._base(dataset)
            cells, truncated = aggregated.cells, aggregated.truncated
            contributions = None
            if keyed is not None:
                kept, added = bound_contacts(
                    keyed, dataset, key=PERSON_COLUMN, prior=base.contributions
                )
                cells = contact_cells(kept, dataset)
                truncated = aggregated.rows - int(cells.get_column(CONTACTS_COLUMN).sum())
                contributions = add_contributions(base.contributions, added, dataset)
            merged = merge_cells([base.cells, cells], dataset)
            _check_engine_range(merged, dataset)
            plaintexts = {batch_id: encode_cells(cells), sealed_label(CELLS): encode_cells(merged)}
            if contributions is not None:
                plaintexts[sealed_label(CONTRIBUTIONS)] = encode_cells(contributions)
            stored = StoredBatch(
                batch_id=batch_id,
                dataset=dataset.id,
                form=form,
                rows=aggregated.rows,
                contacts=int(cells.get_column(CONTACTS_COLUMN).sum()),
                cells=cells.height,
                truncated=truncated,
                clamped=aggregated.clamped,
                created_at=datetime.now(UTC),
            )
            sealed = self._seal_all(dataset.id, plaintexts)
            try:
                with self.database.write() as conn:
                    if new_key is not None:
                        # The dataset's first pseudonym key is stored with the first batch
                        # keyed under it, or not at all: a refused upload leaves nothing.
                        self.audit.append(
                            conn, actor=actor, action="pseudonym_key.create", dataset=dataset.id
                        )
                    # The audit entry names counts only: row and contact totals are not
                    # released to partners, and the audit log is read by the DPO alone.
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
                    # The append above holds the audit head (a row lock on PostgreSQL, the
                    # write lock on SQLite), which every upload, a key rotation's finish and
                    # a KEK retirement take too. Checking the keyring file only now means
                    # that nothing commits under a KEK retired before it committed; checking
                    # the documents only now means no other upload committed since they
                    # were read; checking the bounds only now means no start or reload put
                    # narrower ones in force since this batch was truncated.
                    if upload is not None:
                        check_upload(conn, upload)
                    check_in_force(conn, dataset.id, bounds)
                    sealed = self._seal_current(dataset.id, plaintexts, sealed)
                    if new_key is not None:
                        if new_key.kek_id != self.keyring.primary_kek_id:
                            raise StaleDocument(f"the primary KEK changed during {batch_id}")
                        # StaleDocument if another upload stored a key meanwhile.
                        write_document(
                            conn,
                            dataset=dataset.id,
                            kind=PSEUDONYM_KEY,
                            built_on=None,
                            sealed=new_key,
                        )
                    current = document_versions(conn, dataset.id)
                    if any(
                        current.get(kind) != base.versions.get(kind)
                        for kind in (CELLS, CONTRIBUTIONS)
                    ):
                        raise StaleDocument(f"documents of {dataset.id} changed")
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
                            kek_id=sealed[batch_id].kek_id,
                            blob=sealed[batch_id].blob,
                            created_at=stored.created_at,
                            bounds=bounds,
                            **(upload.columns() if upload is not None else {}),
                        )
                    )
                    cells_version = write_document(
                        conn,
                        dataset=dataset.id,
                        kind=CELLS,
                        built_on=base.versions.get(CELLS),
                        sealed=sealed[sealed_label(CELLS)],
                    )
                    contributions_version = None
                    if contributions is not None:
                        contributions_version = write_document(
                            conn,
                            dataset=dataset.id,
                            kind=CONTRIBUTIONS,
                            built_on=base.versions.get(CONTRIBUTIONS),
                            sealed=sealed[sealed_label(CONTRIBUTIONS)],
                        )
            except StaleDocument:
                if new_key is not None:
                    keyed = None  # key the persons again, under the key stored meanwhile
                continue
            self.documents.remember(dataset.id, CELLS, cells_version, merged)
            if contributions is not None and contributions_version is not None:
                self.documents.remember(
                    dataset.id, CONTRIBUTIONS, contributions_version, contributions
                )
            return stored
        raise UploadContention(
            f"other uploads to {dataset.id} kept committing; nothing was stored, send it again"
        )

    def _seal_all(self, dataset_id: str, plaintexts: Mapping[str, bytes]) -> dict[str, Sealed]:
        return {
            label: seal(self.keyring, plaintext, dataset=dataset_id, batch_id=label)
            for label, plaintext in plaintexts.items()
        }

    def _seal_current(
        self, dataset_id: str, plaintexts: Mapping[str, bytes], sealed: dict[str, Sealed]
    ) -> dict[str, Sealed]:
        """``sealed``, or everything sealed again if the primary KEK changed meanwhile."""
        self.keyring.refresh()
        if all(s.kek_id == self.keyring.primary_kek_id for s in sealed.values()):
            return sealed
        return self._seal_all(dataset_id, plaintexts)

    def _keyed(
        self, dataset: DatasetPolicy, person_contacts: pl.DataFrame, key: bytes
    ) -> pl.DataFrame:
        """``person_contacts`` with each pseudonym replaced by its keyed pseudonym under the
        sealed pseudonym ``key``."""
        label = sealed_label(PSEUDONYM_KEY)
        persons = person_contacts.get_column(PERSON_COLUMN).unique(maintain_order=True)
        keyed = self.documents.using(
            dataset.id,
            PSEUDONYM_KEY,
            key,
            lambda blob: pseudonyms(
                self.keyring, blob, dataset=dataset.id, label=label, values=persons.to_list()
            ),
        )
        mapping = pl.DataFrame([persons, pl.Series(_KEYED, keyed, dtype=pl.Binary)])
        return (
            person_contacts.join(mapping, on=PERSON_COLUMN, how="left", maintain_order="left")
            .drop(PERSON_COLUMN)
            .rename({_KEYED: PERSON_COLUMN})
            .select(person_contacts.columns)
        )

    def _pseudonym_key(self, dataset_id: str) -> tuple[bytes, Sealed | None]:
        """The sealed pseudonym key of a dataset, and None; before its first upload with a
        ``person`` column, a new key sealed under the primary KEK, and that key again: the
        upload stores it in the batch's own transaction. Never replaced once stored: every
        stored keyed pseudonym depends on it."""
        blob = self.documents.blob(dataset_id, PSEUDONYM_KEY)
        if blob is not None:
            return blob, None
        self.keyring.refresh()
        sealed = new_pseudonym_key(
            self.keyring, dataset=dataset_id, label=sealed_label(PSEUDONYM_KEY)
        )
        return sealed.blob, sealed

    def _base(self, dataset: DatasetPolicy) -> _Base:
        """The merged cells and contributions an upload builds on, with their versions.

        Batches stored before merged cells existed are summed when the dataset has no
        merged cells yet, so the first merged cells cover them too.
        """
        versions = self.documents.versions(dataset.id)
        cells = (
            self._document(dataset, CELLS, versions[CELLS])
            if CELLS in versions
            else merge_cells(self._batch_frames(dataset), dataset)
        )
        contributions = (
            self._document(dataset, CONTRIBUTIONS, versions[CONTRIBUTIONS])
            if CONTRIBUTIONS in versions
            else empty_contributions(dataset)
        )
        return _Base(versions=versions, cells=cells, contributions=contributions)

    # -- reading ---------------------------------------------------------------------------

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

    def cells(self, dataset: DatasetPolicy, within: Connection | None = None) -> pl.DataFrame:
        """All cells of ``dataset``, one row per cell summed over every batch, decrypted and
        checked.

        Costs one small query when this process already holds the current merged cells,
        whatever the number of batches; otherwise the merged cells are read and decrypted
        once per change. Without merged cells (batches stored by an older dpx, before
        ``dpx cells rebuild``) the batches are summed.
        """
        version = self.documents.version(dataset.id, CELLS, within)
        if version is None:
            return merge_cells(self._batch_frames(dataset, within), dataset)
        return self._document(dataset, CELLS, version, within)

    def _document(
        self, dataset: DatasetPolicy, kind: str, version: int, within: Connection | None = None
    ) -> pl.DataFrame:
        """The merged cells or the contributions of ``dataset`` at ``version``, decrypted."""
        return self.documents.opened(
            dataset.id,
            kind,
            version,
            lambda plain: (
                decode_cells(plain, dataset)
                if kind == CELLS
                else decode_contributions(plain, dataset)
            ),
            within,
        )

    def _batch_frames(
        self, dataset: DatasetPolicy, within: Connection | None = None
    ) -> list[pl.DataFrame]:
        """The decrypted cells of every batch of ``dataset``, in batch id order."""
        with self.database.read(within) as conn:
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
            with self.database.read(within) as conn:
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
        return [self._cells[batch_id] for batch_id in ids]

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

    # -- merged cells against the batches ------------------------------------------------

    def rebuild_cells(self, dataset: DatasetPolicy, *, actor: str) -> int:
        """Replace the merged cells of ``dataset`` by the sum of its batches, atomically;
        return the number of batches summed."""
        for _ in range(_ATTEMPTS):
            with self.database.read() as conn:
                version = document_version(conn, dataset.id, CELLS)
            frames = self._batch_frames(dataset)
            merged = merge_cells(frames, dataset)
            plaintexts = {sealed_label(CELLS): encode_cells(merged)}
            sealed = self._seal_all(dataset.id, plaintexts)
            try:
                with self.database.write() as conn:
                    self.audit.append(
                        conn,
                        actor=actor,
                        action="cells.rebuild",
                        dataset=dataset.id,
                        details={"batches": len(frames), "cells": merged.height},
                    )
                    sealed = self._seal_current(dataset.id, plaintexts, sealed)
                    # A batch stored meanwhile changed the version: sum again.
                    if document_version(conn, dataset.id, CELLS) != version or self.count(
                        dataset.id, conn=conn
                    ) != len(frames):
                        raise StaleDocument(f"cells of {dataset.id} changed")
                    new_version = write_document(
                        conn,
                        dataset=dataset.id,
                        kind=CELLS,
                        built_on=version,
                        sealed=sealed[sealed_label(CELLS)],
                    )
            except StaleDocument:
                continue
            self.documents.remember(dataset.id, CELLS, new_version, merged)
            return len(frames)
        raise UploadContention(f"uploads to {dataset.id} kept committing; run the rebuild again")

    def check_cells(self, dataset: DatasetPolicy) -> CellsCheck:
        """Compare the merged cells of ``dataset`` with the sum of its batches."""
        for _ in range(_ATTEMPTS):
            with self.database.read() as conn:
                version = document_version(conn, dataset.id, CELLS)
            frames = self._batch_frames(dataset)
            summed = merge_cells(frames, dataset)
            if version is None:
                return CellsCheck(dataset.id, len(frames), summed.height, summed.height, False)
            # Read afresh, not from this process's cache: the check is of what is stored.
            self.documents.forget(dataset.id, CELLS)
            merged = self._document(dataset, CELLS, version)
            with self.database.read() as conn:
                unchanged = document_version(conn, dataset.id, CELLS) == version
            if unchanged and self.count(dataset.id) == len(frames):
                break
        else:
            raise UploadContention(f"uploads to {dataset.id} kept committing; check again")
        keys = [dimension.name for dimension in dataset.dimensions]
        joined = summed.join(merged, on=keys, how="full", suffix="_merged", coalesce=True)
        numbers = [column for column in summed.columns if column not in keys]
        differing = joined.filter(
            pl.any_horizontal(pl.col(name).ne_missing(pl.col(f"{name}_merged")) for name in numbers)
        ).height
        return CellsCheck(dataset.id, len(frames), merged.height, differing, True)

    def count(self, dataset_id: str | None = None, *, conn: Connection | None = None) -> int:
        """Stored batches (of one dataset), read in ``conn`` when given."""
        query = select(func.count()).select_from(batches)
        if dataset_id is not None:
            query = query.where(batches.c.dataset == dataset_id)
        if conn is not None:
            return int(conn.execute(query).scalar_one())
        with self.database.read() as own:
            return int(own.execute(query).scalar_one())


def _check_engine_range(merged: pl.DataFrame, dataset: DatasetPolicy) -> None:
    """Refuse a batch after which a total a query can ask for might not fit the DP engine.

    A query adds up any selection of cells, so the bound applies to the sum over all cells
    of the contacts and of each measure's absolute sums: then no cell, no group and no total
    can overflow, whatever is asked. Refusing here, before any charge, keeps a failure that
    depends on the true totals from ever happening after one.
    """
    totals = merged.select(
        pl.col(CONTACTS_COLUMN).cast(pl.Int128).sum(),
        *(pl.col(m.name).cast(pl.Int128).abs().sum() for m in dataset.measures),
    ).row(0)
    over = [
        name
        for name, total in zip(
            [CONTACTS_COLUMN, *(m.name for m in dataset.measures)], totals, strict=True
        )
        if (total or 0) > ENGINE_INTEGER_MAX
    ]
    if over:
        raise InvalidBatch(
            [
                RowError(
                    0,
                    None,
                    f"with this batch the dataset's {' and '.join(over)} total would exceed "
                    f"{ENGINE_INTEGER_MAX}, the largest total a dataset may hold; "
                    "nothing was stored",
                )
            ]
        )
