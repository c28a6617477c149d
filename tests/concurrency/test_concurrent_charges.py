"""Budgets hold under real concurrency: gunicorn workers and instances racing for the last unit.

One gunicorn with 4 workers over SQLite, or two gunicorn instances with 2 workers each over
one PostgreSQL schema, receive 64 concurrent distinct queries from a partner whose grant
fits exactly 10 of them, and 16 concurrent copies of one query. The ledger, the release
store and the audit chain must agree with what the partners were told.
"""

from __future__ import annotations

import json
from collections import Counter
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
from service.database.engine import Database
from tests.live_server import serve_deployment

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


@dataclass
class Deployment:
    """Running gunicorn instances over one database, and in-process access to that database."""

    urls: list[str]
    components: Components
    tokens: dict[str, str]

    def post(self, index: int, partner: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(
            f"{self.urls[index % len(self.urls)]}/v1/queries",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens[partner]}"},
            timeout=120,
        )


@pytest.fixture
def deployment(backend: str, tmp_path: Path, settings: Settings) -> Iterator[Deployment]:
    """The instances of ``serve_deployment``, the partners' tokens, and one uploaded batch."""
    for partner, grant in PARTNERS.items():
        (settings.policy_dir / "partners" / f"{partner}.yaml").write_text(
            _partner_policy(partner, grant), encoding="utf-8"
        )
    components = Components.open(settings)
    tokens = {partner: components.tokens.issue("partner", partner).token for partner in PARTNERS}
    owner = components.tokens.issue("owner", DATASET).token
    records = [
        {
            "month": month,
            "country": "GB",
            "channel": channel,
            "caller_type": "other",
            "referral_source": "other",
            "minutes": 10,
        }
        for month in MONTHS
        for channel in ("phone", "chat")
        for _ in range(3)
    ]
    try:
        with serve_deployment(settings, tmp_path, backend) as urls:
            upload = requests.post(
                f"{urls[0]}/v1/datasets/{DATASET}/batches",
                data=json.dumps(records),
                timeout=60,
                headers={"Authorization": f"Bearer {owner}", "Content-Type": "application/json"},
            )
            assert upload.status_code == 201, upload.text
            yield Deployment(urls=urls, components=components, tokens=tokens)
    finally:
        components.database.dispose()


def _distinct_queries(n: int) -> list[dict[str, Any]]:
    """``n`` different questions (month ranges), each costing epsilon 0.1."""
    ranges = [(a, b) for a in range(12) for b in range(a, 12) if (a, b) != (0, 11)]
    return [
        {
            "dataset": DATASET,
            "statistic": "count",
            "group_by": ["channel"],
            "filters": {"month": {"from": MONTHS[a], "to": MONTHS[b]}},
            "epsilon": 0.1,
        }
        for a, b in ranges[:n]
    ]


def _rows(database: Database, sql: str, **params: Any) -> list[Any]:
    with database.read() as conn:
        return list(conn.execute(text(sql), params).all())


BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)


@BACKENDS
def test_64_racing_queries_buy_exactly_the_10_the_grant_allows(deployment: Deployment) -> None:
    queries = _distinct_queries(64)
    with ThreadPoolExecutor(max_workers=64) as pool:
        responses = list(
            pool.map(lambda item: deployment.post(item[0], "racer", item[1]), enumerate(queries))
        )

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 10, 403: 54}, [
        r.text for r in responses if r.status_code not in (201, 403)
    ]
    assert {r.json()["code"] for r in responses if r.status_code == 403} == {"budget_exhausted"}
    released = {r.json()["release_id"] for r in responses if r.status_code == 201}

    database = deployment.components.database
    ledger = deployment.components.ledger
    assert ledger.spent(DATASET, "racer") == 1
    assert ledger.spent(DATASET, "*") == 1
    charges = _rows(
        database, "SELECT release_id, amount_nano FROM charges WHERE partner = :p", p="racer"
    )
    assert {row.release_id for row in charges} == released
    assert sum(row.amount_nano for row in charges) == 10**9
    stored = _rows(database, "SELECT id FROM releases WHERE partner = :p", p="racer")
    assert {row.id for row in stored} == released

    audit = deployment.components.audit
    entries = [e for e in audit.entries() if e.dataset == DATASET]
    actions = Counter(e.action for e in entries)
    assert actions["release.create"] == 10 and actions["budget.charge"] == 0
    refusals = [e for e in entries if e.action == "query.refuse"]
    # 54 identical refusals within a minute: each worker audits the first at once and
    # folds the rest into a count written later, so 1 to 4 entries (4 workers), not 54.
    assert 1 <= len(refusals) <= 4
    assert {e.details["reason"] for e in refusals} == {"budget_exhausted"}
    assert {e.details["release_id"] for e in entries if e.action == "release.create"} == released
    verification = audit.verify()
    assert verification.ok, verification.reason


@BACKENDS
def test_16_racing_copies_of_one_query_buy_one_release(deployment: Deployment) -> None:
    body = {
        "dataset": DATASET,
        "statistic": "count",
        "group_by": ["month", "channel"],
        "epsilon": 0.3,
    }
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
    actions = Counter(
        e.action for e in deployment.components.audit.entries() if e.dataset == DATASET
    )
    assert actions["release.create"] == 1
    assert deployment.components.audit.verify().ok
