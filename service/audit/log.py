"""An append-only audit chain, MAC'd with HMAC-SHA-256 under the keyring's audit key.

Each entry's MAC covers (sequence number, previous MAC, canonical JSON of the entry), so an
edited, deleted, reordered or inserted entry breaks the chain at that point. Entries are
appended inside the caller's transaction, the one that makes the change they record; the
single ``audit_head`` row is updated by every append, which serialises appenders and keeps
the chain from forking under concurrency. Every ``checkpoint_every`` entries the head is
signed with Ed25519 and appended to a file outside the database, so that cutting off the
tail of the chain (entries and head together) is detected as well.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, bindparam, select, text, update

from service.crypto.keyring import Keyring
from service.crypto.signing import canonical_json
from service.database.engine import Database
from service.database.schema import audit_head, audit_log
from service.database.timestamps import as_utc

GENESIS_MAC = "0" * 64

# Built once. Every append advances the single head row (which locks it), then writes the
# entry and the head's new MAC.
_ADVANCE_HEAD = (
    update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=audit_head.c.seq + 1)
    .returning(audit_head.c.seq, audit_head.c.mac)
)
# A no-op write: the row lock on PostgreSQL, the write lock on SQLite, and nothing changes.
_HOLD_HEAD = update(audit_head).where(audit_head.c.id == 1).values(seq=audit_head.c.seq)
_SET_HEAD_MAC = update(audit_head).where(audit_head.c.id == 1).values(mac=bindparam("head_mac"))
# PostgreSQL takes both writes in one statement (one round trip less inside every charging
# transaction); SQLite has no data-modifying WITH, and runs the two in-process anyway.
_INSERT_ENTRY_SET_HEAD_MAC = text(
    "WITH head AS (UPDATE audit_head SET mac = :mac WHERE id = 1 RETURNING id) "
    "INSERT INTO audit_log (seq, at, actor, action, dataset, details, prev_mac, mac) "
    "VALUES (:seq, :at, :actor, :action, :dataset, :details, :prev_mac, :mac)"
)


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    action: str
    dataset: str | None
    details: Mapping[str, Any]
    prev_mac: str
    mac: str

    def body(self) -> dict[str, Any]:
        """The MAC'd content of the entry, as exported and as checked."""
        return {
            "seq": self.seq,
            "at": _iso(self.at),
            "actor": self.actor,
            "action": self.action,
            "dataset": self.dataset,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class Verification:
    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""


def _iso(at: datetime) -> str:
    return as_utc(at).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _mac(keyring: Keyring, seq: int, prev_mac: str, body: Mapping[str, Any]) -> str:
    link = seq.to_bytes(8, "big") + prev_mac.encode("ascii") + canonical_json(dict(body))
    return keyring.audit_mac(link).hex()


class AuditLog:
    """Appends to and verifies the audit chain of one database."""

    def __init__(
        self,
        database: Database,
        keyring: Keyring,
        checkpoint_path: Path,
        checkpoint_every: int = 100,
    ) -> None:
        self.database = database
        self.keyring = keyring
        self.checkpoint_path = checkpoint_path
        self.checkpoint_every = checkpoint_every

    def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        dataset: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one entry inside ``conn``'s transaction and return its sequence number."""
        head = conn.execute(_ADVANCE_HEAD).one()
        seq, prev_mac = int(head.seq), str(head.mac)
        at = datetime.now(UTC)
        details = dict(details or {})
        body = {
            "seq": seq,
            "at": _iso(at),
            "actor": actor,
            "action": action,
            "dataset": dataset,
            "details": details,
        }
        mac = _mac(self.keyring, seq, prev_mac, body)
        entry = {
            "seq": seq,
            "at": at,
            "actor": actor,
            "action": action,
            "dataset": dataset,
            "details": canonical_json(details).decode("utf-8"),
            "prev_mac": prev_mac,
            "mac": mac,
        }
        if self.database.is_sqlite:
            conn.execute(audit_log.insert(), entry)
            conn.execute(_SET_HEAD_MAC, {"head_mac": mac})
        else:
            conn.execute(_INSERT_ENTRY_SET_HEAD_MAC, entry)
        if seq % self.checkpoint_every == 0 and "after_commit" in conn.info:
            conn.info["after_commit"].append(lambda: self._checkpoint(seq, mac))
        return seq

    def hold_head(self, conn: Connection) -> None:
        """Take the chain head inside ``conn``'s transaction without appending: the caller
        is then serialised with every appender (every upload) until it commits."""
        conn.execute(_HOLD_HEAD)

    def entries(
        self, *, after: int = 0, limit: int | None = None, since: datetime | None = None
    ) -> Iterator[AuditEntry]:
        """Entries in sequence order, starting after ``after`` (and at or after ``since``;
        a naive ``since`` is taken as UTC)."""
        with self.database.read() as conn:
            rows = self._rows(conn, after=after, limit=limit, since=since)
        return self._entries(rows)

    @staticmethod
    def _rows(
        conn: Connection, *, after: int = 0, limit: int | None = None, since: datetime | None = None
    ) -> list[Any]:
        query = select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq)
        if since is not None:
            # Timestamps are stored in UTC; SQLite keeps them without a zone, so the
            # bound must be in UTC too or the comparison is off by the offset.
            query = query.where(audit_log.c.at >= as_utc(since))
        if limit is not None:
            query = query.limit(limit)
        return list(conn.execute(query).all())

    @staticmethod
    def _entries(rows: list[Any]) -> Iterator[AuditEntry]:
        for row in rows:
            yield AuditEntry(
                seq=int(row.seq),
                at=row.at,
                actor=row.actor,
                action=row.action,
                dataset=row.dataset,
                details=json.loads(row.details),
                prev_mac=row.prev_mac,
                mac=row.mac,
            )

    def verify(self) -> Verification:
        """Check the whole chain, the head and the signed checkpoints; name the first bad entry."""
        expected_seq, prev_mac, count = 1, GENESIS_MAC, 0
        macs: dict[int, str] = {}
        # Checkpoints are appended only after their entry committed, so reading the file
        # before taking the snapshot guarantees the snapshot holds every entry it names.
        checkpoints = list(self._checkpoints())
        # The head and the entries at one instant: a verification racing live appends
        # would otherwise read the entries, then a head that has moved on, and report a cut
        # chain that is intact.
        with self.database.snapshot() as conn:
            head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
            rows = self._rows(conn)
        for entry in self._entries(rows):
            if entry.seq != expected_seq:
                return Verification(
                    False,
                    count,
                    expected_seq,
                    f"entry {expected_seq} is missing (next is {entry.seq})",
                )
            if entry.prev_mac != prev_mac:
                return Verification(
                    False,
                    count,
                    entry.seq,
                    f"entry {entry.seq} does not follow entry {entry.seq - 1}",
                )
            if _mac(self.keyring, entry.seq, entry.prev_mac, entry.body()) != entry.mac:
                return Verification(
                    False,
                    count,
                    entry.seq,
                    f"entry {entry.seq} was altered (its MAC does not match)",
                )
            macs[entry.seq] = entry.mac
            prev_mac, expected_seq, count = entry.mac, expected_seq + 1, count + 1
        if head is None:
            return Verification(False, count, count + 1, "the chain head row is missing")
        if int(head.seq) != count or head.mac != prev_mac:
            first_bad = count + 1 if int(head.seq) > count else int(head.seq)
            return Verification(
                False,
                count,
                first_bad,
                f"the chain ends at entry {count} but its head says {head.seq}",
            )
        for line_number, checkpoint in checkpoints:
            if checkpoint is None or not self._checkpoint_signed(checkpoint):
                # A forged or damaged line: its seq is not to be trusted, so it names none.
                return Verification(
                    False,
                    count,
                    None,
                    f"checkpoint line {line_number} of {self.checkpoint_path.name} "
                    "is malformed or its signature is invalid",
                )
            seq = int(checkpoint["seq"])
            if seq > count:
                return Verification(
                    False,
                    count,
                    count + 1,
                    f"entries {count + 1}..{seq} were cut off (checkpoint at {seq})",
                )
            if macs.get(seq) != checkpoint["mac"]:
                return Verification(
                    False, count, seq, f"entry {seq} differs from its signed checkpoint"
                )
        return Verification(True, count)

    def _checkpoint(self, seq: int, mac: str) -> None:
        body = {"seq": seq, "mac": mac, "at": _iso(datetime.now(UTC))}
        key_id, signature = self.keyring.sign(canonical_json(body))
        record = dict(
            body,
            key_id=key_id,
            signature=base64.b64encode(signature).decode("ascii"),
        )
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        with self.checkpoint_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def _checkpoints(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """(line number, record) per non-blank line; None for a line that is not a JSON
        object, so that a damaged file fails verification instead of crashing it."""
        if not self.checkpoint_path.exists():
            return
        with self.checkpoint_path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    record = None
                yield number, record if isinstance(record, dict) else None

    def _checkpoint_signed(self, checkpoint: Mapping[str, Any]) -> bool:
        """True only for a well-formed record signed by a published signing key."""
        keys = {k["key_id"]: k["public_key"] for k in self.keyring.public_signing_keys()}
        public = keys.get(str(checkpoint.get("key_id")))
        seq, mac, at = checkpoint.get("seq"), checkpoint.get("mac"), checkpoint.get("at")
        signature = checkpoint.get("signature")
        if (
            public is None
            or type(seq) is not int
            or not isinstance(mac, str)
            or not isinstance(at, str)
            or not isinstance(signature, str)
        ):
            return False
        body = {"seq": seq, "mac": mac, "at": at}
        try:
            Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(
                base64.b64decode(signature, validate=True), canonical_json(body)
            )
        except (InvalidSignature, ValueError, binascii.Error):
            return False
        return True
