"""Errors raised when an uploaded batch cannot be accepted.

A rejected batch stores nothing; the error lists what was wrong, row by row, so the data owner
can fix the file. Messages may quote a bad dimension or measure value (those are public-domain
or numeric fields) but never a ``person`` pseudonym: pseudonyms identify the privacy unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_LISTED_ERRORS = 100
"""At most this many row errors are listed; ``InvalidBatch.total`` still counts them all."""

_SHOWN_IN_MESSAGE = 5


@dataclass(frozen=True)
class RowError:
    """One problem in a batch.

    ``row`` is the 1-based data row (the CSV header or JSON array brackets excluded), or 0 for
    a problem with the file as a whole; ``column`` names the offending column when there is one.
    """

    row: int
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = "file" if self.row == 0 else f"row {self.row}"
        if self.column is not None:
            where += f" column {self.column}"
        return f"{where}: {self.reason}"


class InvalidBatch(ValueError):
    """A batch was rejected; nothing of it is stored.

    ``errors`` lists at most ``MAX_LISTED_ERRORS`` problems in file order. ``total`` counts the
    offending data rows in all, or the file-level problems when the file as a whole is rejected.
    """

    def __init__(self, errors: Sequence[RowError], total: int | None = None) -> None:
        self.errors: list[RowError] = list(errors[:MAX_LISTED_ERRORS])
        self.total: int = len(errors) if total is None else total
        super().__init__(self._summary())

    @property
    def file_level(self) -> bool:
        """True when the file as a whole was rejected before its rows were checked."""
        return all(error.row == 0 for error in self.errors)

    def _summary(self) -> str:
        shown_errors = self.errors[:_SHOWN_IN_MESSAGE]
        shown = "; ".join(str(error) for error in shown_errors)
        if self.file_level:
            more = "; …" if len(self.errors) > len(shown_errors) else ""
            return f"batch rejected: {shown}{more}"
        unlisted_rows = self.total > len({error.row for error in shown_errors})
        more = "; …" if len(self.errors) > len(shown_errors) or unlisted_rows else ""
        noun = "row" if self.total == 1 else "rows"
        return f"{self.total} {noun} rejected: {shown}{more}"


class DuplicateBatch(Exception):
    """The upload is byte for byte a batch already stored for the dataset; storing it again
    would count every contact in it twice. ``batch_id`` names the stored batch."""

    def __init__(self, dataset: str, batch_id: str) -> None:
        self.dataset = dataset
        self.batch_id = batch_id
        super().__init__(
            f"this upload is identical to batch {batch_id} of {dataset}, which is stored "
            "already; upload it with ?allow_duplicate=true to store it a second time"
        )


class UploadConflict(Exception):
    """The upload's Idempotency-Key was used before for an upload with other content."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(
            f"this Idempotency-Key was already used for another upload to {dataset}; "
            "use a new key for new content"
        )


class BoundsChanged(Exception):
    """The dataset's bounds changed (a policy reload or a start with other policies) after
    this upload was truncated under the previous ones; nothing was stored, and sending it
    again truncates it under the bounds in force."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(
            f"the bounds in force for {dataset} are not the ones this upload was truncated "
            "under (policies were reloaded, or this process runs others); nothing was stored, "
            "send it again"
        )
