"""API tokens: how they look, and the hash under which they are stored.

A token is shown once, when it is issued; the service stores only its SHA-256 hash and
a short prefix for display. A plain (unsalted, fast) hash is right here, unlike for
passwords: a token holds 256 random bits, so there is nothing to guess from its hash.
"""

from __future__ import annotations

import re
import secrets
from typing import Literal

from cryptography.hazmat.primitives import hashes

Role = Literal["partner", "owner", "dpo"]

TOKEN_PREFIX = "dpx_"  # noqa: S105 - the public mark of every token, not a secret
PREFIX_LENGTH = 10
# token_urlsafe(32): 32 random bytes as unpadded URL-safe base64, always 43 characters.
_TOKEN = re.compile(r"dpx_[A-Za-z0-9_-]{43}")


def new_token() -> str:
    """A fresh bearer token: "dpx_" and 256 random bits in URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored and looked up."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(token.encode("utf-8", "surrogatepass"))
    return digest.finalize().hex()


def token_prefix(token: str) -> str:
    """The first 10 characters of a token, enough to tell tokens apart in a listing and
    far too few to use one."""
    return token[:PREFIX_LENGTH]


def looks_like_token(value: str) -> bool:
    """True if `value` has the shape of a dpx token; a cheap check before any look-up.

    The pattern is fixed and linear, so checking a hostile header costs nothing.
    """
    return len(value) == len(TOKEN_PREFIX) + 43 and _TOKEN.fullmatch(value) is not None
