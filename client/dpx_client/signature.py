"""What a release signature covers, and its offline check: the one definition that the dpx
service's signer and every partner's verifier share.

A release is signed with Ed25519 over its canonical JSON (keys sorted, separators ``,`` and
``:``, UTF-8) without the members that describe one response rather than the release:
``signature`` itself, ``cached`` (whether this answer was a repeat) and ``budget`` (what the
caller has left now). So a stored release verifies the same on every read. The check needs
``cryptography`` alone and the public keys of ``GET /v1/signing-keys``: nothing of the
service is trusted but those keys.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ALGORITHM = "Ed25519"
SIGNATURE_FIELD = "signature"
# Members a server adds to a release for one caller, after signing it.
UNSIGNED_FIELDS = frozenset({SIGNATURE_FIELD, "cached", "budget"})


def canonical_json(obj: object) -> bytes:
    """The one byte string that signer and verifier both derive from ``obj``.

    Keys sorted, separators ``,`` and ``:``, no insignificant whitespace, non-ASCII kept as
    UTF-8. NaN and infinities are refused (``ValueError``): they have no JSON form a
    partner's parser would read back identically.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def signed_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes a release signature covers: the canonical JSON of ``document`` without
    its unsigned members (``signature``, ``cached``, ``budget``)."""
    return canonical_json(
        {name: value for name, value in document.items() if name not in UNSIGNED_FIELDS}
    )


def verify_signature(document: Mapping[str, Any], keys: Sequence[Any]) -> bool:
    """True only if ``document["signature"]`` is a valid Ed25519 signature, by the key it
    names among ``keys`` (as ``GET /v1/signing-keys`` lists them, current or retired), over
    :func:`signed_bytes` of the document.

    Malformed input of any kind (no signature, an unknown key id, bad base64, a document
    with no canonical JSON form) is False, never an exception.
    """
    signature = document.get(SIGNATURE_FIELD)
    if not isinstance(signature, Mapping) or signature.get("alg") != ALGORITHM:
        return False
    key_id = signature.get("key_id")
    value = signature.get("value")
    if not isinstance(key_id, str) or not isinstance(value, str):
        return False
    named = [
        key
        for key in keys
        if isinstance(key, Mapping) and key.get("key_id") == key_id and key.get("alg") == ALGORITHM
    ]
    if len(named) != 1 or not isinstance(named[0].get("public_key"), str):
        return False
    try:
        public_key = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(named[0]["public_key"], validate=True)
        )
        public_key.verify(base64.b64decode(value, validate=True), signed_bytes(document))
    # binascii.Error is a ValueError; TypeError and ValueError also cover documents that
    # have no canonical JSON form (a NaN, a set, a cycle).
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
