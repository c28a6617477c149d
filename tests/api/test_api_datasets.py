"""GET /v1/datasets and /v1/datasets/{id}: what each role sees, and problem+json errors."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS


def test_partner_sees_only_granted_datasets_with_its_grant(
    client: FlaskClient, tokens: Tokens
) -> None:
    response = client.get("/v1/datasets", headers=tokens.partner)
    assert response.status_code == 200
    datasets = {d["id"]: d for d in response.json["datasets"]}
    assert set(datasets) == {"uk-helpline-2024", "nl-helpline-2024"}
    uk = datasets["uk-helpline-2024"]
    assert uk["grant"]["budget"] == 2.0
    assert uk["grant"]["remaining"] == 2.0
    assert uk["grant"]["statistics"] == ["count"]
    assert uk["privacy"]["unit"] == "person"
    assert uk["privacy"]["max_contacts_per_person"] == 10
    assert uk["privacy"]["global_budget"] == 8.0
    month = next(d for d in uk["dimensions"] if d["name"] == "month")
    assert month["values"][0] == "2024-01" and month["values"][-1] == "2024-12"
    assert uk["measures"] == [{"name": "minutes", "min": 0, "max": 120}]
    assert datasets["nl-helpline-2024"]["privacy"]["definition"] == "zcdp"
    assert datasets["nl-helpline-2024"]["privacy"]["budget_unit"] == "rho"


def test_dpo_sees_every_dataset_and_owner_only_its_own(client: FlaskClient, tokens: Tokens) -> None:
    dpo = client.get("/v1/datasets", headers=tokens.dpo).json["datasets"]
    assert {d["id"] for d in dpo} == {"uk-helpline-2024", "nl-helpline-2024", "be-helpline-2024"}
    assert all(d["grant"] is None for d in dpo)
    owner = client.get("/v1/datasets", headers=tokens.owner).json["datasets"]
    assert [d["id"] for d in owner] == ["uk-helpline-2024"]


def test_one_dataset_and_invisible_ones_are_404(client: FlaskClient, tokens: Tokens) -> None:
    one = client.get("/v1/datasets/uk-helpline-2024", headers=tokens.partner)
    assert one.status_code == 200 and one.json["id"] == "uk-helpline-2024"
    for dataset in ("be-helpline-2024", "no-such-dataset"):
        response = client.get(f"/v1/datasets/{dataset}", headers=tokens.partner)
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"
        assert response.json["code"] == "not_found"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").json["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json["checks"] == {"database": "ok", "keyring": "ok", "policies": "ok"}


def test_unknown_route_is_problem_json(client: FlaskClient) -> None:
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert set(response.json) >= {"type", "title", "status", "detail", "code", "request_id"}
