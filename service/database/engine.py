"""Connections and transactions with the same semantics on SQLite and PostgreSQL.

Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so that a budget check and its
charge can never interleave with another writer; PostgreSQL gets the same effect from row
locks taken by conditional ``UPDATE`` statements inside one transaction.

On SQLite, dpx emits every ``BEGIN`` itself, in ``read``, ``snapshot`` and ``write``: the
sqlite3 module's own transaction handling is off, and SQLAlchemy emits none. (SQLAlchemy's
recipe, a "begin" event listener, makes every statement of the engine dispatch its execution
events, about a quarter of the time of a short read transaction.) A connection taken from
the engine without them, or a transaction committed inside them, runs each later statement
in a transaction of its own: code outside this module never commits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import QueuePool

from service.database.writers import WriterQueue


class Database:
    """An engine plus the kinds of transaction dpx uses: ``read()``, ``snapshot()`` and
    ``write()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.writers: WriterQueue | None = None
        # The SQLite file, created by the first connection; None for a server or in memory.
        self.file: Path | None = None
        if self.is_sqlite:
            if parsed.database and parsed.database != ":memory:":
                self.file = Path(parsed.database)
                self.file.parent.mkdir(parents=True, exist_ok=True)
                self.writers = WriterQueue(self.file)
            # A small pool per process: the PRAGMAs run once per connection, not once per
            # transaction. gunicorn's post_fork hook disposes of the pool a worker inherits.
            self.engine: Engine = create_engine(
                url,
                poolclass=QueuePool,
                pool_size=8,
                max_overflow=8,
                connect_args={"check_same_thread": False},
            )
            event.listen(self.engine, "connect", _sqlite_connect)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)

    @contextmanager
    def read(self, within: Connection | None = None) -> Iterator[Connection]:
        """A transaction for reading: one snapshot on SQLite; on PostgreSQL each statement
        sees what was committed when it started (``snapshot`` when that is not enough).

        With ``within``, the reads join that open transaction instead, so that several
        stores' reads of one request cost one transaction.
        """
        if within is not None:
            yield within
            return
        with self.engine.connect() as conn, self._begin(conn, "BEGIN"):
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction whose statements all see the database at one instant, on
        PostgreSQL too (REPEATABLE READ; SQLite's WAL gives every read transaction that)."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with self._begin(conn, "BEGIN"):
                yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that commits all of its statements durably, or none of them.

        Callables appended to ``conn.info["after_commit"]`` run once the commit succeeded
        (for example the audit checkpoint file, which must never name an entry that
        was rolled back).
        """
        with self._turn(), self.engine.connect() as conn:
            conn.info["after_commit"] = []
            with self._begin(conn, "BEGIN IMMEDIATE"):
                yield conn
            hooks: list[Callable[[], None]] = conn.info.pop("after_commit")
        for hook in hooks:
            hook()

    @contextmanager
    def _begin(self, conn: Connection, sqlite_begin: str) -> Iterator[None]:
        """A transaction on ``conn``, committed when the block ends and rolled back if it
        raises; on SQLite opened with ``sqlite_begin``."""
        with conn.begin():
            if self.is_sqlite:
                conn.exec_driver_sql(sqlite_begin)
            yield

    def _turn(self) -> AbstractContextManager[None]:
        """This writer's turn on SQLite (see :mod:`service.database.writers`); PostgreSQL
        locks rows, not the database, and needs none."""
        return self.writers.turn() if self.writers is not None else nullcontext()

    def is_up(self) -> bool:
        """True when the database accepts a connection and answers a trivial query."""
        try:
            with self.read() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module so BEGIN is ours to emit.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit (above all a budget charge) survives power loss, not just a crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
