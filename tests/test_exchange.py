"""The release path of the exchange: what a query does before, during and after its one commit.

Over the Flask client against a real keyring and a real database (SQLite and PostgreSQL):
a request that cannot be paid reads no cell and draws no noise; a computation that fails
after reading data is charged; a release answers under one policy version even when a
reload lands while it is computed; one Idempotency-Key raced with several bodies answers each
body with its own release or 409; a shared release read by id obeys the reader's
``max_per_query``; an estimate never reveals another partner's release.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Connection, text

from service.crypto.keyring import Keyring
from service.dp.mechanisms import noise_draws
from service.dp.synopsis import Estimate
from service.exchange import Exchange
from service.policy.loader import load_policies
from service.policy.model import DatasetPolicy, PolicySet
from service.store.batches import BatchStore
from service.store.synopses import StoredSynopsis, SynopsisStore
from tests.conftest import BOTH_BACKENDS, bearer

pytestmark = BOTH_BACKENDS

UK = "uk-helpline-2024"
BE = "be-helpline-2024"
NL = "nl-helpline-2024"

PARTNERS = {
    # A grant that fits one query of epsilon 0.3 and not two.
    "thrifty": f"""
id: thrifty
name: Test partner with a small grant
jurisdiction: GB
grants:
  - dataset: {UK}
    budget: {{epsilon: 0.5}}
    statistics: [count]
    dimensions: [month, channel]
  - dataset: {BE}
    budget: {{epsilon: 1.0}}
    statistics: [count]
    dimensions: [month, channel]
""",
    # May read shared releases of at most epsilon 0.1 per query.
    "narrow": f"""
id: narrow
name: Test partner with a small max_per_query
jurisdiction: BE
grants:
  - dataset: {BE}
    budget: {{epsilon: 1.0}}
    max_per_query: {{epsilon: 0.1}}
    statistics: [count]
    dimensions: [month, channel]
