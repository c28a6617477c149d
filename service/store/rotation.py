"""Key rotation of stored batches: a new key-encryption key, rewrapping, retirement.

A rotation adds a KEK, makes it primary and saves the keyring file *before* touching any
batch, so that whatever happens next every batch is under a KEK the file holds. Batches are
then moved in small transactions, each a compare-and-set per batch::

    UPDATE batches SET blob = :new, kek_id = :primary WHERE id = :id AND kek_id = :old

which only touches a batch still under the KEK it was read under. A rotation killed at any
moment (even SIGKILL between two statements) leaves every batch under the old KEK or the new
one, both in the keyring; running it again finds the batches left behind and finishes.

Sealed synopses (``service.store.synopses``) use the same envelope and move with the
batches: every count and move below covers both tables.

The service keeps answering during a rotation: both KEKs open batches until the old one is
retired, and a service process that meets the new KEK reloads the keyring file (see
``BatchStore``). Every step that changes state appends an audit entry naming key ids and
counts only, never key material.

Rewrapping replaces only the 48-byte wrapped data key of each batch. Re-encryption
(``reencrypt=True``) also replaces each data key and encrypts the cells again, for when a
data key itself may have leaked.

The sealed per-dataset documents (``service.store.documents``: merged cells, contributions,
pseudonym keys) move with the batches, compared-and-set on their KEK and version. A pseudonym
key is rewrapped or sealed again, never replaced: the keyed pseudonyms stored depend on it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, select, update

from service.audit.log import AuditLog
from service.crypto.envelope import reencrypt, rewrap
from service.crypto.errors import KeyringError, UnknownKey
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.schema import audit_log, batches, dataset_documents, synopses
from service.store.documents import sealed_label

START = "key.rotate.start"
RESUME = "key.rotate.resume"
REWRAP = "key.rewrap"
FINISH = "key.rotate.finish"
RETIRE = "key.retire"

DEFAULT_BATCH_SIZE = 200

# Every table of sealed blobs (id, dataset, kek_id, blob) that a rotation moves.
SEALED: tuple[Table, ...] = (batches, synopses)


@dataclass(frozen=True)
class _SealedRows:
    """How a rotation writes back the rows of one table of sealed blobs."""

    table: Table
    # Columns that name a row, and any that must not have changed since it was read; the
    # compare-and-set also requires the KEK it was read under.
    match: tuple[str, ...]
    # The envelope's batch_id of a row: what its blob's associated data was sealed with.
    label: Callable[[Any], str]
    # What the audit entry of a moved chunk counts.
    counted: str


def _row_id(row: Any) -> str:
    return str(row.id)


def _document_label(row: Any) -> str:
    return sealed_label(row.kind)


# Synopses are counted as batches, in the audit entries as in the progress.
_BATCH_LIKE = tuple(_SealedRows(table, ("id",), _row_id, "batches") for table in SEALED)
# A document is compared on its version too: an upload may replace it while the rotation runs.
_DOCUMENTS = _SealedRows(
    dataset_documents, ("dataset", "kind", "version"), _document_label, "documents"
)

OnProgress = Callable[[int, int], None]
"""Called after every committed transaction with (batches moved so far, batches to move)."""


class KeyInUse(KeyringError):
    """A KEK cannot be retired: it is primary, or batches are still under it."""


@dataclass(frozen=True)
class KeyUsage:
    """One KEK as `dpx keys list` shows it. ``status`` is ``missing`` for a KEK that
    batches name but the keyring does not hold: those batches cannot be opened."""

    kek_id: str
    status: str
    created: str
    batches: int
    documents: int = 0


@dataclass(frozen=True)
class RotationPlan:
    """What a rotation run will do: move ``pending`` batches to ``kek_id``.

    ``resumed`` is True when the run continues an unfinished rotation to the current primary
    instead of adding a KEK; ``previous`` is the primary the rotation started from.
    """

    kek_id: str
    previous: str | None
    pending: int
    resumed: bool
    reencrypt: bool


@dataclass(frozen=True)
class RotationReport:
    kek_id: str
    moved: int
    seconds: float
    reencrypt: bool


class _NotFinished(Exception):
    """Batches arrived under an old KEK while the rotation was finishing; go round again."""


class KeyRotation:
    """Rotates the KEKs of one deployment: its keyring file and its stored batches."""

    def __init__(
        self, database: Database, keyring: Keyring, audit: AuditLog, *, actor: str = "admin:cli"
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.audit = audit
        self.actor = actor

    # -- what is where -------------------------------------------------------------------

    def batches_by_kek(self) -> dict[str, int]:
        """How many batches each KEK id protects, as the batches table says."""
        counts: dict[str, int] = {}
        with self.database.read() as conn:
            for table in SEALED:
                rows = conn.execute(
                    select(table.c.kek_id, func.count()).group_by(table.c.kek_id)
                ).all()
                for row in rows:
                    counts[str(row[0])] = counts.get(str(row[0]), 0) + int(row[1])
        return counts

    def documents_by_kek(self) -> dict[str, int]:
        """How many sealed dataset documents each KEK id protects."""
        with self.database.read() as conn:
            rows = conn.execute(
                select(dataset_documents.c.kek_id, func.count()).group_by(
                    dataset_documents.c.kek_id
                )
            ).all()
        return {str(row[0]): int(row[1]) for row in rows}

    def usage(self) -> list[KeyUsage]:
        """Every KEK of the keyring (oldest first), then any KEK batches or documents name
        that the keyring lacks, each with the number of batches and documents it protects."""
        self.keyring.refresh()
        counts = self.batches_by_kek()
        documents = self.documents_by_kek()
        listed = [
            KeyUsage(
                k["id"],
                k["status"],
                k["created"],
                counts.pop(k["id"], 0),
                documents.pop(k["id"], 0),
            )
            for k in self.keyring.describe_keks()
        ]
        return listed + [
            KeyUsage(kek_id, "missing", "-", counts.get(kek_id, 0), documents.get(kek_id, 0))
            for kek_id in sorted(set(counts) | set(documents))
        ]

    def pending(self) -> int:
        """Batches (and synopses) not yet under the primary KEK (the work a rotation reports)."""
        with self.database.read() as conn:
            return _count_not_under(conn, self.keyring.primary_kek_id)

    def _documents_pending(self) -> int:
        """Dataset documents not yet under the primary KEK (a handful per dataset)."""
        with self.database.read() as conn:
            return _count(conn, dataset_documents, self.keyring.primary_kek_id, under=False)

    # -- rotating ------------------------------------------------------------------------

    def start(self, *, reencrypt: bool = False) -> RotationPlan:
        """Begin a rotation, or take up an unfinished one.

        Unfinished means: batches are under a KEK other than the primary, or the last
        rotation to the current primary has no finish entry in the audit log (it was killed
        after moving its last batch). Then no KEK is added, and the run moves the batches
        left to the current primary, re-encrypting if this run or the unfinished one asked
        for it. Otherwise a new KEK is added, made primary and saved to the keyring file
        before any batch is touched.
        """
        self.keyring.refresh()
        primary = self.keyring.primary_kek_id
        pending = self.pending()
        last = self._last_rotation()
        unfinished = last is not None and last[0] != FINISH and last[1].get("kek_id") == primary
        if pending or unfinished or self._documents_pending():
            recorded = last[1] if unfinished and last is not None else {}
            plan = RotationPlan(
                kek_id=primary,
                previous=recorded.get("previous"),
                pending=pending,
                resumed=True,
                reencrypt=reencrypt or bool(recorded.get("reencrypt")),
            )
            with self.database.write() as conn:
                self.audit.append(
                    conn,
                    actor=self.actor,
                    action=RESUME,
                    details={
                        "kek_id": primary,
                        "previous": plan.previous,
                        "pending": pending,
                        "reencrypt": plan.reencrypt,
                    },
                )
            return plan
        new_kek = self.keyring.add_kek()
        # Saved before any batch moves: a batch under the new KEK is never more durable
        # than the key that opens it.
        self.keyring.save()
        with self.database.write() as conn:
            self.audit.append(
                conn,
                actor=self.actor,
                action=START,
                details={
                    "kek_id": new_kek,
                    "previous": primary,
                    "pending": self.pending(),
                    "reencrypt": reencrypt,
                },
            )
        return RotationPlan(
            kek_id=new_kek,
            previous=primary,
            pending=self.pending(),
            resumed=False,
            reencrypt=reencrypt,
        )

    def run(
        self,
        plan: RotationPlan,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        on_progress: OnProgress | None = None,
    ) -> RotationReport:
        """Move every batch not under ``plan.kek_id`` to it, ``batch_size`` batches per
        transaction, then record the rotation as finished.

        Safe to run concurrently with uploads and queries, and to kill at any moment.
        A batch that fails its integrity check stops the run (`IntegrityError` naming it).
        """
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {batch_size}")
        if self.keyring.primary_kek_id != plan.kek_id:
            raise KeyringError(
                f"the primary key-encryption key is {self.keyring.primary_kek_id}, "
                f"not {plan.kek_id}; start the rotation again"
            )
        began = time.monotonic()
        moved, total = 0, plan.pending
        while True:
            moved += self._move_all(plan, batch_size, moved, total, on_progress)
            try:
                self._finish(plan, moved)
                break
            except _NotFinished:
                total = max(total, moved + self.pending())
        return RotationReport(
            kek_id=plan.kek_id,
            moved=moved,
            seconds=time.monotonic() - began,
            reencrypt=plan.reencrypt,
        )

    def _move_all(
        self,
        plan: RotationPlan,
        batch_size: int,
        moved: int,
        total: int,
        on_progress: OnProgress | None,
    ) -> int:
        done = 0
        for kind in _BATCH_LIKE:
            table = kind.table
            while True:
                with self.database.read() as conn:
                    rows = conn.execute(
                        select(table.c.id, table.c.dataset, table.c.kek_id, table.c.blob)
                        .where(table.c.kek_id != plan.kek_id)
                        .order_by(table.c.id)
                        .limit(batch_size)
                    ).all()
                if not rows:
                    break
                done += self._move(plan, rows, kind)
                if on_progress is not None:
                    on_progress(moved + done, max(total, moved + done))
        while True:
            with self.database.read() as conn:
                documents = conn.execute(
                    select(dataset_documents)
                    .where(dataset_documents.c.kek_id != plan.kek_id)
                    .order_by(dataset_documents.c.dataset, dataset_documents.c.kind)
                    .limit(batch_size)
                ).all()
            if not documents:
                return done
            # Documents are not counted in the progress: it reports batches, the bulk.
            self._move(plan, documents, _DOCUMENTS)

    def _move(self, plan: RotationPlan, rows: Sequence[Any], kind: _SealedRows) -> int:
        """Rewrap (or re-encrypt) one chunk of ``kind``'s rows and compare-and-set it in one
        transaction: a row is written only if it still holds the KEK (and, for a document,
        the version) it was read with, so a row another process moved or replaced meanwhile
        is left alone (it is already under the primary KEK, or is moved on the next pass)."""
        transform = reencrypt if plan.reencrypt else rewrap
        # The cryptography happens before the transaction opens, so the write lock is
        # held only for the updates themselves.
        sealed = [
            (row, transform(self.keyring, row.blob, dataset=row.dataset, batch_id=kind.label(row)))
            for row in rows
        ]
        table = kind.table
        # Bound names differ from the column names: the SET clause reserves those.
        compare_and_set = (
            update(table)
            .where(
                *(table.c[column] == bindparam(f"read_{column}") for column in kind.match),
                table.c.kek_id == bindparam("read_kek_id"),
            )
            .values(blob=bindparam("new_blob"), kek_id=bindparam("new_kek"))
        )
        with self.database.write() as conn:
            # One executemany; its rowcount is the number of rows actually moved (both
            # SQLite and psycopg sum it), which excludes any row another process moved.
            moved = conn.execute(
                compare_and_set,
                [
                    {
                        **{f"read_{column}": getattr(row, column) for column in kind.match},
                        "read_kek_id": row.kek_id,
                        "new_blob": new.blob,
                        "new_kek": new.kek_id,
                    }
                    for row, new in sealed
                ],
            ).rowcount
            self.audit.append(
                conn,
                actor=self.actor,
                action=REWRAP,
                details={
                    "kek_id": plan.kek_id,
                    "from": sorted({str(row.kek_id) for row in rows}),
                    kind.counted: moved,
                    "mode": "reencrypt" if plan.reencrypt else "rewrap",
                },
            )
        return moved

    def _finish(self, plan: RotationPlan, moved: int) -> None:
        with self.database.write() as conn:
            # Appending first takes the audit head, which an upload holds from before it
            # checks the keyring file until it commits: once we hold it, every upload
            # sealed under an old KEK has committed and is counted here.
            self.audit.append(
                conn,
                actor=self.actor,
                action=FINISH,
                details={"kek_id": plan.kek_id, "moved": moved, "reencrypt": plan.reencrypt},
            )
            if _count_not_under(conn, plan.kek_id) or _count(
                conn, dataset_documents, plan.kek_id, under=False
            ):
                raise _NotFinished()

    def _last_rotation(self) -> tuple[str, dict[str, Any]] | None:
        """The action and details of the last start, resume or finish entry."""
        with self.database.read() as conn:
            row = conn.execute(
                select(audit_log.c.action, audit_log.c.details)
                .where(audit_log.c.action.in_((START, RESUME, FINISH)))
                .order_by(audit_log.c.seq.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        details = json.loads(row.details)
        return str(row.action), details if isinstance(details, dict) else {}

    # -- retiring ------------------------------------------------------------------------

    def retire(self, kek_id: str) -> None:
        """Remove a KEK from the keyring file; afterwards nothing under it opens.

        Refused (`KeyInUse`) for the primary KEK and while any batch is under the KEK;
        `UnknownKey` for a KEK the keyring does not hold.
        """
        self.keyring.refresh()
        if kek_id not in self.keyring.kek_ids():
            raise UnknownKey(f"no key-encryption key {kek_id} in the keyring")
        if kek_id == self.keyring.primary_kek_id:
            raise KeyInUse(f"{kek_id} is the primary key-encryption key; rotate first")
        with self.database.write() as conn:
            # The audit head is taken first, as uploads and rotations take it: no upload
            # can commit a batch under this KEK between the count and the removal.
            self.audit.append(conn, actor=self.actor, action=RETIRE, details={"kek_id": kek_id})
            left = sum(_count(conn, table, kek_id, under=True) for table in SEALED)
            documents = _count(conn, dataset_documents, kek_id, under=True)
            if left or documents:
                what = f"{left} batches" + (
                    f" and {documents} dataset document{'s' if documents > 1 else ''}"
                    if documents
                    else ""
                )
                raise KeyInUse(
                    f"{kek_id} still protects {what}; run `dpx rotate-keys` to move them first"
                )
            self.keyring.remove_kek(kek_id)
            self.keyring.save()


def _count_not_under(conn: Connection, kek_id: str) -> int:
    """Sealed batches and synopses whose data key is not wrapped under ``kek_id``."""
    return sum(_count(conn, table, kek_id, under=False) for table in SEALED)


def _count(conn: Connection, table: Table, kek_id: str, *, under: bool) -> int:
    """Rows of ``table`` sealed under ``kek_id`` (``under``) or under any other KEK."""
    condition = table.c.kek_id == kek_id if under else table.c.kek_id != kek_id
    return int(conn.execute(select(func.count()).select_from(table).where(condition)).scalar_one())
