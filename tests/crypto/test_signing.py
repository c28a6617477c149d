"""Release signatures: canonical JSON, Ed25519 over it, and offline verification by a
partner holding only the published public keys."""

from __future__ import annotations

import base64
import copy
import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dpx_client.signature
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.crypto import signing
from service.crypto.keyring import Keyring
from service.crypto.signing import (
    KEY_CHECK_SECONDS,
    canonical_json,
    sign_document,
    verify_signature,
)

RELEASE: dict[str, Any] = {
    "release_id": "rel_0001",
    "dataset": "uk-helpline-2024",
    "cached": False,
    "query": {"statistic": "count", "group_by": ["month"], "filters": {"channel": ["chat"]}},
    "rows": [{"month": "2024-01", "value": 412, "ci": [352, 472]}],
    "privacy": {"definition": "pure", "epsilon": 0.5, "delta": 0.0},
    "mechanism": {"name": "discrete_laplace", "scale": 20.0, "sensitivity": 10},
    "created_at": "2026-01-05T10:00:00Z",
}


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keyring.json")


def signed(keyring: Keyring, document: dict[str, Any]) -> dict[str, Any]:
    return dict(copy.deepcopy(document), signature=sign_document(keyring, document))


# -- canonical JSON ------------------------------------------------------------------------


def test_canonical_json_of_a_known_document() -> None:
    document = {"b": 1, "a": [1, 2.5, "ü", None], "c": {"z": True, "y": "é\n"}}

    assert canonical_json(document) == (
        b'{"a":[1,2.5,"\xc3\xbc",null],"b":1,"c":{"y":"\xc3\xa9\\n","z":true}}'
    )


def test_canonical_json_is_independent_of_key_order() -> None:
    reordered = dict(reversed(list(RELEASE.items())))

    assert canonical_json(reordered) == canonical_json(RELEASE)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_canonical_json_refuses_values_without_a_json_form(value: float) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json({"value": value})


# -- signing and verifying -----------------------------------------------------------------


def test_a_signed_release_verifies_with_the_published_keys(keyring: Keyring) -> None:
    release = signed(keyring, RELEASE)

    assert release["signature"]["alg"] == "Ed25519"
    assert release["signature"]["key_id"] == keyring.signing_key_id
    assert len(base64.b64decode(release["signature"]["value"], validate=True)) == 64
    assert verify_signature(release, keyring.public_signing_keys())


def test_a_partner_verifies_with_cryptography_alone(keyring: Keyring) -> None:
    release = json.loads(json.dumps(signed(keyring, RELEASE)))
    published = json.loads(json.dumps({"keys": keyring.public_signing_keys()}))

    # What the partner documentation tells a partner to do, written out in full.
    signature = release["signature"]
    (key,) = [k for k in published["keys"] if k["key_id"] == signature["key_id"]]
    public_key = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    signed_part = {k: v for k, v in release.items() if k not in ("signature", "cached", "budget")}
    message = json.dumps(
        signed_part, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    public_key.verify(base64.b64decode(signature["value"]), message)


def test_an_existing_signature_field_is_not_signed(keyring: Keyring) -> None:
    stale = dict(RELEASE, signature={"alg": "Ed25519", "key_id": "sig-00000000", "value": ""})

    assert sign_document(keyring, stale) == sign_document(keyring, RELEASE)


def test_what_describes_one_response_is_outside_the_signature(keyring: Keyring) -> None:
    release = signed(keyring, RELEASE)
    repeat = dict(release, cached=True, budget={"partner_remaining": {"epsilon": 0.5}})

    assert verify_signature(repeat, keyring.public_signing_keys())
    assert sign_document(keyring, repeat) == release["signature"]


def test_the_service_signs_by_the_partner_clients_definition_not_a_copy() -> None:
    assert signing.canonical_json is dpx_client.signature.canonical_json
    assert signing.verify_signature is dpx_client.signature.verify_signature


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        target = document
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return edit


def _delete(name: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        del document[name]

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _set(("rows", 0, "value"), 413),
        _set(("rows", 0, "ci"), [352, 473]),
        _set(("rows", 0, "value"), 412.0),
        _set(("privacy", "epsilon"), 0.05),
        _set(("query", "filters", "channel"), ["phone"]),
        _set(("dataset",), "ie-helpline-2024"),
        _set(("extra",), None),
        _delete("mechanism"),
        _set(("signature", "alg"), "RS256"),
        _set(("signature", "key_id"), "sig-00000000"),
        _set(("signature", "value"), base64.b64encode(bytes(64)).decode()),
        _set(("signature", "value"), "not base64!"),
        _set(("signature",), "Ed25519"),
        _delete("signature"),
    ],
    ids=lambda edit: edit.__qualname__,
)
def test_any_change_breaks_verification(
    keyring: Keyring, edit: Callable[[dict[str, Any]], None]
) -> None:
    release = copy.deepcopy(signed(keyring, RELEASE))

    edit(release)

    assert not verify_signature(release, keyring.public_signing_keys())


