"""Sealed per-dataset documents: state that sums up every batch of a dataset.

Three kinds exist, one document of each per dataset at most:

* ``cells``: the merged cells, the sum of every batch, so that a query reads one document
  whatever the number of batches;
* ``contributions``: how many contacts each person (by keyed pseudonym) has contributed to
  each cell so far, so that a person's bounds hold across batches;
* ``pseudonym-key``: the dataset's HMAC key for those pseudonyms (see
  ``service.crypto.pseudonyms``), generated once and never replaced.

Each is sealed like a batch (envelope encryption under the keyring's KEK) with the dataset
and the document's kind as associated data: a blob moved to another dataset or kind fails
authentication. Key rotation moves documents with the batches (``service.store.rotation``).

``version`` counts changes of content. A writer names the version it built on; the write is
refused with ``StaleDocument`` when another writer changed the document in between, and the
writer starts again from the new content. Rewrapping during a rotation keeps the version:
the content is the same. ``DocumentStore`` keeps what a process decrypted by version, so a
document is decrypted once per change in each process, whichever process changed it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

import polars as pl
from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.exc import IntegrityError as RowConflict

from service.crypto.envelope import Sealed, open_sealed
from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.schema import dataset_documents
from service.store.cells import CellFormatError

T = TypeVar("T")

CELLS = "cells"
CONTRIBUTIONS = "contributions"
PSEUDONYM_KEY = "pseudonym-key"
KINDS = (CELLS, CONTRIBUTIONS, PSEUDONYM_KEY)


class StaleDocument(Exception):
    """Another writer changed the document since it was read; build on the new version."""


@dataclass(frozen=True)
class Document:
    dataset: str
    kind: str
    version: int
    kek_id: str
    blob: bytes = field(repr=False)


def sealed_label(kind: str) -> str:
    """What stands in the envelope's associated data where a batch has its id. Batch ids
    start with ``bat_``, so no batch and document can ever share associated data."""
    return f"document:{kind}"


def read_documents(conn: Connection, dataset: str, kinds: Iterable[str]) -> dict[str, Document]:
    """The stored documents of ``dataset`` among ``kinds``, by kind."""
    rows = conn.execute(
        select(dataset_documents).where(
            dataset_documents.c.dataset == dataset, dataset_documents.c.kind.in_(list(kinds))
        )
    ).all()
    return {
        row.kind: Document(row.dataset, row.kind, int(row.version), row.kek_id, bytes(row.blob))
        for row in rows
    }


def document_versions(conn: Connection, dataset: str) -> dict[str, int]:
    """The version of each stored document of ``dataset``, by kind (absent: not stored)."""
    rows = conn.execute(
        select(dataset_documents.c.kind, dataset_documents.c.version).where(
            dataset_documents.c.dataset == dataset
        )
    ).all()
    return {str(row.kind): int(row.version) for row in rows}


# Read before every release (is the decrypted copy in memory current?): built once.
_VERSION = select(dataset_documents.c.version).where(
    dataset_documents.c.dataset == bindparam("dataset"),
    dataset_documents.c.kind == bindparam("kind"),
)


def document_version(conn: Connection, dataset: str, kind: str) -> int | None:
    """The version of one document, or None when it is not stored."""
    version = conn.execute(_VERSION, {"dataset": dataset, "kind": kind}).scalar()
    return None if version is None else int(version)


def write_document(
    conn: Connection, *, dataset: str, kind: str, built_on: int | None, sealed: Sealed
) -> int:
    """Store ``sealed`` as the next version of a document built on version ``built_on``
    (None: built on nothing stored); return the new version, or raise ``StaleDocument``."""
    now = datetime.now(UTC)
    if built_on is None:
        try:
            conn.execute(
                dataset_documents.insert().values(
                    dataset=dataset,
                    kind=kind,
                    version=1,
                    kek_id=sealed.kek_id,
                    blob=sealed.blob,
                    updated_at=now,
                )
            )
        except RowConflict:
            # The transaction is lost with the conflict (PostgreSQL aborts it): the caller
            # starts again from the document now stored.
            raise StaleDocument(f"{kind} of {dataset} was stored meanwhile") from None
        return 1
    changed = conn.execute(
        update(dataset_documents)
        .where(
            dataset_documents.c.dataset == dataset,
            dataset_documents.c.kind == kind,
            dataset_documents.c.version == built_on,
        )
        .values(version=built_on + 1, kek_id=sealed.kek_id, blob=sealed.blob, updated_at=now)
    ).rowcount
    if changed != 1:
        raise StaleDocument(f"{kind} of {dataset} changed since version {built_on}")
    return built_on + 1


class DocumentStore:
    """Reads the sealed documents of one deployment, keeping what it decrypted by version."""

    def __init__(self, database: Database, keyring: Keyring) -> None:
        self.database = database
        self.keyring = keyring
        # (dataset, kind) -> (version, decrypted frame): valid while the stored version is
        # the same, which every writer in every process changes with the content.
        self._opened: dict[tuple[str, str], tuple[int, pl.DataFrame]] = {}
        self._lock = threading.Lock()

    def versions(self, dataset: str) -> dict[str, int]:
        with self.database.read() as conn:
            return document_versions(conn, dataset)

    def version(self, dataset: str, kind: str, within: Connection | None = None) -> int | None:
        with self.database.read(within) as conn:
            return document_version(conn, dataset, kind)

    def blob(self, dataset: str, kind: str) -> bytes | None:
        with self.database.read() as conn:
            stored = read_documents(conn, dataset, [kind]).get(kind)
        return None if stored is None else stored.blob

    def opened(
        self,
        dataset: str,
        kind: str,
        version: int,
        decode: Callable[[bytes], pl.DataFrame],
        within: Connection | None = None,
    ) -> pl.DataFrame:
        """Document ``kind`` of ``dataset`` decrypted and decoded, from memory when this
        process already holds ``version``; `IntegrityError` if it does not open or decode."""
        held = self._opened.get((dataset, kind))
        if held is not None and held[0] == version:
            return held[1]
        with self.database.read(within) as conn:
            stored = read_documents(conn, dataset, [kind]).get(kind)
        if stored is None:
            raise IntegrityError(f"the {kind} of dataset {dataset} disappeared")
        label = sealed_label(kind)
        plain = self.using(
            dataset,
            kind,
            stored.blob,
            lambda blob: open_sealed(self.keyring, blob, dataset=dataset, batch_id=label),
        )
        try:
            frame = decode(plain)
        except CellFormatError as error:
            raise IntegrityError(
                f"the {kind} of dataset {dataset} do not match the dataset's current "
                f"schema ({error})"
            ) from None
        self.remember(dataset, kind, stored.version, frame)
        return frame

    def remember(self, dataset: str, kind: str, version: int, frame: pl.DataFrame) -> None:
        """Hold ``frame`` as version ``version`` (what this process just stored)."""
        with self._lock:
            self._opened[(dataset, kind)] = (version, frame)

    def forget(self, dataset: str, kind: str) -> None:
        with self._lock:
            self._opened.pop((dataset, kind), None)

    def using(self, dataset: str, kind: str, blob: bytes, use: Callable[[bytes], T]) -> T:
        """``use(blob)``; after an ``UnknownKey``, once more with the keyring and the
        document as they are now: a rotation in another process may have moved the document
        to a KEK this process has not loaded yet, or retired the one the blob in hand is
        under."""
        try:
            return use(blob)
        except UnknownKey:
            self.keyring.reload()
            current = self.blob(dataset, kind)
            if current is None:
                raise
            return use(current)
