"""The ``Idempotency-Key`` header of requests that spend budget or store data: how the
OpenAPI document describes it and the one rule every view reads it by."""

from __future__ import annotations

from typing import Any

from flask import request

from service.dp.errors import InvalidQuery

HEADER = "Idempotency-Key"
MAX_LENGTH = 200  # the width of the idempotency_key columns


def parameter(description: str) -> dict[str, Any]:
    """The OpenAPI header parameter, with what a retry of this operation gets."""
    return {
        "in": "header",
        "name": HEADER,
        "required": False,
        "schema": {"type": "string", "maxLength": MAX_LENGTH},
        "description": description,
        "example": "idem_3q2Xc9vA0kP1mB7w",
    }


def idempotency_key() -> str | None:
    """The request's key, or None without one; `InvalidQuery` for an unusable key."""
    key = request.headers.get(HEADER) or None
    if key is not None and (len(key) > MAX_LENGTH or not key.isprintable()):
        raise InvalidQuery(HEADER, f"must be at most {MAX_LENGTH} printable characters")
    return key
