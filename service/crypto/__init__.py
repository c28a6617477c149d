"""Cryptography of dpx: the keyring, envelope encryption of batches, release signatures
and API token hashing, built from `cryptography` primitives only."""

from service.crypto.envelope import Sealed, open_sealed, reencrypt, rewrap, seal
from service.crypto.errors import CryptoError, IntegrityError, KeyringError, UnknownKey
from service.crypto.keyring import Keyring
from service.crypto.signing import canonical_json, sign_document, verify_signature
from service.crypto.tokens import Role, looks_like_token, new_token, token_hash, token_prefix

__all__ = [
    "CryptoError",
    "IntegrityError",
    "Keyring",
    "KeyringError",
    "Role",
    "Sealed",
    "UnknownKey",
    "canonical_json",
    "looks_like_token",
    "new_token",
    "open_sealed",
    "reencrypt",
    "rewrap",
    "seal",
    "sign_document",
    "token_hash",
    "token_prefix",
    "verify_signature",
]
