"""Files at rest: the data directory is 0700 and every file in it 0600, whoever made it:
dpx, SQLite (database, WAL, SHM), the audit checkpoints, gunicorn and the metric files."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.app import create_app
from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade
from tests.conftest import DEMO_POLICIES, bearer
from tests.live_server import deploy, serve, settings_variables

QUERY = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.1}
CSV = (
    "month,country,channel,caller_type,referral_source,minutes,person\n"
    "2024-01,GB,chat,self_concerned,social_media_ad,15,synthetic-0000124\n"
)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Start from the usual 022, as a shell would; restore whatever the test run had."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_private(root: Path) -> None:
    modes = _modes(root)
    loose = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert not loose, f"not private: {loose}"


def test_everything_in_the_data_dir_is_private_while_the_service_runs(
    tmp_path: Path, loose_umask: None
) -> None:
    data_dir = tmp_path / "var"
    data_dir.mkdir(mode=0o755)
    (data_dir / "left-by-an-earlier-run.log").write_text("x")
    (data_dir / "old").mkdir()
    (data_dir / "old" / "file").write_text("x")
    os.chmod(data_dir / "left-by-an-earlier-run.log", 0o644)  # noqa: S103 - as above
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'dpx.sqlite3'}",
        keyring_path=data_dir / "keyring.json",
        policy_dir=DEMO_POLICIES,
        audit_checkpoint_every=1,
    )
    Keyring.create(settings.keyring_path)
    database = Database(settings.database_url)
    upgrade(database)
    database.dispose()
    app = create_app(settings)
    try:
        client = app.test_client()
        registry = app.extensions["dpx.tokens"]
        owner = bearer(registry.issue("owner", "uk-helpline-2024").token)
        partner = bearer(registry.issue("partner", "no-police").token)
        uploaded = client.post(
            "/v1/datasets/uk-helpline-2024/batches",
            data=CSV,
            headers={**owner, "Content-Type": "text/csv"},
        )
        assert uploaded.status_code == 201
        assert client.post("/v1/queries", json=QUERY, headers=partner).status_code == 201
        names = set(_modes(data_dir))
        assert {"dpx.sqlite3", "dpx.sqlite3-wal", "dpx.sqlite3-shm"} <= names
        assert "audit-checkpoints.jsonl" in names
        _assert_private(data_dir)
    finally:
        app.extensions["dpx.database"].dispose()


@pytest.mark.slow
def test_a_gunicorn_deployment_keeps_its_files_private(tmp_path: Path, loose_umask: None) -> None:
    shutil.copytree(DEMO_POLICIES, tmp_path / "policies")
    settings = deploy(tmp_path, tmp_path / "policies")
    os.chmod(settings.data_dir, 0o755)  # noqa: S103 - the loose start the service must fix
    log = tmp_path / "gunicorn.log"  # outside the data dir: the test reads it
    with serve(settings_variables(settings), log_path=log, workers=2) as server:
        assert requests.get(server.url + "/v1/datasets", timeout=30).status_code == 401
        assert (settings.data_dir / "prometheus").is_dir()
        _assert_private(settings.data_dir)
