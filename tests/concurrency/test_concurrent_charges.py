"""Budgets hold under real concurrency: gunicorn workers and instances racing for the last unit.

One gunicorn with 4 workers over SQLite, or two gunicorn instances with 2 workers each over
one PostgreSQL schema, receive 64 concurrent distinct queries from a partner whose grant
fits exactly 10 of them, and 16 concurrent copies of one query. The ledger, the release
store and the audit chain must agree with what the partners were told.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, text

from service.components import Components
from service.config import Settings
from service.crypto.keyring import Keyring
from service.database.engine import Database
from service.database.migrate import upgrade
from tests.conftest import PG_URL, ROOT, postgres_schema_url

pytestmark = pytest.mark.slow

DATASET = "uk-helpline-2024"
MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]
PARTNERS = {
    # Ten queries of epsilon 0.1 fit exactly; the eleventh does not.
    "racer": "budget: {epsilon: 1.0}\n    max_per_query: {epsilon: 0.1}",
    "twin": "budget: {epsilon: 1.0}",
}


def _partner_policy(partner: str, grant: str) -> str:
    return f"""id: {partner}
name: Concurrency test partner {partner}
jurisdiction: NO
grants:
  - dataset: {DATASET}
    {grant}
    statistics: [count]
    dimensions: [month, channel]
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Deployment:
    """Running gunicorn instances over one database, and in-process access to that database."""

    urls: list[str]
    components: Components
    tokens: dict[str, str]

    def post(self, index: int, partner: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.urls[index % len(self.urls)]}/v1/queries", json=body,
                             headers={"Authorization": f"Bearer {self.tokens[partner]}"},
                             timeout=120)


def _start(settings: Settings, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = dict(os.environ, DPX_DATA_DIR=str(settings.data_dir),
               DPX_DATABASE_URL=settings.database_url, DPX_KEYRING=str(settings.keyring_path),
               DPX_POLICY_DIR=str(settings.policy_dir), DPX_AUDIT_CHECKPOINT_EVERY="10",
               DPX_BIND=f"127.0.0.1:{port}", DPX_WORKERS=str(workers))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "--config", str(ROOT / "gunicorn.conf.py"),
             "service.wsgi:app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}"


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"gunicorn at {url} was not ready within 60 s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database for the servers (overrides conftest's to own the schema's lifetime)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'dpx.sqlite3'}"
        return
    if not PG_URL:
        pytest.skip("DPX_TEST_DATABASE_URL is not set")
    schema = "dpx_race_" + secrets.token_hex(6)
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
def deployment(backend: str, tmp_path: Path, database_url: str,
               policy_dir: Path) -> Iterator[Deployment]:
    """SQLite: one gunicorn with 4 workers. PostgreSQL: two gunicorns with 2 workers each."""
    for partner, grant in PARTNERS.items():
        (policy_dir / "partners" / f"{partner}.yaml").write_text(
            _partner_policy(partner, grant), encoding="utf-8")
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    settings = Settings(data_dir=data_dir, database_url=database_url,
                        keyring_path=data_dir / "keyring.json", policy_dir=policy_dir,
                        audit_checkpoint_every=10)
    Keyring.create(settings.keyring_path)
    database = Database(database_url)
    upgrade(database)
    database.dispose()
    components = Components.open(settings)
    tokens = {partner: components.tokens.issue("partner", partner).token
              for partner in PARTNERS}
    owner = components.tokens.issue("owner", DATASET).token
    layout = [4] if backend == "sqlite" else [2, 2]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for index, workers in enumerate(layout):
            log = tmp_path / f"gunicorn-{index}.log"
            process, url = _start(settings, workers, log)
            processes.append(process)
            _wait_ready(process, url, log)
            urls.append(url)
        records = [{"month": month, "country": "GB", "channel": channel,
                    "caller_type": "other", "referral_source": "other", "minutes": 10}
                   for month in MONTHS for channel in ("phone", "chat") for _ in range(3)]
        upload = requests.post(f"{urls[0]}/v1/datasets/{DATASET}/batches",
                               data=json.dumps(records), timeout=60,
                               headers={"Authorization": f"Bearer {owner}",
                                        "Content-Type": "application/json"})
        assert upload.status_code == 201, upload.text
        yield Deployment(urls=urls, components=components, tokens=tokens)
    finally:
        for process in processes:
            _stop(process)
        components.database.dispose()


def _distinct_queries(n: int) -> list[dict[str, Any]]:
    """``n`` different questions (month ranges), each costing epsilon 0.1."""
    ranges = [(a, b) for a in range(12) for b in range(a, 12) if (a, b) != (0, 11)]
    return [{"dataset": DATASET, "statistic": "count", "group_by": ["channel"],
             "filters": {"month": {"from": MONTHS[a], "to": MONTHS[b]}}, "epsilon": 0.1}
            for a, b in ranges[:n]]


def _rows(database: Database, sql: str, **params: Any) -> list[Any]:
    with database.read() as conn:
        return list(conn.execute(text(sql), params).all())


BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])


