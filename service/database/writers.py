"""The queue of SQLite writers: each waits its turn instead of polling for the lock.

SQLite lets one writer in at a time. A writer that finds the lock taken waits in SQLite's
busy handler, which sleeps in steps that grow to 100 ms, so under concurrent charges most of
a writer's wait is sleep after the lock was already free (p95 of 150-200 ms with 8 clients
on 2 workers). Here the threads of one process queue on a lock, and the processes sharing
one database file queue on an exclusive ``flock`` of a file beside it, which wakes the next
writer as soon as it is released. Every ``Database.write`` takes its turn, the ``dpx``
commands' and the migrations included; writers outside dpx's own code (a ``sqlite3``
shell) still meet the busy handler, so correctness never depends on the queue, only the
wait does.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriterQueue:
    """Turns at writing to the SQLite database at ``database_file``, for threads and
    processes alike."""

    def __init__(self, database_file: Path) -> None:
        self.path = database_file.with_name(database_file.name + ".writer-lock")
        # Reentrant: a writer that opens a second write (never done on purpose) keeps its
        # turn, and SQLite then decides as it always did.
        self._lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None
        self._pid = 0

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the writer's turn of this thread, process and database file."""
        with self._lock:
            first = self._depth == 0
            if first:
                fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if first:
                    fcntl.flock(self._descriptor(), fcntl.LOCK_UN)

    def _descriptor(self) -> int:
        # A lock belongs to an open file description, which a forked worker shares with its
        # parent: each process opens the file itself, or parent and child would never
        # exclude each other.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd
