"""Shared fixtures: a real keyring, real databases (SQLite; PostgreSQL when configured),
the demo policies, the app and its client, and tokens for every role.

PostgreSQL tests run whenever ``DPX_TEST_DATABASE_URL`` is set (``.ci/run`` sets it);
each test gets a schema of its own, dropped afterwards, so runs never collide.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.components import Components
from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade
from tests.dataset_policies import DEMO_POLICIES

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("DPX_TEST_DATABASE_URL", "")

# Property tests check results, not speed: on a loaded machine a 200 ms deadline only flakes.
hypothesis_settings.register_profile("dpx", deadline=None)
hypothesis_settings.load_profile("dpx")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") and not PG_URL:
        raise pytest.UsageError("CI must set DPX_TEST_DATABASE_URL so PostgreSQL tests run")


BOTH_BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
"""Apply to a test or module (``pytestmark = BOTH_BACKENDS``) to run it on both databases."""


@pytest.fixture
def backend() -> str:
    """The database backend of a test: SQLite unless the test is marked ``BOTH_BACKENDS``."""
    return "sqlite"


def postgres_schema_url(schema: str) -> str:
    """The test server's URL with ``schema`` as the search path of every connection."""
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the given backend, removed after the test."""
    if backend == "postgres" and not PG_URL:
        pytest.skip("DPX_TEST_DATABASE_URL is not set")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'dpx.sqlite3'}"
        return
    schema = "dpx_test_" + secrets.token_hex(6)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_schema_url(schema)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """A private copy of the demo policies that a test may change."""
    target = tmp_path / "policies"
    shutil.copytree(DEMO_POLICIES, target)
    return target


@pytest.fixture
def settings(tmp_path: Path, database_url: str, policy_dir: Path) -> Settings:
    """Settings of an initialised deployment: keyring (0600) and schema in place."""
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    result = Settings(
        data_dir=data_dir,
        database_url=database_url,
        keyring_path=data_dir / "keyring.json",
        policy_dir=policy_dir,
        audit_checkpoint_every=10,
    )
    Keyring.create(result.keyring_path)
    database = Database(database_url)
    upgrade(database)
    database.dispose()
    return result


@pytest.fixture
def components(settings: Settings) -> Iterator[Components]:
    built = Components.open(settings)
    yield built
    built.database.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["dpx.database"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass(frozen=True)
class Tokens:
    """Bearer headers for one caller of each role in the demo policies."""

    partner: dict[str, str]
    other_partner: dict[str, str]
    owner: dict[str, str]
    other_owner: dict[str, str]
    dpo: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def tokens(app: Flask) -> Tokens:
    registry = app.extensions["dpx.tokens"]
    return Tokens(
        partner=bearer(registry.issue("partner", "no-police").token),
        other_partner=bearer(registry.issue("partner", "interpol-sg").token),
        owner=bearer(registry.issue("owner", "uk-helpline-2024").token),
        other_owner=bearer(registry.issue("owner", "nl-helpline-2024").token),
        dpo=bearer(registry.issue("dpo", None).token),
    )
