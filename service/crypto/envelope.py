"""Envelope encryption of stored batches with AES-256-GCM.

Each batch is encrypted under its own fresh 256-bit data key; the data key is wrapped
(AES-256-GCM again) under a key-encryption key (KEK) of the keyring. Rotating a KEK then
means rewrapping 60 bytes per batch, not re-encrypting the data.

A sealed blob describes itself (all integers big-endian, lengths in bytes)::

    magic b"DPXE" (4) | version 1 (1) | KEK id length n (1) | KEK id (n, ASCII)
    | wrap nonce (12) | wrapped data key (32 + 16 tag) | data nonce (12)
    | ciphertext + tag (len(plaintext) + 16)

Associated data binds the wrapped key to (version, KEK id, dataset, batch id) and the
ciphertext to (version, dataset, batch id), each with its own purpose label. A blob copied
to another batch or dataset, or a header edit, fails authentication. The ciphertext is not
bound to the KEK id directly, so that `rewrap` can change the KEK without touching it; it is
bound through its data key, which only opens if the wrapped key, and so the KEK id, is intact.

Opening never returns unauthenticated bytes and never raises anything but `IntegrityError`
(or its subclass `UnknownKey`): the header is parsed defensively, every length checked
before it is used.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.crypto.errors import IntegrityError, UnknownKey
from service.crypto.keyring import Keyring

MAGIC = b"DPXE"
VERSION = 1

# 96-bit random nonces. A data key encrypts exactly once, so its nonce can never repeat;
# a KEK wraps one key per batch, and random 96-bit nonces stay safe for up to 2**32
# wraps per KEK, orders of magnitude beyond a helpline's batches between rotations.
_NONCE_BYTES = 12
_TAG_BYTES = 16
_DATA_KEY_BYTES = 32
_WRAPPED_KEY_BYTES = _DATA_KEY_BYTES + _TAG_BYTES
_KEK_ID = re.compile(rb"[A-Za-z0-9_-]{1,64}")
# AESGCM refuses inputs of 2**31 bytes or more; a longer blob cannot be ours.
_MAX_BLOB_BYTES = 2**31 - 1


@dataclass(frozen=True)
class Sealed:
    """A sealed blob and the id of the KEK its data key is wrapped under."""

    kek_id: str
    blob: bytes = field(repr=False)


@dataclass(frozen=True)
class _Envelope:
    kek_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    data_nonce: bytes
    ciphertext: bytes


class _Unreadable(Exception):
    """The blob is not a well-formed envelope; the message says what is wrong."""


def seal(keyring: Keyring, plaintext: bytes, *, dataset: str, batch_id: str) -> Sealed:
    """Encrypt `plaintext` for batch `batch_id` of `dataset` under a fresh data key,
    wrapped under the keyring's primary KEK."""
    data_key = AESGCM.generate_key(256)
    data_nonce = os.urandom(_NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(
        data_nonce, plaintext, _data_associated_data(dataset, batch_id)
    )
    return _assemble(
        keyring, keyring.primary_kek_id, data_key, data_nonce, ciphertext, dataset, batch_id
    )


def open_sealed(keyring: Keyring, blob: bytes, *, dataset: str, batch_id: str) -> bytes:
    """The plaintext sealed for batch `batch_id` of `dataset`.

    Any edit, truncation, extension, swap between batches or datasets, unknown version or
    unknown KEK raises `IntegrityError` (`UnknownKey` for a KEK the keyring does not hold);
    no other exception escapes, and the message names only the batch, the dataset and the
    KEK id.
    """
    envelope, data_key = _unwrap(keyring, blob, dataset=dataset, batch_id=batch_id)
    try:
        return AESGCM(data_key).decrypt(
            envelope.data_nonce, envelope.ciphertext, _data_associated_data(dataset, batch_id)
        )
    except (InvalidTag, OverflowError):
        raise IntegrityError(_failure(dataset, batch_id)) from None


def rewrap(
    keyring: Keyring, blob: bytes, *, dataset: str, batch_id: str, kek_id: str | None = None
) -> Sealed:
    """The same ciphertext with its data key wrapped under `kek_id` (default: primary).

    The ciphertext bytes are carried over unchanged and the plaintext never exists in
    memory: only the 32-byte data key is unwrapped and wrapped again. The old wrapping is
    authenticated first, so a blob that does not belong to this batch is refused.
    """
    envelope, data_key = _unwrap(keyring, blob, dataset=dataset, batch_id=batch_id)
    target = keyring.primary_kek_id if kek_id is None else kek_id
    return _assemble(
        keyring,
        target,
        data_key,
        envelope.data_nonce,
        envelope.ciphertext,
        dataset,
        batch_id,
    )


def reencrypt(keyring: Keyring, blob: bytes, *, dataset: str, batch_id: str) -> Sealed:
    """Decrypt and seal again under a fresh data key and the primary KEK, for when a data
    key itself may be compromised."""
    plaintext = open_sealed(keyring, blob, dataset=dataset, batch_id=batch_id)
    return seal(keyring, plaintext, dataset=dataset, batch_id=batch_id)


# -- internals -----------------------------------------------------------------------------


def _failure(dataset: str, batch_id: str) -> str:
    return f"batch {batch_id} of dataset {dataset} failed its integrity check"


def _encode(text: str) -> bytes:
    # surrogatepass: any str the caller holds encodes, so opening stays total.
    return text.encode("utf-8", "surrogatepass")


def _associated_data(purpose: bytes, *fields: str) -> bytes:
    """Magic, version, purpose and fields, each length-prefixed so that no two different
    field tuples (say dataset "a-b", batch "c" and dataset "a", batch "b-c") collide."""
    parts = [MAGIC, bytes([VERSION]), struct.pack(">I", len(purpose)), purpose]
    for text in fields:
        encoded = _encode(text)
        parts += [struct.pack(">I", len(encoded)), encoded]
    return b"".join(parts)


def _data_associated_data(dataset: str, batch_id: str) -> bytes:
    return _associated_data(b"data", dataset, batch_id)


def _wrap_associated_data(kek_id: str, dataset: str, batch_id: str) -> bytes:
    return _associated_data(b"wrap", kek_id, dataset, batch_id)


def _assemble(
    keyring: Keyring,
    kek_id: str,
    data_key: bytes,
    data_nonce: bytes,
    ciphertext: bytes,
    dataset: str,
    batch_id: str,
) -> Sealed:
    # The keyring only holds ids of the form kek-<8 hex>, which always fit the header.
    encoded_id = kek_id.encode("ascii")
    wrap_nonce = os.urandom(_NONCE_BYTES)
    wrapped_key = keyring.wrap(
        kek_id, wrap_nonce, data_key, _wrap_associated_data(kek_id, dataset, batch_id)
    )
    header = b"".join(
        [MAGIC, bytes([VERSION, len(encoded_id)]), encoded_id, wrap_nonce, wrapped_key]
    )
    return Sealed(kek_id=kek_id, blob=header + data_nonce + ciphertext)


def _parse(blob: object) -> _Envelope:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise _Unreadable("not bytes")
    data = bytes(blob)
    if len(data) > _MAX_BLOB_BYTES:
        raise _Unreadable("too long")
    if len(data) < len(MAGIC) + 2:
        raise _Unreadable("truncated header")
    if data[: len(MAGIC)] != MAGIC:
        raise _Unreadable("not a dpx envelope")
    version, id_length = data[4], data[5]
    if version != VERSION:
        raise _Unreadable(f"unknown envelope version {version}")
    start = len(MAGIC) + 2
    id_end = start + id_length
    wrapped_end = id_end + _NONCE_BYTES + _WRAPPED_KEY_BYTES
    header_end = wrapped_end + _NONCE_BYTES
    if len(data) < header_end + _TAG_BYTES:
        raise _Unreadable("truncated")
    encoded_id = data[start:id_end]
    if not _KEK_ID.fullmatch(encoded_id):
        raise _Unreadable("malformed KEK id")
    return _Envelope(
        kek_id=encoded_id.decode("ascii"),
        wrap_nonce=data[id_end : id_end + _NONCE_BYTES],
        wrapped_key=data[id_end + _NONCE_BYTES : wrapped_end],
        data_nonce=data[wrapped_end:header_end],
        ciphertext=data[header_end:],
    )


def _unwrap(
    keyring: Keyring, blob: bytes, *, dataset: str, batch_id: str
) -> tuple[_Envelope, bytes]:
    """Parse the blob and unwrap its data key, authenticating the wrapping."""
    failure = _failure(dataset, batch_id)
    try:
        envelope = _parse(blob)
    except _Unreadable as exc:
        raise IntegrityError(f"{failure} ({exc})") from None
    try:
        data_key = keyring.unwrap(
            envelope.kek_id,
            envelope.wrap_nonce,
            envelope.wrapped_key,
            _wrap_associated_data(envelope.kek_id, dataset, batch_id),
        )
    except UnknownKey:
        raise UnknownKey(
            f"{failure}: it is sealed under key-encryption key {envelope.kek_id}, "
            "which the keyring does not hold"
        ) from None
    except InvalidTag:
        raise IntegrityError(failure) from None
    if len(data_key) != _DATA_KEY_BYTES:
        raise IntegrityError(failure)
    return envelope, data_key