def test_a_flipped_signature_bit_breaks_verification(keyring: Keyring) -> None:
    release = signed(keyring, RELEASE)
    raw = bytearray(base64.b64decode(release["signature"]["value"]))

    for offset in range(len(raw)):
        tampered = bytearray(raw)
        tampered[offset] ^= 0x01
        release["signature"]["value"] = base64.b64encode(bytes(tampered)).decode()
        assert not verify_signature(release, keyring.public_signing_keys())


def test_a_release_signed_before_rotation_verifies_with_the_retired_key(
    keyring: Keyring,
) -> None:
    old = keyring.signing_key_id
    before = signed(keyring, RELEASE)

    keyring.rotate_signing_key()
    after = signed(keyring, RELEASE)

    published = keyring.public_signing_keys()
    assert before["signature"]["key_id"] == old
    assert after["signature"]["key_id"] == keyring.signing_key_id != old
    assert verify_signature(before, published)
    assert verify_signature(after, published)


def test_another_keyrings_keys_do_not_verify(keyring: Keyring, tmp_path: Path) -> None:
    stranger = Keyring.create(tmp_path / "stranger.json")
    release = signed(stranger, RELEASE)
    keys = keyring.public_signing_keys()
    # Even under a borrowed key id, the stranger's signature fails against our key.
    release["signature"]["key_id"] = keyring.signing_key_id

    assert not verify_signature(release, keys)
    assert not verify_signature(signed(stranger, RELEASE), keys)


@pytest.mark.parametrize(
    "keys",
    [
        [],
        [{"key_id": "sig-00000000", "alg": "Ed25519", "public_key": "AAAA"}],
        [{"alg": "Ed25519"}],
        ["not a key"],
    ],
)
def test_malformed_published_keys_are_false_not_errors(keyring: Keyring, keys: list[Any]) -> None:
    release = signed(keyring, RELEASE)
    for key in keys:
        if isinstance(key, dict) and "key_id" in key:
            key["key_id"] = keyring.signing_key_id

    assert not verify_signature(release, keys)


def test_a_document_without_canonical_form_is_false(keyring: Keyring) -> None:
    release = signed(keyring, RELEASE)
    release["rows"] = [{"value": math.nan}]

    assert not verify_signature(release, keyring.public_signing_keys())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.dictionaries(st.text(), json_values, max_size=6))
def test_every_json_document_round_trips_through_sign_and_verify(
    keyring: Keyring, document: dict[str, Any]
) -> None:
    release = signed(keyring, document)
    # The signature survives transport as JSON, as a partner receives it.
    received = json.loads(json.dumps(release))

    assert verify_signature(received, keyring.public_signing_keys())


def test_threads_racing_past_a_rotation_all_sign_with_the_new_key(tmp_path: Path) -> None:
    """When another process rotated the signing key, no thread of a worker signs with the
    old one once the check interval has passed, not even one that arrives while another
    thread is still loading the new key."""
    path = tmp_path / "keyring.json"
    Keyring.create(path)
    for _ in range(5):
        worker = Keyring.load(path)
        rotation = Keyring.load(path)
        new_key = rotation.rotate_signing_key()
        rotation.save()
        time.sleep(KEY_CHECK_SECONDS + 0.05)
        assert _keys_signed_by_racing_threads(worker, 16) == {new_key}


def _keys_signed_by_racing_threads(keyring: Keyring, threads: int) -> set[str]:
    barrier = threading.Barrier(threads)
    used: list[str] = []

    def sign() -> None:
        barrier.wait()
        used.append(sign_document(keyring, {"n": 1})["key_id"])

    started = [threading.Thread(target=sign) for _ in range(threads)]
    for thread in started:
        thread.start()
    for thread in started:
        thread.join()
    return set(used)