@BACKENDS
def test_64_racing_queries_buy_exactly_the_10_the_grant_allows(
        deployment: Deployment) -> None:
    queries = _distinct_queries(64)
    with ThreadPoolExecutor(max_workers=64) as pool:
        responses = list(pool.map(lambda item: deployment.post(item[0], "racer", item[1]),
                                  enumerate(queries)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 10, 403: 54}, [r.text for r in responses
                                            if r.status_code not in (201, 403)]
    assert {r.json()["code"] for r in responses if r.status_code == 403} == {"budget_exhausted"}
    released = {r.json()["release_id"] for r in responses if r.status_code == 201}

    database = deployment.components.database
    ledger = deployment.components.ledger
    assert ledger.spent(DATASET, "racer") == 1
    assert ledger.spent(DATASET, "*") == 1
    charges = _rows(database, "SELECT release_id, amount_nano FROM charges WHERE partner = :p",
                    p="racer")
    assert {row.release_id for row in charges} == released
    assert sum(row.amount_nano for row in charges) == 10**9
    stored = _rows(database, "SELECT id, status FROM releases WHERE partner = :p", p="racer")
    assert {row.id for row in stored} == released
    assert {row.status for row in stored} == {"done"}

    audit = deployment.components.audit
    entries = [e for e in audit.entries() if e.dataset == DATASET]
    actions = Counter(e.action for e in entries)
    assert actions["budget.charge"] == 10 and actions["release.create"] == 10
    refusals = [e for e in entries if e.action == "query.refuse"]
    assert len(refusals) == 54
    assert {e.details["reason"] for e in refusals} == {"budget_exhausted"}
    assert {e.details["release_id"] for e in entries if e.action == "release.create"} == released
    verification = audit.verify()
    assert verification.ok, verification.reason


@BACKENDS
def test_16_racing_copies_of_one_query_buy_one_release(deployment: Deployment) -> None:
    body = {"dataset": DATASET, "statistic": "count", "group_by": ["month", "channel"],
            "epsilon": 0.3}
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda index: deployment.post(index, "twin", body), range(16)))

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 1, 200: 15}, [r.text for r in responses]
    documents = [r.json() for r in responses]
    assert len({d["release_id"] for d in documents}) == 1
    assert all(d["rows"] == documents[0]["rows"] for d in documents)
    assert len(documents[0]["rows"]) == 48

    database = deployment.components.database
    assert deployment.components.ledger.spent(DATASET, "twin") * 10 == 3
    assert len(_rows(database, "SELECT id FROM charges WHERE partner = :p", p="twin")) == 1
    assert len(_rows(database, "SELECT id FROM releases WHERE partner = :p", p="twin")) == 1
    actions = Counter(e.action for e in deployment.components.audit.entries()
                      if e.dataset == DATASET)
    assert actions["budget.charge"] == 1 and actions["release.create"] == 1
    assert deployment.components.audit.verify().ok
