"""Ed25519 signatures over the canonical JSON of a release.

What a signature covers is defined once, in the partner client's `dpx_client.signature`,
which the service installs: the service signs exactly the bytes a partner's
`verify_signature` checks, offline, with `cryptography` alone and the keys of
`GET /v1/signing-keys`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dpx_client.signature import ALGORITHM, canonical_json, signed_bytes, verify_signature

if TYPE_CHECKING:
    from service.crypto.keyring import Keyring

__all__ = ["KEY_CHECK_SECONDS", "canonical_json", "sign_document", "verify_signature"]

KEY_CHECK_SECONDS = 1.0
"""How stale a process's view of the current signing key may be: after `dpx
rotate-signing-key`, every worker signs with the new key within this many seconds."""


def sign_document(keyring: Keyring, document: Mapping[str, Any]) -> dict[str, str]:
    """Sign `document` (its unsigned members ignored) with the keyring's current key.

    Returns the value to store under "signature":
    `{"alg": "Ed25519", "key_id": <signing key id>, "value": <base64 signature>}`.
    A key rotated by another process is used within `KEY_CHECK_SECONDS`.
    """
    keyring.refresh_at_most_every(KEY_CHECK_SECONDS)
    key_id, signature = keyring.sign(signed_bytes(document))
    return {
        "alg": ALGORITHM,
        "key_id": key_id,
        "value": base64.b64encode(signature).decode("ascii"),
    }
