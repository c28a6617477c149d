"""The client's offline check agrees with the service's signer: what dpx signs verifies with
``cryptography`` alone and the published keys; any change to a signed member does not."""

from __future__ import annotations

from typing import Any

import pytest
from dpx_client import Release, verify_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from service.crypto.keyring import Keyring
from service.crypto.signing import sign_document

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
documents = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in ("signature", "cached", "budget")),
    json_values,
    min_size=1,
    max_size=5,
)


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Keyring:
    return Keyring.create(tmp_path_factory.mktemp("keys") / "keyring.json")


def _signed(keyring: Keyring, document: dict[str, Any]) -> dict[str, Any]:
    return dict(document, signature=sign_document(keyring, document))


@settings(max_examples=60, deadline=None)
@given(document=documents)
def test_what_dpx_signs_verifies_and_any_change_does_not(
    keyring: Keyring, document: dict[str, Any]
) -> None:
    keys = keyring.public_signing_keys()
    signed = _signed(keyring, document)
    assert verify_signature(signed, keys)
    # The per-caller extras a server adds after signing are outside the signature.
    assert verify_signature(dict(signed, cached=True, budget={"partner_remaining": {}}), keys)
    name = next(iter(document))
    assert not verify_signature(dict(signed, **{name: ["changed", document[name]]}), keys)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("signature"),
        lambda d: d["signature"].update(key_id="sig-unknown"),
        lambda d: d["signature"].update(alg="RS256"),
        lambda d: d["signature"].update(value="not base64!"),
        lambda d: d["signature"].update(value=d["signature"]["value"][::-1]),
        lambda d: d.update(signature="abc"),
    ],
)
def test_malformed_signatures_are_false_never_an_error(keyring: Keyring, damage: Any) -> None:
    signed = _signed(keyring, {"release_id": "rel_1", "rows": [{"value": 3, "ci": [1, 5]}]})
    damage(signed)
    assert not verify_signature(signed, keyring.public_signing_keys())
    assert not verify_signature(signed, [])


def test_a_release_wrapper_verifies_like_its_document(keyring: Keyring) -> None:
    document = _signed(
        keyring,
        {
            "release_id": "rel_2",
            "query": {"group_by": ["month"]},
            "rows": [{"month": "2024-01", "value": 7, "ci": [0, 20]}],
        },
    )
    release = Release(document)
    assert verify_signature(release.document, keyring.public_signing_keys())
    assert (release.values, release.group_by, release.cached) == ([7], ["month"], False)
