"""Write transactions commit all or nothing, and run after-commit hooks only on success."""

from __future__ import annotations

import re
import sqlite3
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


@BOTH_BACKENDS
def test_a_snapshot_sees_no_commit_made_after_it_began(database_url: str) -> None:
    database = Database(database_url)
    upgrade(database)
    with database.write() as conn:
        conn.execute(tokens.insert().values(**_row("tok_a")))
    count = select(func.count()).select_from(tokens)
    with database.snapshot() as conn:
        assert conn.execute(count).scalar_one() == 1
        with database.write() as other:
            other.execute(tokens.insert().values(**_row("tok_b")))
        assert conn.execute(count).scalar_one() == 1
    with database.read() as conn:
        assert conn.execute(count).scalar_one() == 2
    database.dispose()


def test_sqlite_reads_see_one_snapshot_and_writes_hold_the_lock(tmp_path: Path) -> None:
    """On SQLite every read and write transaction is a real one: a read sees the database
    as it was at its first statement, and a write holds the write lock from its start."""
    path = tmp_path / "x.sqlite3"
    database = Database(f"sqlite:///{path}")
    upgrade(database)
    count = select(func.count()).select_from(tokens)
    outsider = sqlite3.connect(path, timeout=0, isolation_level=None)
    with database.read() as conn:
        assert conn.execute(count).scalar_one() == 0
        outsider.execute(
            "INSERT INTO tokens (id, token_hash, prefix, role, created_at) "
            "VALUES ('tok_x', 'h', 'p', 'dpo', '2026-01-01')"
        )
        assert conn.execute(count).scalar_one() == 0
    with database.write() as conn:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            outsider.execute("BEGIN IMMEDIATE")
        conn.execute(tokens.insert().values(**_row("tok_a")))
    with database.read() as conn:
        assert conn.execute(count).scalar_one() == 2
    outsider.close()
    database.dispose()


def test_only_the_database_module_opens_or_ends_transactions() -> None:
    """On SQLite a transaction begins only where ``Database`` emits BEGIN: a connection
    taken from the engine elsewhere, or a commit inside ``write()``, would run the following
    statements one by one, each committed on its own."""
    service = Path(__file__).resolve().parents[2] / "service"
    pattern = re.compile(r"\.(commit|rollback)\(\)|\bengine\.(connect|begin)\(")
    offenders = [
        f"{path.relative_to(service.parent)}:{number}"
        for path in service.rglob("*.py")
        if path != service / "database" / "engine.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert offenders == []
