"""Real answers match the OpenAPI document member by member, and keep their signatures.

Every release-shaped answer (a fresh release of each statistic under both definitions, an
accuracy-target release, a synopsis answer, a cached repeat, a stored release, the release
lists, and estimates of each kind) is validated against the schema that the document gives
for its path, method and status. The document's object schemas forbid undocumented
members, so a member the server returns but the document misses fails here too.
"""

from __future__ import annotations

from typing import Any

import pytest
from dpx_client.signature import verify_signature
from flask import Flask
from flask.testing import FlaskClient
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from werkzeug.test import TestResponse

from service.store.demo import generate_contacts
from tests.conftest import BOTH_BACKENDS, Tokens, bearer

pytestmark = BOTH_BACKENDS

UK = "uk-helpline-2024"
NL = "nl-helpline-2024"


class Document:
    """The app's OpenAPI document, as a validator of the answers to its operations."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def schema(self, path: str, method: str, status: int) -> dict[str, Any]:
        response = self.spec["paths"][path][method]["responses"][str(status)]
        schema: dict[str, Any] = response["content"]["application/json"]["schema"]
        return schema

    def check(self, response: TestResponse, path: str, method: str) -> dict[str, Any]:
        """Validate one JSON answer against its documented schema; return its body."""
        schema = self.schema(path, method, response.status_code)
        body: dict[str, Any] = response.get_json()
        # The components travel with the schema, so its $refs resolve inside it.
        OAS30Validator({**schema, "components": self.spec["components"]}).validate(body)
        return body


@pytest.fixture
def document(client: FlaskClient) -> Document:
    return Document(client.get("/openapi.json").get_json())


def _upload(app: Flask, client: FlaskClient, owner: dict[str, str], dataset_id: str) -> None:
    dataset = app.extensions["dpx.exchange"].dataset(dataset_id)
    body = generate_contacts(dataset, contacts=2000, seed=3).write_csv()
    response = client.post(
        f"/v1/datasets/{dataset_id}/batches",
        data=body,
        headers={**owner, "Content-Type": "text/csv"},
    )
    assert response.status_code == 201, response.json


@pytest.fixture
def partners(app: Flask) -> dict[str, dict[str, str]]:
    """Bearer headers of the demo partners whose grants cover the queries below."""
    registry = app.extensions["dpx.tokens"]
    return {
        name: bearer(registry.issue("partner", name).token)
        for name in ("ie-helpline", "research-uni", "no-police")
    }


@pytest.fixture
def loaded(app: Flask, client: FlaskClient, tokens: Tokens) -> None:
    """Synthetic contacts in both demo datasets, and a synopsis of the zCDP one."""
    _upload(app, client, tokens.owner, UK)
    _upload(app, client, tokens.other_owner, NL)
    app.extensions["dpx.exchange"].synopses.build(NL, actor="admin:test")


QUERIES = [
    pytest.param(
        "ie-helpline", {"dataset": UK, "statistic": "count", "epsilon": 0.1}, id="pure-total"
    ),
    pytest.param(
        "ie-helpline",
        {
            "dataset": UK,
            "statistic": "count",
            "group_by": ["month"],
            "filters": {"channel": ["chat"], "month": {"from": "2024-01", "to": "2024-03"}},
            "epsilon": 0.1,
        },
        id="pure-count-filtered",
    ),
    pytest.param(
        "ie-helpline",
        {
            "dataset": UK,
            "statistic": "sum",
            "measure": "minutes",
            "group_by": ["channel"],
            "epsilon": 0.1,
        },
        id="pure-sum",
    ),
    pytest.param(
        "ie-helpline",
        {
            "dataset": UK,
            "statistic": "mean",
            "measure": "minutes",
            "group_by": ["channel"],
            "epsilon": 0.2,
        },
        id="pure-mean",
    ),
    pytest.param(
        "ie-helpline",
        {
            "dataset": UK,
            "statistic": "count",
            "group_by": ["referral_source"],
            "accuracy": {"max_error": 400, "alpha": 0.1},
        },
        id="accuracy-target",
    ),
    pytest.param(
        "research-uni",
        {"dataset": NL, "statistic": "count", "group_by": ["caller_type"], "rho": 0.02},
        id="zcdp-count",
    ),
    pytest.param(
        "research-uni",
        {
            "dataset": NL,
            "statistic": "mean",
            "measure": "minutes",
            "group_by": ["channel"],
            "rho": 0.05,
        },
        id="zcdp-mean",
    ),
    pytest.param(
        "no-police",
        {"dataset": NL, "statistic": "count", "group_by": ["month"], "source": "synopsis"},
        id="synopsis",
    ),
]


@pytest.mark.usefixtures("loaded")
@pytest.mark.parametrize(("partner", "query"), QUERIES)
def test_release_answers_match_the_document_and_verify(
    client: FlaskClient,
    partners: dict[str, dict[str, str]],
    document: Document,
    partner: str,
    query: dict[str, Any],
) -> None:
    caller = partners[partner]
    keys = client.get("/v1/signing-keys").json["keys"]

    estimate = client.post("/v1/queries/estimate", json=query, headers=caller)
    assert estimate.status_code == 200, estimate.json
    assert document.check(estimate, "/v1/queries/estimate", "post")["cached"] is False

    fresh = client.post("/v1/queries", json=query, headers=caller)
    assert fresh.status_code == 201, fresh.json
    release = document.check(fresh, "/v1/queries", "post")
    assert release["rows"] and verify_signature(release, keys)

    repeat = client.post("/v1/queries", json=query, headers=caller)
    assert repeat.status_code == 200
    assert document.check(repeat, "/v1/queries", "post")["cached"] is True

    if "source" not in query:
        # A stored release answers its repeats for free, and the estimate says so.
        again = client.post("/v1/queries/estimate", json=query, headers=caller)
        assert document.check(again, "/v1/queries/estimate", "post")["cached"] is True

    path = "/v1/releases/{release_id}"
    stored = client.get(f"/v1/releases/{release['release_id']}", headers=caller)
    assert stored.status_code == 200
    body = document.check(stored, path, "get")
    # The stored release is the signed part of the answer, member for member.
    assert body == {k: v for k, v in release.items() if k not in ("cached", "budget")}
    assert verify_signature(body, keys)


@pytest.mark.usefixtures("loaded")
def test_release_lists_match_the_document(
    client: FlaskClient, tokens: Tokens, partners: dict[str, dict[str, str]], document: Document
) -> None:
    for param in QUERIES:
        partner, query = param.values
        response = client.post("/v1/queries", json=query, headers=partners[str(partner)])
        assert response.status_code == 201, response.json
    keys = client.get("/v1/signing-keys").json["keys"]
    own = sum(1 for param in QUERIES if param.values[0] == "ie-helpline")
    for caller, count in ((partners["ie-helpline"], own), (tokens.dpo, len(QUERIES))):
        first = client.get("/v1/releases?limit=3", headers=caller)
        assert first.status_code == 200
        page = document.check(first, "/v1/releases", "get")
        rest = client.get(f"/v1/releases?cursor={page['next']}", headers=caller)
        releases = page["releases"] + document.check(rest, "/v1/releases", "get")["releases"]
        assert len(releases) == count
        assert all(verify_signature(release, keys) for release in releases)


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/v1/queries", "post", 201),
        ("/v1/queries", "post", 200),
        ("/v1/queries/estimate", "post", 200),
        ("/v1/releases/{release_id}", "get", 200),
    ],
)
def test_documented_examples_match_their_schemas(
    document: Document, path: str, method: str, status: int
) -> None:
    response = document.spec["paths"][path][method]["responses"][str(status)]
    content = response["content"]["application/json"]
    schema = {**content["schema"], "components": document.spec["components"]}
    OAS30Validator(schema).validate(content["example"])


def test_the_validator_refuses_an_undocumented_member(document: Document) -> None:
    """The check above would catch a member that the server adds but the document misses."""
    schema = document.schema("/v1/queries", "post", 201)
    validator = OAS30Validator({**schema, "components": document.spec["components"]})
    release = {"release_id": "rel_1", "privacy": {"definition": "pure", "epsilon_spent": 0.1}}
    with pytest.raises(ValidationError, match="epsilon_spent"):
        validator.validate(release)
    row = {"rows": [{"month": "2024-01", "value": 3, "ci": [1, 5]}]}
    validator.validate(row)
    with pytest.raises(ValidationError):
        validator.validate({"rows": [{"month": "2024-01", "value": "3", "ci": [1, 5]}]})
