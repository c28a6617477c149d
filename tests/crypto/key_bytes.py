"""The raw bytes of a keyring's keys, for tests that prove those bytes appear nowhere else.

The keyring hands no key out (`tests/crypto/test_keys_stay_in_crypto.py`), so a test that
needs the secrets it searches for reads them from the keyring's private fields, here only.
"""

from __future__ import annotations

from service.crypto.keyring import Keyring


def kek_bytes(keyring: Keyring, key_id: str) -> bytes:
    return next(kek.key for kek in keyring._keks if kek.id == key_id)


def audit_key_bytes(keyring: Keyring) -> bytes:
    return keyring._audit_key.key


def signing_key_bytes(keyring: Keyring, key_id: str) -> bytes:
    return next(key.private for key in keyring._signing_keys if key.id == key_id)


def all_key_bytes(keyring: Keyring) -> list[bytes]:
    """Every KEK, every signing private key (current and retired), and the audit key."""
    keys = [kek.key for kek in keyring._keks]
    keys += [key.private for key in keyring._signing_keys]
    keys.append(keyring._audit_key.key)
    return keys
