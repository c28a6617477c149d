"""Rotation of the release-signing key: a fresh Ed25519 key made current, the old one retired.

The keyring does the key work (`Keyring.rotate_signing_key`); this module adds what a
rotation owes the deployment beyond the keyring file: the audit entry that records it. It
touches no stored data, unlike the rotation of key-encryption keys (``service.store.rotation``),
which moves every sealed batch.
"""

from __future__ import annotations

from service.audit.log import AuditLog
from service.crypto.keyring import Keyring
from service.database.engine import Database

ROTATE = "signing_key.rotate"


def rotate_signing_key(
    database: Database, keyring: Keyring, audit: AuditLog, *, actor: str = "admin:cli"
) -> tuple[str, str]:
    """Make a fresh Ed25519 key current; the former one is retired but still published,
    so releases and audit checkpoints it signed keep verifying. Returns (new, retired).

    The keyring file is saved before the audit entry is written: a crash between the two
    leaves a rotated key without its entry, never an entry for a key that does not exist.
    """
    keyring.refresh()
    retired = keyring.signing_key_id
    current = keyring.rotate_signing_key()
    keyring.save()
    with database.write() as conn:
        audit.append(
            conn, actor=actor, action=ROTATE, details={"key_id": current, "retired": retired}
        )
    return current, retired
