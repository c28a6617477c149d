"""SQLite writers take turns: threads and processes exclude each other, and the next writer
starts as soon as the one before it is done, not at SQLite's next busy-handler poll."""

from __future__ import annotations

import multiprocessing
import stat
import threading
import time
from pathlib import Path

from service.database.engine import Database
from service.database.writers import WriterQueue

HOLD = 0.3


def _take_turn_when_told(queue: WriterQueue, ready: object, started: object) -> None:
    ready.wait()  # type: ignore[attr-defined]
    with queue.turn():
        started.value = time.time()  # type: ignore[attr-defined]


def test_a_forked_worker_waits_for_its_parents_turn_and_starts_when_it_ends(
    tmp_path: Path,
) -> None:
    database = tmp_path / "dpx.sqlite3"
    queue = WriterQueue(database)
    # The parent opens its lock file before the fork, as gunicorn's master does, and the
    # child inherits the very queue object.
    with queue.turn():
        pass
    context = multiprocessing.get_context("fork")
    ready, started = context.Event(), context.Value("d", 0.0)
    child = context.Process(target=_take_turn_when_told, args=(queue, ready, started))
    child.start()
    with queue.turn():
        ready.set()
        time.sleep(HOLD)
        released = time.time()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert started.value >= released
    # A blocked flock wakes on release; SQLite's busy handler would poll up to 100 ms apart.
    assert started.value - released < 0.25
    assert stat.S_IMODE(queue.path.stat().st_mode) == 0o600


def test_threads_of_one_process_write_one_at_a_time(tmp_path: Path) -> None:
    queue = WriterQueue(tmp_path / "dpx.sqlite3")
    inside, most = 0, 0
    guard = threading.Lock()

    def writer() -> None:
        nonlocal inside, most
        for _ in range(50):
            with queue.turn():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0005)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1


def test_a_write_to_a_sqlite_file_leaves_only_a_private_lock_file_beside_it(
    tmp_path: Path,
) -> None:
    """The one file the queue adds to the data directory is the documented, private one."""
    database = Database(f"sqlite:///{tmp_path / 'dpx.sqlite3'}")
    with database.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    database.dispose()
    lock = tmp_path / "dpx.sqlite3.writer-lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    assert {p.name for p in tmp_path.iterdir()} <= {
        "dpx.sqlite3",
        "dpx.sqlite3-wal",
        "dpx.sqlite3-shm",
        lock.name,
    }
