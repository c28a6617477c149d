"""API tokens: unguessable, recognisable by shape, stored only as a stable hash."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.crypto.tokens import looks_like_token, new_token, token_hash, token_prefix


def test_new_tokens_have_the_dpx_shape() -> None:
    token = new_token()

    assert token.startswith("dpx_")
    assert len(token) == 47
    assert looks_like_token(token)


def test_new_tokens_are_unique() -> None:
    tokens = {new_token() for _ in range(2000)}

    assert len(tokens) == 2000
    assert len({token_prefix(token) for token in tokens}) > 1900


def test_token_hash_is_the_stable_sha256_hex_digest() -> None:
    token = "dpx_" + "A" * 43

    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token_hash(token) == token_hash("dpx_" + "A" * 43)
    assert token_hash("dpx_test") == (
        "6b612dcf4bdfed3aeae4f59ab163a248c2d3fa509afd870ff3752e1566ac6604"
    )


def test_different_tokens_hash_differently_and_never_contain_the_token() -> None:
    first, second = new_token(), new_token()

    assert token_hash(first) != token_hash(second)
    assert first[4:] not in token_hash(first)
    assert len(token_hash(first)) == 64


def test_token_prefix_is_the_first_ten_characters() -> None:
    token = new_token()

    assert token_prefix(token) == token[:10]
    assert token_prefix(token).startswith("dpx_")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "dpx_",
        "dpx_" + "A" * 42,
        "dpx_" + "A" * 44,
        "dpy_" + "A" * 43,
        "DPX_" + "A" * 43,
        "dpx_" + "A" * 42 + "=",
        "dpx_" + "A" * 42 + "+",
        "dpx_" + "A" * 42 + "/",
        "dpx_" + "A" * 42 + " ",
        "dpx_" + "A" * 43 + "\n",
        "dpx_" + "A" * 42 + "é",
        "Bearer dpx_" + "A" * 43,
    ],
)
def test_values_of_the_wrong_shape_are_not_tokens(value: str) -> None:
    assert not looks_like_token(value)


@given(st.text(max_size=100))
def test_looks_like_token_accepts_exactly_the_token_shape(value: str) -> None:
    body = value[4:]
    expected = (
        value.startswith("dpx_")
        and len(body) == 43
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in body)
    )

    assert looks_like_token(value) is expected


@given(st.binary(min_size=32, max_size=32))
def test_every_32_byte_token_body_looks_like_a_token(random_bytes: bytes) -> None:
    body = base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode()

    assert looks_like_token("dpx_" + body)
