"""Keys are used inside `service.crypto`, never handed out: no getter returns a key's bytes,
and no module outside the package reaches for one.

The scan reads every module of `service/` outside `service/crypto/` and fails on any use of
a key getter or of the keyring's private key fields, so a getter brought back, or code that
reaches around the operations, fails here before review.
"""

from __future__ import annotations

import ast
import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.crypto.envelope import open_sealed, seal
from service.crypto.keyring import Keyring
from tests.crypto.key_bytes import all_key_bytes

SERVICE = Path(__file__).resolve().parents[2] / "service"
CRYPTO = SERVICE / "crypto"

# Key getters that once existed, and the fields that hold key bytes.
KEY_ACCESS = {
    "kek",
    "audit_key",
    "signing_private_key",
    "private_bytes",
    "private_bytes_raw",
    "_keks",
    "_signing_keys",
    "_audit_key",
}
# `derive` returns a purpose-bound subkey; only Flask's cookie signer needs one.
DERIVE_ALLOWED = {SERVICE / "auth" / "sessions.py"}


def _modules_outside_crypto() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if CRYPTO not in p.parents)


def _key_accesses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Attribute):
            if node.attr in KEY_ACCESS or (node.attr == "derive" and path not in DERIVE_ALLOWED):
                found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def test_no_module_outside_crypto_touches_key_bytes() -> None:
    modules = _modules_outside_crypto()
    assert len(modules) > 40  # the scan really reads the service
    found = [access for path in modules for access in _key_accesses(path)]
    assert found == []


def test_the_scan_catches_a_getter_call_and_a_stray_derive(tmp_path: Path) -> None:
    offender = tmp_path / "probe.py"
    offender.write_text(
        "def leak(keyring):\n    keyring.derive('x')\n    return keyring._keks[0].key\n",
        encoding="utf-8",
    )
    assert _key_accesses(offender) == ["probe.py:2: .derive", "probe.py:3: ._keks"]


@pytest.mark.parametrize("getter", ["kek", "audit_key", "signing_private_key"])
def test_the_keyring_has_no_key_getters(getter: str) -> None:
    assert not hasattr(Keyring, getter)


def test_operations_give_results_never_keys(tmp_path: Path) -> None:
    keyring = Keyring.create(tmp_path / "keyring.json")
    keys = all_key_bytes(keyring)
    key_id, signature = keyring.sign(b"release")
    outputs = [
        signature,
        keyring.audit_mac(b"entry"),
        keyring.mac("purpose", b"data"),
        keyring.derive("purpose"),
        keyring.wrap(keyring.primary_kek_id, bytes(12), bytes(32), b"context"),
        seal(keyring, b"cells", dataset="d", batch_id="b").blob,
    ]
    assert not any(key in output for key in keys for output in outputs)
    assert keyring.derive("one purpose") != keyring.derive("another purpose")
    assert keyring.mac("purpose", b"data") != keyring.audit_mac(b"data")
    # The operations still do their work: a signature verifies, a seal opens.
    public = next(k for k in keyring.public_signing_keys() if k["key_id"] == key_id)
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public["public_key"])).verify(
        signature, b"release"
    )
    blob = seal(keyring, b"cells", dataset="d", batch_id="b").blob
    assert open_sealed(keyring, blob, dataset="d", batch_id="b") == b"cells"
