"""Ed25519 signatures over the canonical JSON of a release.

A partner verifies a release offline, with `cryptography` alone and the public keys of
`GET /v1/signing-keys`: `verify_document` is exactly that check, and uses nothing but the
published keys.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if TYPE_CHECKING:
    from service.crypto.keyring import Keyring

SIGNATURE_FIELD = "signature"
ALGORITHM = "Ed25519"
KEY_CHECK_SECONDS = 1.0
"""How stale a process's view of the current signing key may be: after `dpx
rotate-signing-key`, every worker signs with the new key within this many seconds."""


def canonical_json(obj: object) -> bytes:
    """The one byte string that signer and verifier both derive from `obj`.

    Keys sorted, separators `,` and `:`, no insignificant whitespace, non-ASCII kept as
    UTF-8. NaN and infinities are refused (`ValueError`): they have no JSON form a partner's
    parser would read back identically.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _signed_bytes(document: Mapping[str, Any]) -> bytes:
    return canonical_json({k: v for k, v in document.items() if k != SIGNATURE_FIELD})


def sign_document(keyring: Keyring, document: Mapping[str, Any]) -> dict[str, str]:
    """Sign `document` (any "signature" field ignored) with the keyring's current key.

    Returns the value to store under "signature":
    `{"alg": "Ed25519", "key_id": <signing key id>, "value": <base64 signature>}`.
    A key rotated by another process is used within `KEY_CHECK_SECONDS`.
    """
    keyring.refresh_at_most_every(KEY_CHECK_SECONDS)
    key_id = keyring.signing_key_id
    signature = keyring.signing_private_key(key_id).sign(_signed_bytes(document))
    return {
        "alg": ALGORITHM,
        "key_id": key_id,
        "value": base64.b64encode(signature).decode("ascii"),
    }


def verify_document(
    document_with_signature: Mapping[str, Any], public_keys: list[dict[str, Any]]
) -> bool:
    """True only if the document's "signature" is a valid Ed25519 signature, by the
    published key it names (current or retired), over the rest of the document.

    Any malformed input (no signature, unknown key id, bad base64, a document that has no
    canonical JSON form) is False, never an exception.
    """
    signature = document_with_signature.get(SIGNATURE_FIELD)
    if not isinstance(signature, Mapping) or signature.get("alg") != ALGORITHM:
        return False
    key_id = signature.get("key_id")
    value = signature.get("value")
    if not isinstance(key_id, str) or not isinstance(value, str):
        return False
    matching = [
        key
        for key in public_keys
        if isinstance(key, Mapping) and key.get("key_id") == key_id and key.get("alg") == ALGORITHM
    ]
    if len(matching) != 1 or not isinstance(matching[0].get("public_key"), str):
        return False
    try:
        public_key = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(matching[0]["public_key"], validate=True)
        )
        public_key.verify(
            base64.b64decode(value, validate=True), _signed_bytes(document_with_signature)
        )
    # binascii.Error is a ValueError; TypeError and ValueError also cover documents that
    # have no canonical JSON form (a NaN, a set, a cycle).
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
