"""Domain errors of the DP engine, translated to problem+json once, in the HTTP layer."""

from __future__ import annotations


class InvalidQuery(ValueError):
    """A query that cannot be answered as asked: names the request field and what would be right.

    ``str(error)`` is ``"field: reason"``, e.g.
    ``filters.month: '2025-13' is not in 2024-01..2024-12``. Reasons only ever echo what the
    caller sent or what the public policy declares, never data values.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
