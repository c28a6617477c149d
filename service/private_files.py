"""Files at rest are private to the service's user.

The data directory holds the SQLite database with its WAL and SHM files, the audit
checkpoints, the keyring, metric files and pidfiles: contact aggregates, budgets and keys.
At start the process umask becomes 077, so everything dpx (or SQLite, or gunicorn)
creates from then on is 0600 (directories 0700), and what an earlier, looser run left in
the data directory is tightened to the same modes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def make_private(data_dir: Path) -> None:
    """Set the umask to 077, create ``data_dir`` 0700, and make everything in it private.

    Symbolic links are left alone (their targets may be anywhere); every directory below
    ``data_dir`` becomes 0700 and every other file 0600.
    """
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    _tighten(data_dir, DIRECTORY_MODE)
    for root, directories, files in os.walk(data_dir):
        for name in directories:
            _tighten(Path(root) / name, DIRECTORY_MODE)
        for name in files:
            _tighten(Path(root) / name, FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    try:
        current = path.lstat()
    except FileNotFoundError:  # removed meanwhile, e.g. a SQLite journal
        return
    if stat.S_ISLNK(current.st_mode) or stat.S_IMODE(current.st_mode) == mode:
        return
    try:
        path.chmod(mode)
    except FileNotFoundError:
        return
