"""Write transactions commit all or nothing, and run after-commit hooks only on success."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.database.engine import Database
from service.database.migrate import upgrade
from service.database.schema import tokens
from tests.conftest import BOTH_BACKENDS


def _row(token_id: str) -> dict[str, object]:
    return {
        "id": token_id,
        "token_hash": token_id.ljust(64, "0"),
        "prefix": "p",
        "role": "dpo",
        "subject": None,
        "created_at": datetime.now(UTC),
    }


@BOTH_BACKENDS
def test_failed_write_leaves_nothing_and_runs_no_hooks(database_url: str) -> None:
    database = Database(database_url)
    upgrade(database)
    ran: list[str] = []
    with pytest.raises(RuntimeError), database.write() as conn:
        conn.execute(tokens.insert().values(**_row("tok_a")))
        conn.info["after_commit"].append(lambda: ran.append("a"))
        raise RuntimeError("boom")
    with database.write() as conn:
        conn.execute(tokens.insert().values(**_row("tok_b")))
        conn.info["after_commit"].append(lambda: ran.append("b"))
    with database.read() as conn:
        ids = [r.id for r in conn.execute(select(tokens.c.id))]
        count = conn.execute(select(func.count()).select_from(tokens)).scalar_one()
    assert ids == ["tok_b"] and count == 1
    assert ran == ["b"]
    database.dispose()


def test_sqlite_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with database.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    database.dispose()
