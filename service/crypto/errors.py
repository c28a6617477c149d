"""Domain errors of the crypto package.

The HTTP layer and the CLI translate these once; their messages name files, key ids,
datasets and batches, never key bytes or plaintext.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by `service.crypto`."""


class KeyringError(CryptoError):
    """The keyring file cannot be used, or a key operation was refused."""


class IntegrityError(CryptoError):
    """A sealed blob failed its integrity check: edited, truncated, swapped or unreadable."""


class UnknownKey(KeyringError, IntegrityError):
    """No key with the given id is in the keyring.

    It is a `KeyringError` for keyring look-ups (`Keyring.unwrap("kek-…", …)`) and an
    `IntegrityError` when a sealed blob names a key-encryption key the keyring no longer
    holds, so code that opens batches needs to catch `IntegrityError` only.
    """
