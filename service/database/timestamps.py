"""Timestamps as dpx stores and compares them: aware, in UTC.

Every timestamp dpx writes is UTC. PostgreSQL hands it back with its zone, SQLite without
one (it keeps none), and a time given on the command line without a zone means UTC too:
:func:`as_utc` is the one place that says so.
"""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(at: datetime) -> datetime:
    """``at`` as an aware UTC datetime: a naive one is taken to be UTC, an aware one converted."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
