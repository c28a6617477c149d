"""Opaque page cursors for list endpoints, and the ``Link: <…>; rel="next"`` header.

A cursor names where a page ended in a stable order (a release's creation time and id; an
audit entry's sequence number). Callers pass it back unchanged as ``?cursor=``; its form is
not part of the API and a cursor that does not decode is a 422. A forged cursor gains
nothing: a listing is filtered to what the caller may see before the cursor applies.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from flask import request, url_for
from marshmallow import ValidationError, fields

from service.exchange import Position
from service.json_input import load_json

_RELEASES, _AUDIT = "r", "a"
MAX_SEQ = 2**63 - 1
"""The largest audit sequence number a database column can hold (signed 64 bits)."""


def _encode(parts: list[Any]) -> str:
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        # A cursor is a flat list: deeper nesting is a forgery (and deep enough, a crash).
        parts = load_json(raw, max_depth=1)
    except (binascii.Error, ValueError):
        raise ValidationError("not a cursor this service gave out") from None
    if not isinstance(parts, list) or not parts:
        raise ValidationError("not a cursor this service gave out")
    return parts


def release_cursor(position: Position | None) -> str | None:
    if position is None:
        return None
    return _encode([_RELEASES, position.created_at.isoformat(), position.release_id])


def audit_cursor(seq: int | None) -> str | None:
    return None if seq is None else _encode([_AUDIT, seq])


# The cursors are strings on the wire (and in the OpenAPI document, which maps String
# subclasses to "type: string") but load as what they point at, hence the overrides.


class ReleaseCursor(fields.String):
    """A ``next`` cursor of ``GET /v1/releases``, loaded as a ``Position``."""

    def _deserialize(  # type: ignore[override]
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> Position:
        parts = _decode(super()._deserialize(value, attr, data, **kwargs))
        try:
            kind, created, release_id = parts
            if kind != _RELEASES or not isinstance(release_id, str):
                raise ValueError
            at = datetime.fromisoformat(created)
            if at.tzinfo is None:
                raise ValueError
            at = at.astimezone(UTC)  # a forged time at the ends of the calendar overflows
        except (TypeError, ValueError, OverflowError):
            raise ValidationError("not a cursor of the release list") from None
        return Position(at, release_id)


class AuditCursor(fields.String):
    """A ``next`` cursor of ``GET /v1/audit``, loaded as the sequence number to follow."""

    def _deserialize(  # type: ignore[override]
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> int:
        parts = _decode(super()._deserialize(value, attr, data, **kwargs))
        if (
            len(parts) != 2
            or parts[0] != _AUDIT
            or type(parts[1]) is not int
            or not 0 <= parts[1] <= MAX_SEQ
        ):
            raise ValidationError("not a cursor of the audit log")
        seq: int = parts[1]
        return seq


def next_link(cursor: str | None) -> dict[str, str]:
    """The ``Link: <this listing from cursor>; rel="next"`` header, when there is a next page."""
    if cursor is None:
        return {}
    arguments: dict[str, Any] = {
        k: v for k, v in request.args.items() if k not in ("cursor", "after")
    }
    target = url_for(request.endpoint or "", **arguments, cursor=cursor)
    return {"Link": f'<{target}>; rel="next"'}
