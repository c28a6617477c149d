"""Real gunicorn servers for the tests: ``gunicorn -c gunicorn.conf.py service.wsgi:app`` in a
subprocess, as scripts/run and the container start it, on a free loopback port.

``serve`` starts one, waits until ``/readyz`` answers (failing with the server's log if it
exits or never gets ready) and stops it afterwards; ``serve_deployment`` starts the
instances of a deployment over the test database. A server is configured by the variables
it is given alone: this process's dpx and Prometheus settings are never passed on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
READY_WITHIN = 60.0
STOP_WITHIN = 30.0


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (several servers run at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def deploy(root: Path, policy_dir: Path) -> Settings:
    """An initialised deployment under ``root``: keyring (0600), migrated SQLite database."""
    data_dir = root / "var"
    data_dir.mkdir()
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'dpx.sqlite3'}",
        keyring_path=data_dir / "keyring.json",
        policy_dir=policy_dir,
    )
    Keyring.create(settings.keyring_path)
    database = Database(settings.database_url)
    upgrade(database)
    database.dispose()
    return settings


def settings_variables(settings: Settings) -> dict[str, str]:
    """The ``DPX_*`` variables that make a server use ``settings``."""
    return {
        "DPX_DATA_DIR": str(settings.data_dir),
        "DPX_DATABASE_URL": settings.database_url,
        "DPX_KEYRING": str(settings.keyring_path),
        "DPX_POLICY_DIR": str(settings.policy_dir),
        "DPX_AUDIT_CHECKPOINT_EVERY": str(settings.audit_checkpoint_every),
    }


def instance_dir(root: Path, index: int) -> Path:
    """A data directory of its own for the ``index``-th instance of a deployment (0: the
    deployment's own): instances share the database and keyring, not their pidfile,
    checkpoints or metric files, as on separate machines."""
    directory = root / f"instance-{index}"
    directory.mkdir(exist_ok=True)
    return directory


def instance_variables(settings: Settings, root: Path, index: int) -> dict[str, str]:
    """``settings_variables`` for the ``index``-th instance: the first keeps the deployment's
    data directory, every other gets its own (``instance_dir``)."""
    variables = settings_variables(settings)
    if index > 0:
        variables["DPX_DATA_DIR"] = str(instance_dir(root, index))
    return variables


def environment(variables: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its ``DPX_*`` and ``PROMETHEUS_*`` variables, plus
    ``variables``: a server or ``dpx`` command started with it is configured by those alone."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DPX_", "PROMETHEUS_"))
    }
    return {**inherited, **variables}


@dataclass
class LiveServer:
    """A gunicorn master serving the app; its standard output and error are kept in ``log_path``."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def hang_up(self) -> None:
        """SIGHUP to the master: reload the policies and replace the workers."""
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
def serve(
    variables: Mapping[str, str],
    *,
    log_path: Path,
    workers: int = 2,
    stop_signal: signal.Signals = signal.SIGTERM,
) -> Iterator[LiveServer]:
    """A ready gunicorn with ``workers`` workers configured by ``variables``, stopped on exit.

    Stopping sends ``stop_signal`` (SIGTERM: graceful; SIGINT: quick) and kills the master
    if it has not exited within 30 s.
    """
    port = free_port()
    env = environment({**variables, "DPX_BIND": f"127.0.0.1:{port}", "DPX_WORKERS": str(workers)})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(GUNICORN), "--config", str(ROOT / "gunicorn.conf.py"), "service.wsgi:app"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(process, stop_signal)


@contextmanager
def serve_deployment(settings: Settings, root: Path, backend: str) -> Iterator[list[str]]:
    """The URLs of a deployment's ready instances over ``settings``, stopped on exit.

    SQLite allows one host: one gunicorn with 4 workers. PostgreSQL is shared state, so
    two gunicorns with 2 workers each, as on two machines (``instance_variables``). Each
    logs to ``root/gunicorn-<index>.log``.
    """
    layout = [4] if backend == "sqlite" else [2, 2]
    with ExitStack() as servers:
        yield [
            servers.enter_context(
                serve(
                    instance_variables(settings, root, index),
                    workers=workers,
                    log_path=root / f"gunicorn-{index}.log",
                )
            ).url
            for index, workers in enumerate(layout)
        ]


def _wait_ready(server: LiveServer) -> None:
    deadline = time.monotonic() + READY_WITHIN
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"gunicorn exited with {server.process.returncode}:\n{server.log_text()}")
        try:
            if requests.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(
        f"gunicorn at {server.url} was not ready within {READY_WITHIN:.0f} s:\n{server.log_text()}"
    )


def _stop(process: subprocess.Popen[bytes], stop_signal: signal.Signals) -> None:
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=STOP_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
