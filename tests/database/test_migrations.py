"""`dpx init` applies the Alembic migrations: the same schema on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import inspect

from service.database.engine import Database
from service.database.migrate import is_current, upgrade
from service.database.schema import metadata
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


def test_upgrade_creates_every_table_and_is_idempotent(database_url: str) -> None:
    database = Database(database_url)
    assert not is_current(database)
    upgrade(database)
    upgrade(database)
    assert is_current(database)
    tables = set(inspect(database.engine).get_table_names())
    assert set(metadata.tables) <= tables
    database.dispose()


def test_migrated_columns_match_the_schema_the_code_uses(database_url: str) -> None:
    database = Database(database_url)
    upgrade(database)
    inspector = inspect(database.engine)
    for name, table in metadata.tables.items():
        migrated = {column["name"] for column in inspector.get_columns(name)}
        assert migrated == {column.name for column in table.columns}, name
    database.dispose()
