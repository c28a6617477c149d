"""Workers SIGKILLed in the middle of a burst of charged queries lose nothing that was sent.

One gunicorn with 2 workers over the test database (SQLite, or PostgreSQL when configured)
answers 8 concurrent clients; while they run, every worker is killed with SIGKILL (gunicorn
starts new ones). Whatever the moment of the kill: every release that was answered is in
the store, no release is stored without its charge, no charge without its release, and the
accounts and the audit chain agree with the ledger lines.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text

from service.components import Components
from service.config import Settings
from tests.conftest import BOTH_BACKENDS
from tests.live_server import LiveServer, serve, settings_variables

pytestmark = [pytest.mark.slow, BOTH_BACKENDS]

DATASET = "uk-helpline-2024"
PARTNER = """id: burst
name: Crash test partner
jurisdiction: NO
grants:
  - dataset: uk-helpline-2024
    budget: {epsilon: 100.0}
    statistics: [count]
    dimensions: [month, channel]
"""


@dataclass
class Burst:
    server: LiveServer
    components: Components
    token: str


@pytest.fixture
def burst(tmp_path: Path, settings: Settings) -> Iterator[Burst]:
    (settings.policy_dir / "partners" / "burst.yaml").write_text(PARTNER, encoding="utf-8")
    components = Components.open(settings)
    token = components.tokens.issue("partner", "burst").token
    owner = components.tokens.issue("owner", DATASET).token
    try:
        with serve(
            settings_variables(settings), workers=2, log_path=tmp_path / "gunicorn.log"
        ) as server:
            records = [
                {
                    "month": f"2024-{month:02d}",
                    "country": "GB",
                    "channel": channel,
                    "caller_type": "other",
                    "referral_source": "other",
                    "minutes": 10,
                }
                for month in range(1, 13)
                for channel in ("phone", "chat")
            ]
            upload = requests.post(
                f"{server.url}/v1/datasets/{DATASET}/batches",
                data=json.dumps(records),
                headers={"Authorization": f"Bearer {owner}", "Content-Type": "application/json"},
                timeout=60,
            )
            assert upload.status_code == 201, upload.text
            yield Burst(server, components, token)
    finally:
        components.database.dispose()


def workers(master: int) -> list[int]:
    """The pids of the gunicorn master's child processes (its workers)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(pid) for pid in children]


def rows(components: Components, sql: str) -> list[Any]:
    with components.database.read() as conn:
        return list(conn.execute(text(sql)).all())


def test_killing_every_worker_mid_burst_never_loses_an_answer_or_a_charge(burst: Burst) -> None:
    answered: list[str] = []
    lock = threading.Lock()

    def ask(index: int) -> None:
        body = {
            "dataset": DATASET,
            "statistic": "count",
            "group_by": ["month", "channel"],
            "epsilon": f"0.01{index:03d}",
        }
        try:
            response = requests.post(
                f"{burst.server.url}/v1/queries",
                json=body,
                headers={"Authorization": f"Bearer {burst.token}"},
                timeout=60,
            )
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            return  # killed before its answer arrived whole: nothing was promised
        if response.status_code == 201:
            with lock:
                answered.append(response.json()["release_id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(ask, index) for index in range(160)]
        for _ in range(3):
            time.sleep(0.4)
            for pid in workers(burst.server.process.pid):
                os.kill(pid, signal.SIGKILL)
        for future in futures:
            future.result()

    assert answered, "no query was answered at all: the burst did not overlap the kills"
    stored = {row.id for row in rows(burst.components, "SELECT id FROM releases")}
    charged = {row.release_id for row in rows(burst.components, "SELECT release_id FROM charges")}
    assert set(answered) <= stored
    assert stored == charged
    spent = burst.components.ledger.spent(DATASET, "burst")
    total = sum(line.amount for line in burst.components.ledger.history(DATASET, "burst"))
    assert spent == total
    audit = burst.components.audit
    created = {
        e.details["release_id"]
        for e in audit.entries()
        if e.action == "release.create" and e.dataset == DATASET
    }
    assert created == stored
    verification = audit.verify()
    assert verification.ok, verification.reason
