"""A real deployment served by a real gunicorn (master plus workers) in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).parent / "gunicorn"


def deploy(root: Path, policy_dir: Path) -> Settings:
    """An initialised deployment under ``root``: keyring (0600), migrated SQLite database."""
    data_dir = root / "var"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'dpx.sqlite3'}",
                        keyring_path=data_dir / "keyring.json", policy_dir=policy_dir)
    Keyring.create(settings.keyring_path)
    database = Database(settings.database_url)
    upgrade(database)
    database.dispose()
    return settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LiveServer:
    """A gunicorn master serving the app; its standard error is kept in ``log_path``."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def hang_up(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def wait_for_log(self, needle: str, *, times: int = 1, timeout: float = 30.0) -> str:
        """The log once ``needle`` appears in it ``times`` times."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if text.count(needle) >= times:
                return text
            time.sleep(0.2)
        raise AssertionError(f"{needle!r} not logged {times}x in {timeout}s:\n{self.log_text()}")


@contextmanager
def serve(settings: Settings, *, workers: int = 2) -> Iterator[LiveServer]:
    """Run ``gunicorn -c gunicorn.conf.py service.wsgi:app`` as scripts/run does."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("DPX_", "PROMETHEUS_"))}
    env.update({
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "DPX_WORKERS": str(workers),
        "DPX_BIND": f"127.0.0.1:{port}",
    })
    log_path = settings.data_dir / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "--config", str(ROOT / "gunicorn.conf.py"), "service.wsgi:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(server: LiveServer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{server.log_text()}")
        try:
            if requests.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gunicorn not ready within {timeout}s:\n{server.log_text()}")
