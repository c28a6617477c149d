"""Keyed pseudonyms of the privacy unit: HMAC-SHA-256 under a per-dataset key.

A person's pseudonym (the ``person`` column of an upload) is never stored. What is kept, to
bound a person's contributions across batches, is a keyed hash of it: without the key, a
copy of that state cannot be matched against guessed pseudonyms (phone numbers, account ids).

The key is generated here and leaves this module only sealed: envelope encryption under the
keyring's primary KEK, exactly like a batch, stored by the caller. Key rotation rewraps it and
re-encryption seals the same key again, so it is never regenerated and every stored keyed
hash stays comparable with new ones. It is opened only inside :func:`pseudonyms`.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Sequence

from service.crypto.envelope import Sealed, open_sealed, seal
from service.crypto.errors import IntegrityError
from service.crypto.keyring import Keyring

PSEUDONYM_BYTES = 16
"""Length of a keyed pseudonym: 128 bits, so that distinct persons never share one in
practice (and two that did would only be truncated as one, never allowed more)."""

_KEY_BYTES = 32


def new_pseudonym_key(keyring: Keyring, *, dataset: str, label: str) -> Sealed:
    """A fresh 256-bit pseudonym key for ``dataset``, sealed under the primary KEK with
    ``label`` in the associated data (where a batch has its id)."""
    return seal(keyring, secrets.token_bytes(_KEY_BYTES), dataset=dataset, batch_id=label)


def pseudonyms(
    keyring: Keyring, sealed_key: bytes, *, dataset: str, label: str, values: Sequence[str]
) -> list[bytes]:
    """The keyed pseudonym of each of ``values``, in order, under the sealed key of ``dataset``.

    Raises `IntegrityError` (or `UnknownKey`) when the sealed key does not open.
    """
    key = open_sealed(keyring, sealed_key, dataset=dataset, batch_id=label)
    if len(key) != _KEY_BYTES:
        raise IntegrityError(f"the pseudonym key of dataset {dataset} is malformed")
    # hmac.digest runs HMAC-SHA-256 in one OpenSSL call per value: a million pseudonyms take
    # about a second, where building a `cryptography` HMAC object per value takes several.
    return [
        hmac.digest(key, value.encode("utf-8", "surrogatepass"), "sha256")[:PSEUDONYM_BYTES]
        for value in values
    ]
