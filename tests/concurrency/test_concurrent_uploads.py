"""Re-sent uploads racing each other through real gunicorn workers store one batch.

One gunicorn with 4 workers over SQLite, or two gunicorn instances with 2 workers each over
one PostgreSQL schema, receive concurrent uploads: copies of one body under one
Idempotency-Key, different bodies under one key, and copies of one body without a key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from service.components import Components
from service.config import Settings
from tests.conftest import BOTH_BACKENDS
from tests.live_server import serve_deployment

pytestmark = [pytest.mark.slow, BOTH_BACKENDS]

DATASET = "uk-helpline-2024"
RACERS = 12


@dataclass
class Deployment:
    urls: list[str]
    components: Components
    owner: str

    def upload(self, index: int, body: bytes, key: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.owner}", "Content-Type": "text/csv"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return requests.post(
            f"{self.urls[index % len(self.urls)]}/v1/datasets/{DATASET}/batches",
            data=body,
            headers=headers,
            timeout=120,
        )

    def race(self, bodies: list[bytes], key: str | None) -> list[requests.Response]:
        with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
            return list(
                pool.map(lambda item: self.upload(item[0], item[1], key), enumerate(bodies))
            )

    def stored(self) -> list[tuple[str, str | None]]:
        with self.components.database.read() as conn:
            return [
                (str(row.id), row.idempotency_key)
                for row in conn.execute(text("SELECT id, idempotency_key FROM batches"))
            ]


@pytest.fixture
def deployment(backend: str, tmp_path: Path, settings: Settings) -> Iterator[Deployment]:
    components = Components.open(settings)
    owner = components.tokens.issue("owner", DATASET).token
    try:
        with serve_deployment(settings, tmp_path, backend) as urls:
            yield Deployment(urls=urls, components=components, owner=owner)
    finally:
        components.database.dispose()


def _body(month: int, minutes: int = 10) -> bytes:
    header = "month,country,channel,caller_type,referral_source,minutes"
    return f"{header}\n2024-{month:02d},GB,chat,other,other,{minutes}\n".encode()


def test_racing_uploads_store_one_batch_per_upload(deployment: Deployment) -> None:
    # Copies of one body under one key: one batch, and every racer is told about it.
    answers = deployment.race([_body(1)] * RACERS, key="same-body")
    assert [a.status_code for a in answers] == [201] * RACERS, [a.text for a in answers]
    assert len({a.json()["batch_id"] for a in answers}) == 1
    assert len({a.text for a in answers}) == 1

    # Different bodies under one key: one is stored; every other body is a conflict.
    bodies = [_body(2, minutes) for minutes in range(RACERS)]
    answers = deployment.race(bodies, key="other-bodies")
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 1, 409: RACERS - 1}, [a.text for a in answers]
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"conflict"}

    # Copies of one body without a key: one is stored, the rest name it as a duplicate.
    answers = deployment.race([_body(3)] * RACERS, key=None)
    codes = Counter(a.status_code for a in answers)
    assert codes == {201: 1, 409: RACERS - 1}, [a.text for a in answers]
    winner = next(a.json()["batch_id"] for a in answers if a.status_code == 201)
    refused = [a.json() for a in answers if a.status_code == 409]
    assert {(r["code"], r["batch_id"]) for r in refused} == {("duplicate_batch", winner)}

    stored = deployment.stored()
    assert sorted(key or "" for _, key in stored) == ["", "other-bodies", "same-body"]
