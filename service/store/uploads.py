"""Re-sent uploads: recognised by their Idempotency-Key and by a keyed digest of their bytes,
so that a retry is answered with the batch it already stored and a copy is not counted twice.

A retry with the same key and the same content is answered with the batch stored the first
time (`AlreadyStored`); the same key with other content is an `UploadConflict`. Content
identical to a batch already stored for the dataset is a `DuplicateBatch`, unless the owner
allows it. `check` runs inside the upload's write transaction after its audit entry, which
holds the audit head (a row lock on PostgreSQL, the write lock on SQLite): uploads are
checked and stored one at a time, so two racing requests can never both find a key unused
or content new. The unique index on (dataset, idempotency_key) holds even if that changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from service.crypto.keyring import Keyring
from service.database.schema import batches
from service.store.errors import DuplicateBatch, UploadConflict

# The purpose for which the keyring derives the digest key; changing it would make every
# stored digest unrecognisable.
DIGEST_LABEL = "dpx batch digest v1"


@dataclass(frozen=True)
class Upload:
    """What recognises an upload when it arrives again."""

    dataset: str
    form: str
    digest: str
    idempotency_key: str | None = None
    allow_duplicate: bool = False

    @classmethod
    def of(
        cls,
        keyring: Keyring,
        dataset: str,
        body: bytes,
        *,
        form: str,
        idempotency_key: str | None = None,
        allow_duplicate: bool = False,
    ) -> Upload:
        """The upload of ``body`` to ``dataset``, with the keyed digest of its bytes.

        An HMAC, not a plain hash: a plain SHA-256 of a small CSV could be recovered by
        hashing guessed files. The dataset id is MAC'd with the bytes (dataset ids hold no
        NUL), so the same file sent to two datasets gets unrelated digests.
        """
        digest = keyring.mac(DIGEST_LABEL, dataset.encode("utf-8") + b"\0" + body).hex()
        return cls(dataset, form, digest, idempotency_key, allow_duplicate)

    def columns(self) -> dict[str, str | None]:
        """The values stored with the batch."""
        return {"digest": self.digest, "idempotency_key": self.idempotency_key}


class AlreadyStored(Exception):
    """The upload is a retry of one that stored ``batch_id``: that batch is the answer."""

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        super().__init__(batch_id)


def check(conn: Connection, upload: Upload) -> None:
    """Return if ``upload`` may be stored as a new batch; otherwise raise `AlreadyStored`
    (a retry), `UploadConflict` (its key with other content) or `DuplicateBatch` (the
    content of a stored batch, not allowed)."""
    if upload.idempotency_key is not None:
        earlier = conn.execute(
            select(batches.c.id, batches.c.digest, batches.c.form).where(
                batches.c.dataset == upload.dataset,
                batches.c.idempotency_key == upload.idempotency_key,
            )
        ).first()
        if earlier is not None:
            if (earlier.digest, earlier.form) != (upload.digest, upload.form):
                raise UploadConflict(upload.dataset)
            raise AlreadyStored(str(earlier.id))
    if not upload.allow_duplicate:
        copy = conn.execute(
            select(batches.c.id)
            .where(batches.c.dataset == upload.dataset, batches.c.digest == upload.digest)
            .order_by(batches.c.created_at, batches.c.id)
            .limit(1)
        ).scalar()
        if copy is not None:
            raise DuplicateBatch(upload.dataset, str(copy))
