"""The release path under real gunicorn workers: racing Idempotency-Keys and key rotation.

One gunicorn with 2 workers over the test database (SQLite, or PostgreSQL when configured)
receives, over HTTP, 36 concurrent requests that share one Idempotency-Key but carry three
different bodies; and keeps answering while ``dpx rotate-signing-key`` runs in another
process, after which every worker must sign with the new key within seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from dpx_client.signature import verify_signature

from service.components import Components
from service.config import Settings
from service.crypto.signing import KEY_CHECK_SECONDS
from tests.conftest import BOTH_BACKENDS
from tests.live_server import environment, serve, settings_variables

pytestmark = [pytest.mark.slow, BOTH_BACKENDS]

DATASET = "uk-helpline-2024"
PARTNER = """id: racer
name: Release path test partner
jurisdiction: NO
grants:
  - dataset: uk-helpline-2024
    budget: {epsilon: 100.0}
    statistics: [count]
    dimensions: [month, channel]
"""


@dataclass
class Live:
    url: str
    token: str
    settings: Settings

    def post(self, body: dict[str, Any], **headers: str) -> requests.Response:
        return requests.post(
            f"{self.url}/v1/queries",
            json=body,
            headers={"Authorization": f"Bearer {self.token}", **headers},
            timeout=120,
        )


@pytest.fixture
def live(tmp_path: Path, settings: Settings) -> Iterator[Live]:
    (settings.policy_dir / "partners" / "racer.yaml").write_text(PARTNER, encoding="utf-8")
    components = Components.open(settings)
    token = components.tokens.issue("partner", "racer").token
    owner = components.tokens.issue("owner", DATASET).token
    components.database.dispose()
    variables = settings_variables(settings)
    with serve(variables, workers=2, log_path=tmp_path / "gunicorn.log") as server:
        records = [
            {
                "month": f"2024-{month:02d}",
                "country": "GB",
                "channel": "chat",
                "caller_type": "other",
                "referral_source": "other",
                "minutes": 10,
            }
            for month in range(1, 13)
        ]
        upload = requests.post(
            f"{server.url}/v1/datasets/{DATASET}/batches",
            data=json.dumps(records),
            headers={"Authorization": f"Bearer {owner}", "Content-Type": "application/json"},
            timeout=60,
        )
        assert upload.status_code == 201, upload.text
        yield Live(server.url, token, settings)


def count(epsilon: str) -> dict[str, Any]:
    return {"dataset": DATASET, "statistic": "count", "group_by": ["month"], "epsilon": epsilon}


def test_one_idempotency_key_raced_with_three_bodies_never_answers_a_body_it_was_not_sent(
    live: Live,
) -> None:
    bodies = [count(epsilon) for epsilon in ("0.11", "0.12", "0.13")]
    barrier = threading.Barrier(36)

    def send(index: int) -> tuple[int, requests.Response]:
        barrier.wait()
        return index % 3, live.post(bodies[index % 3], **{"Idempotency-Key": "one-key"})

    with ThreadPoolExecutor(max_workers=36) as pool:
        answers = list(pool.map(send, range(36)))

    statuses = Counter(response.status_code for _, response in answers)
    assert set(statuses) <= {201, 409}, [r.text for _, r in answers]
    released = [(body, r.json()) for body, r in answers if r.status_code == 201]
    for body, document in released:
        assert document["query"]["privacy"] == {"epsilon": bodies[body]["epsilon"]}
    assert len({document["release_id"] for _, document in released}) == 1
    assert statuses == {201: 12, 409: 24}


def test_every_worker_signs_with_a_rotated_key_within_seconds(live: Live) -> None:
    before = [live.post(count(f"0.0{n}")).json() for n in range(1, 5)]
    old = {document["signature"]["key_id"] for document in before}
    assert len(old) == 1

    rotated = subprocess.run(
        [str(Path(sys.executable).parent / "dpx"), "rotate-signing-key"],
        env=environment(settings_variables(live.settings)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rotated.returncode == 0, rotated.stderr
    time.sleep(KEY_CHECK_SECONDS + 1.0)
    # Concurrent requests, so that both workers answer some of them.
    with ThreadPoolExecutor(max_workers=8) as pool:
        after = list(pool.map(lambda n: live.post(count(f"0.3{n:02d}")).json(), range(16)))

    keys = requests.get(f"{live.url}/v1/signing-keys", timeout=30).json()["keys"]
    current = {key["key_id"] for key in keys if key["status"] == "current"}
    assert current and current.isdisjoint(old)
    assert {document["signature"]["key_id"] for document in after} == current
    signed = [
        {k: v for k, v in document.items() if k not in ("cached", "budget")}
        for document in before + after
    ]
    assert all(verify_signature(document, keys) for document in signed)
