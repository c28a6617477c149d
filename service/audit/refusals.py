"""Refused queries in the audit log, folded so that a flood cannot bloat it.

The first refusal of a kind (same caller, dataset, reason and detail) in a minute is
appended at once as a ``query.refuse`` entry. Identical refusals in the rest of that
minute are only counted; once the minute is over, one more ``query.refuse`` entry
records how many there were (``repeated``) and in which minute. A flood of identical
refusals thus costs at most two entries a minute in each worker process, and no
refusal goes unrecorded. Counts not yet written when a worker stops are written by
``flush`` (gunicorn's ``worker_exit``); a worker that is killed loses them, never the
first entry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from service.audit.log import AuditLog
from service.database.engine import Database


@dataclass(frozen=True)
class Refusal:
    actor: str
    dataset: str
    reason: str
    detail: str


class RefusalLog:
    """Appends refusals to the audit log, one entry per kind and minute plus a count."""

    def __init__(
        self, database: Database, audit: AuditLog, clock: Callable[[], float] = time.time
    ) -> None:
        self.database = database
        self.audit = audit
        self.clock = clock
        self._lock = threading.Lock()
        self._minute: dict[Refusal, int] = {}
        self._repeats: dict[Refusal, int] = {}

    def record(self, refusal: Refusal) -> None:
        """Audit ``refusal``: at once if it is the first of its kind this minute."""
        minute = int(self.clock() // 60)
        with self._lock:
            ended = self._take_ended(minute)
            first = self._minute.get(refusal) != minute
            if first:
                self._minute[refusal] = minute
            else:
                self._repeats[refusal] = self._repeats.get(refusal, 0) + 1
        self._write(ended, refusal if first else None)

    def flush(self) -> None:
        """Write the counts of every minute so far, ended or not (before the process stops)."""
        with self._lock:
            ended = self._take_ended(None)
        self._write(ended, None)

    def _take_ended(self, minute: int | None) -> list[tuple[Refusal, int, int]]:
        ended = [
            (refusal, self._minute[refusal], count)
            for refusal, count in self._repeats.items()
            if minute is None or self._minute[refusal] < minute
        ]
        for refusal, _, _ in ended:
            del self._repeats[refusal]
        for refusal in [r for r, m in self._minute.items() if minute is not None and m < minute]:
            del self._minute[refusal]
        return ended

    def _write(self, ended: list[tuple[Refusal, int, int]], first: Refusal | None) -> None:
        if not ended and first is None:
            return
        with self.database.write() as conn:
            for refusal, minute, count in ended:
                at = datetime.fromtimestamp(minute * 60, UTC).isoformat(timespec="minutes")
                self.audit.append(
                    conn,
                    actor=refusal.actor,
                    action="query.refuse",
                    dataset=refusal.dataset,
                    details={
                        "reason": refusal.reason,
                        "detail": refusal.detail,
                        "repeated": count,
                        "minute": at.replace("+00:00", "Z"),
                    },
                )
            if first is not None:
                self.audit.append(
                    conn,
                    actor=first.actor,
                    action="query.refuse",
                    dataset=first.dataset,
                    details={"reason": first.reason, "detail": first.detail},
                )