""",
}


@pytest.fixture(autouse=True)
def partner_policies(policy_dir: Path) -> Path:
    for partner, body in PARTNERS.items():
        (policy_dir / "partners" / f"{partner}.yaml").write_text(body.lstrip(), encoding="utf-8")
    return policy_dir


def token(app: Flask, role: str, subject: str | None) -> dict[str, str]:
    return bearer(app.extensions["dpx.tokens"].issue(role, subject).token)


def upload(client: FlaskClient, app: Flask, dataset: str, records: list[dict[str, Any]]) -> None:
    response = client.post(
        f"/v1/datasets/{dataset}/batches",
        data=json.dumps(records),
        headers={**token(app, "owner", dataset), "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.json


def uk_records(n: int = 5) -> list[dict[str, Any]]:
    return [
        {
            "month": "2024-03",
            "country": "GB",
            "channel": "chat",
            "caller_type": "other",
            "referral_source": "other",
            "minutes": 10,
        }
    ] * n


def count(dataset: str, epsilon: float) -> dict[str, Any]:
    return {"dataset": dataset, "statistic": "count", "group_by": ["month"], "epsilon": epsilon}


def spent(app: Flask) -> dict[str, int]:
    with app.extensions["dpx.database"].read() as conn:
        return {
            "charges": conn.execute(text("SELECT COUNT(*) FROM charges")).scalar_one(),
            "releases": conn.execute(text("SELECT COUNT(*) FROM releases")).scalar_one(),
            "spent_nano": conn.execute(
                text("SELECT COALESCE(SUM(spent_nano), 0) FROM budget_accounts")
            ).scalar_one(),
        }


def blind_store(app: Flask, tmp_path: Path) -> None:
    """Give the exchange a store whose keyring holds none of the keys the batches need:
    reading any cell now fails. A real store over a real (other) keyring, not a stand-in."""
    exchange: Exchange = app.extensions["dpx.exchange"]
    stranger = Keyring.create(tmp_path / "stranger-keyring.json")
    exchange.store = BatchStore(exchange.database, stranger, exchange.audit)


# -- a refused request does no data-dependent work -------------------------------------------


def test_an_over_budget_request_reads_no_cells_and_draws_no_noise(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    upload(client, app, UK, uk_records())
    thrifty = token(app, "partner", "thrifty")
    first = client.post("/v1/queries", json=count(UK, 0.3), headers=thrifty)
    assert first.status_code == 201, first.json
    blind_store(app, tmp_path)
    before, draws = spent(app), noise_draws()

    refused = client.post("/v1/queries", json=count(UK, 0.3) | {"group_by": []}, headers=thrifty)

    # The store cannot decrypt a single batch, so reading cells would have failed (see the
    # next test); the refusal came first, and nothing was drawn, charged or stored.
    assert refused.status_code == 403 and refused.json["code"] == "budget_exhausted"
    assert noise_draws() == draws
    assert spent(app) == before


def test_a_computation_that_fails_after_reading_data_is_charged_and_sends_nothing(
    app: Flask, client: FlaskClient, tmp_path: Path
) -> None:
    upload(client, app, UK, uk_records())
    thrifty = token(app, "partner", "thrifty")
    blind_store(app, tmp_path)
    before, draws = spent(app), noise_draws()

    failed = client.post("/v1/queries", json=count(UK, 0.3), headers=thrifty)

    assert failed.status_code == 500 and "rows" not in failed.json
    assert noise_draws() == draws
    after = spent(app)
    # Whether reading the data failed may depend on the data: it is paid for like a release.
    assert after["charges"] == before["charges"] + 1
    assert after["releases"] == before["releases"]
    assert after["spent_nano"] == before["spent_nano"] + 2 * 300_000_000
    entries = list(app.extensions["dpx.audit"].entries())
    assert entries[-1].action == "release.fail"
    assert app.extensions["dpx.audit"].verify().ok


def test_a_release_is_one_commit_with_its_charge_ledger_line_and_audit_entry(
    app: Flask, client: FlaskClient
) -> None:
    upload(client, app, UK, uk_records())
    before = spent(app)
    seq = max(e.seq for e in app.extensions["dpx.audit"].entries())

    released = client.post(
        "/v1/queries", json=count(UK, 0.3), headers=token(app, "partner", "thrifty")
    )

    assert released.status_code == 201
    after = spent(app)
    assert after["charges"] - before["charges"] == 1
    assert after["releases"] - before["releases"] == 1
    assert after["spent_nano"] - before["spent_nano"] == 2 * 300_000_000
    entries = list(app.extensions["dpx.audit"].entries(after=seq))
    # The token issued for the request adds one entry; the release exactly one more.
    assert [e.action for e in entries if e.dataset == UK] == ["release.create"]
    assert entries[-1].details["release_id"] == released.json["release_id"]


# -- one Idempotency-Key, several bodies at once ---------------------------------------------


def test_racing_bodies_with_one_idempotency_key_get_their_own_release_or_409(
    app: Flask, client: FlaskClient
) -> None:
    upload(client, app, UK, uk_records())
    thrifty = token(app, "partner", "thrifty")
    bodies = [count(UK, epsilon) for epsilon in (0.11, 0.12, 0.13)]
    barrier = threading.Barrier(36)
    answers: list[tuple[int, int, dict[str, Any]]] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        body = bodies[index % 3]
        caller = app.test_client()
        barrier.wait()
        response = caller.post(
            "/v1/queries", json=body, headers={**thrifty, "Idempotency-Key": "same-key"}
        )
        with lock:
            answers.append((index % 3, response.status_code, response.json))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(36)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    statuses = Counter(status for _, status, _ in answers)
    assert set(statuses) <= {201, 409}, statuses
    released = [(body, document) for body, status, document in answers if status == 201]
    # Every 201 carries the release of the body its request sent; all are one release.
    for body, document in released:
        assert document["query"]["privacy"] == {"epsilon": str(bodies[body]["epsilon"])}
    assert len({document["release_id"] for _, document in released}) == 1
    assert statuses[201] == 12 and statuses[409] == 24
    assert {d["code"] for _, s, d in answers if s == 409} == {"conflict"}
    assert spent(app)["charges"] == 1


# -- sharing and estimates ---------------------------------------------------------------------


def test_a_shared_release_read_by_id_obeys_the_readers_max_per_query(
    app: Flask, client: FlaskClient
) -> None:
    thrifty, narrow = token(app, "partner", "thrifty"), token(app, "partner", "narrow")
    dear = client.post("/v1/queries", json=count(BE, 0.25), headers=thrifty)
    cheap = client.post("/v1/queries", json=count(BE, 0.05), headers=thrifty)
    assert dear.status_code == 201 and cheap.status_code == 201

    read_dear = client.get(f"/v1/releases/{dear.json['release_id']}", headers=narrow)
    post_dear = client.post("/v1/queries", json=count(BE, 0.25), headers=narrow)
    read_cheap = client.get(f"/v1/releases/{cheap.json['release_id']}", headers=narrow)

    # A POST of the same query is refused by the grant; reading it by id must be too.
    assert post_dear.status_code == 403 and post_dear.json["rule"] == "max_per_query"
    assert read_dear.status_code == 404
    assert read_cheap.status_code == 200
    assert read_cheap.json["release_id"] == cheap.json["release_id"]


def test_an_estimate_does_not_reveal_that_another_partner_asked_the_same_question(
    app: Flask, client: FlaskClient
) -> None:
    thrifty, narrow = token(app, "partner", "thrifty"), token(app, "partner", "narrow")
    asked = client.post("/v1/queries", json=count(BE, 0.05), headers=thrifty)
    assert asked.status_code == 201

    theirs = client.post("/v1/queries/estimate", json=count(BE, 0.05), headers=narrow)
    never_asked = client.post("/v1/queries/estimate", json=count(BE, 0.06), headers=narrow)
    own = client.post("/v1/queries/estimate", json=count(BE, 0.05), headers=thrifty)

    # Another partner's release and a question nobody asked look exactly alike.
    assert theirs.json["cached"] is False and never_asked.json["cached"] is False
    assert theirs.json["privacy"]["epsilon"] == 0.05
    assert own.json["cached"] is True and own.json["privacy"]["epsilon"] == 0.0


# -- one request, one policy set ---------------------------------------------------------------


class ReloadingStore(BatchStore):
    """The exchange's real store, under which a policy reload lands while a query reads its
    cells: after the query was planned and priced, before its release document is written.
    Timing a reload from another thread into that moment would be luck; this is exact."""

    def __init__(self, exchange: Exchange, reload_to: PolicySet) -> None:
        super().__init__(exchange.database, exchange.keyring, exchange.audit)
        self.exchange, self.reload_to = exchange, reload_to

    def cells(self, dataset: DatasetPolicy, within: Connection | None = None) -> Any:
        self.exchange.replace_policies(self.reload_to)
        return super().cells(dataset, within)


def test_a_reload_during_a_query_leaves_its_release_under_the_policies_it_began_with(
    app: Flask, client: FlaskClient, policy_dir: Path
) -> None:
    upload(client, app, UK, uk_records())
    exchange: Exchange = app.extensions["dpx.exchange"]
    before = exchange.policies.version
    # The reload quadruples thrifty's grant on UK and changes no bound.
    grant = policy_dir / "partners" / "thrifty.yaml"
    grant.write_text(grant.read_text().replace("{epsilon: 0.5}", "{epsilon: 2.0}", 1))
    reloaded = load_policies(policy_dir)
    assert reloaded.version != before
    exchange.store = ReloadingStore(exchange, reloaded)
    thrifty = token(app, "partner", "thrifty")

    released = client.post("/v1/queries", json=count(UK, 0.3), headers=thrifty)

    assert released.status_code == 201, released.json
    assert exchange.policies.version == reloaded.version  # the reload did land meanwhile
    # The version, the plan and the charge all come from the set the request began with:
    # the grant charged is the old one (0.5 - 0.3 left), and the release says so.
    assert released.json["policy_version"] == before
    assert released.json["budget"]["partner_remaining"] == {"epsilon": pytest.approx(0.2)}
    stored = client.get(f"/v1/releases/{released.json['release_id']}", headers=thrifty)
    assert stored.json["policy_version"] == before


class ReloadingSynopses(SynopsisStore):
    """The synopses' real store, under which a policy reload lands while an answer opens the
    synopsis: after the grant was checked, before the release document is written."""

    def __init__(self, exchange: Exchange, reload_to: PolicySet) -> None:
        super().__init__(exchange.database, exchange.keyring)
        self.exchange, self.reload_to = exchange, reload_to

    def open(self, stored: StoredSynopsis) -> Estimate:
        self.exchange.replace_policies(self.reload_to)
        return super().open(stored)


def test_a_reload_during_a_synopsis_answer_leaves_its_release_under_the_policies_it_began_with(
    app: Flask, client: FlaskClient, policy_dir: Path
) -> None:
    exchange: Exchange = app.extensions["dpx.exchange"]
    assert exchange.synopses is not None
    exchange.synopses.build(NL, actor="admin:test")
    before = exchange.policies.version
    # The reload quadruples no-police's grant on NL and changes no bound.
    grant = policy_dir / "partners" / "no-police.yaml"
    grant.write_text(grant.read_text().replace("{rho: 0.5}", "{rho: 2.0}", 1))
    reloaded = load_policies(policy_dir)
    assert reloaded.version != before
    exchange.synopses.store = ReloadingSynopses(exchange, reloaded)
    partner = token(app, "partner", "no-police")
    body = {"dataset": NL, "statistic": "count", "group_by": ["month"], "source": "synopsis"}

    released = client.post("/v1/queries", json=body, headers=partner)

    assert released.status_code == 201, released.json
    assert exchange.policies.version == reloaded.version  # the reload did land meanwhile
    # The version and the budget shown both come from the set the request began with: the
    # answer is free, so the grant shown is the old one, whole.
    assert released.json["policy_version"] == before
    assert released.json["budget"]["partner_remaining"] == {"rho": pytest.approx(0.5)}
    stored = client.get(f"/v1/releases/{released.json['release_id']}", headers=partner)
    assert stored.json["policy_version"] == before
