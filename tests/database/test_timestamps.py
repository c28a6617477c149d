"""Every timestamp read back (or typed without a zone) is taken as UTC, and compared in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from service.database.timestamps import as_utc


def test_a_naive_time_is_taken_as_utc_not_local_time() -> None:
    assert as_utc(datetime(2026, 1, 31, 12, 30)) == datetime(2026, 1, 31, 12, 30, tzinfo=UTC)
    assert as_utc(datetime(2026, 1, 31, 12, 30)).tzinfo is UTC


def test_an_aware_time_keeps_its_instant_and_is_shown_in_utc() -> None:
    paris = datetime(2026, 1, 31, 13, 30, tzinfo=timezone(timedelta(hours=1)))
    converted = as_utc(paris)
    assert converted == paris
    assert converted.tzinfo is UTC and converted.hour == 12
    assert converted.isoformat() == "2026-01-31T12:30:00+00:00"


def test_a_utc_time_is_unchanged() -> None:
    at = datetime(2026, 1, 31, 12, 30, 5, 123456, tzinfo=UTC)
    assert as_utc(at) == at and as_utc(at).isoformat() == at.isoformat()
