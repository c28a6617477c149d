"""Apply the Alembic migrations that ship inside the package."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.database.engine import Database

_SCRIPTS = Path(__file__).resolve().parent.parent / "migrations"


class NotInitialised(ValueError):
    """The database holds no dpx schema, or not the one this dpx expects."""


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def upgrade(database: Database) -> None:
    """Bring the schema to the newest revision; running it twice changes nothing."""
    config = _config()
    with database.write() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def is_current(database: Database) -> bool:
    """True when the database carries the newest schema revision."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    with database.read() as conn:
        return MigrationContext.configure(conn).get_current_revision() == head


def require_current(database: Database) -> None:
    """Raise ``NotInitialised`` unless the database carries the newest schema revision.

    An SQLite file that does not exist yet is reported, not created: only ``dpx init``
    creates the database.
    """
    if database.file is not None and not database.file.exists():
        raise NotInitialised(f"no database at {database.file}: run `dpx init` first")
    if not is_current(database):
        raise NotInitialised(
            "the database does not carry this dpx's schema: run `dpx init` to create or upgrade it"
        )
