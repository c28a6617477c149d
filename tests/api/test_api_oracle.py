"""No existence oracle: a dataset the caller may not see answers exactly like one that does
not exist, on every endpoint, and nothing of its schema appears in any answer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import BOTH_BACKENDS, Tokens, bearer

pytestmark = BOTH_BACKENDS

HIDDEN = "be-helpline-2024"  # exists; the partner no-police has no grant on it
MISSING = "xx-helpline-2024"  # does not exist
# Words of the hidden dataset's schema and privacy definition that must never leak.
SCHEMA_WORDS = ["region", "flanders", "wallonia", "brussels", "email", "web", "zcdp", "rho"]

QUERIES = [
    pytest.param({"statistic": "count", "epsilon": 0.1}, id="valid"),
    pytest.param({"statistic": "count", "group_by": ["nonsense"], "epsilon": 0.1}, id="bad-dim"),
    pytest.param(
        {"statistic": "count", "filters": {"region": ["atlantis"]}, "epsilon": 0.1},
        id="bad-value",
    ),
    pytest.param({"statistic": "sum", "measure": "nonsense", "epsilon": 0.1}, id="bad-measure"),
    pytest.param({"statistic": "count", "rho": 0.1}, id="wrong-definition"),
    pytest.param({"statistic": "count", "accuracy": {"max_error": 5}}, id="accuracy"),
    pytest.param(
        {"statistic": "sum", "measure": "nonsense", "accuracy": {"max_error": 50}},
        id="accuracy-bad-measure",
    ),
    pytest.param({"statistic": "count", "source": "synopsis"}, id="synopsis"),
    pytest.param(
        {"statistic": "count", "group_by": ["nonsense"], "source": "synopsis"},
        id="synopsis-bad-dim",
    ),
]

# nl-helpline-2024 declares a synopsis, which questions with an accuracy target or a
# ``source`` consult before the charged path: ie-helpline holds no grant on it.
SYNOPSIS_HIDDEN = "nl-helpline-2024"
SYNOPSIS_SCHEMA_WORDS = ["caller_type", "police_warning", "minutes", "zcdp", "rho"]


def _shape(response: Any, dataset: str) -> tuple[int, str, dict[str, Any]]:
    """Status, content type and body of an answer, with the dataset id and request id masked."""
    body = {
        key: (value.replace(dataset, "<id>") if isinstance(value, str) else value)
        for key, value in response.json.items()
        if key != "request_id"
    }
    return response.status_code, response.mimetype, body


def _assert_reveals_nothing(response: Any, words: list[str] = SCHEMA_WORDS) -> None:
    text = response.get_data(as_text=True).lower()
    for word in words:
        assert word not in text, f"{word!r} leaked in {text}"


@pytest.mark.parametrize("route", ["/v1/queries", "/v1/queries/estimate"])
@pytest.mark.parametrize("query", QUERIES)
def test_a_query_on_a_dataset_without_a_grant_looks_like_one_on_no_dataset(
    client: FlaskClient, tokens: Tokens, route: str, query: dict[str, Any]
) -> None:
    hidden = client.post(route, json={"dataset": HIDDEN, **query}, headers=tokens.partner)
    missing = client.post(route, json={"dataset": MISSING, **query}, headers=tokens.partner)
    assert hidden.status_code == 404
    assert _shape(hidden, HIDDEN) == _shape(missing, MISSING)
    _assert_reveals_nothing(hidden)


@pytest.mark.parametrize("route", ["/v1/queries", "/v1/queries/estimate"])
@pytest.mark.parametrize("query", QUERIES)
def test_a_dataset_with_a_synopsis_and_no_grant_looks_like_no_dataset(
    app: Flask, client: FlaskClient, route: str, query: dict[str, Any]
) -> None:
    partner = bearer(app.extensions["dpx.tokens"].issue("partner", "ie-helpline").token)
    hidden = client.post(route, json={"dataset": SYNOPSIS_HIDDEN, **query}, headers=partner)
    missing = client.post(route, json={"dataset": MISSING, **query}, headers=partner)
    assert hidden.status_code == 404
    assert _shape(hidden, SYNOPSIS_HIDDEN) == _shape(missing, MISSING)
    _assert_reveals_nothing(hidden, SYNOPSIS_SCHEMA_WORDS)


def test_reading_a_dataset_without_a_grant_looks_like_reading_no_dataset(
    client: FlaskClient, tokens: Tokens
) -> None:
    hidden = client.get(f"/v1/datasets/{HIDDEN}", headers=tokens.partner)
    missing = client.get(f"/v1/datasets/{MISSING}", headers=tokens.partner)
    assert hidden.status_code == 404
    assert _shape(hidden, HIDDEN) == _shape(missing, MISSING)
    _assert_reveals_nothing(hidden)


@pytest.mark.parametrize("content_type", ["text/csv", "application/json"])
def test_an_upload_to_another_helplines_dataset_looks_like_one_to_no_dataset(
    client: FlaskClient, tokens: Tokens, content_type: str
) -> None:
    body = b"region,channel\nnowhere,pigeon\n" if content_type == "text/csv" else b"[{}]"
    headers = {**tokens.other_owner, "Content-Type": content_type}  # owns nl-helpline-2024
    hidden = client.post(f"/v1/datasets/{HIDDEN}/batches", data=body, headers=headers)
    other = client.post("/v1/datasets/uk-helpline-2024/batches", data=body, headers=headers)
    missing = client.post(f"/v1/datasets/{MISSING}/batches", data=body, headers=headers)
    assert hidden.status_code == other.status_code == 404
    assert _shape(hidden, HIDDEN) == _shape(missing, MISSING)
    assert _shape(other, "uk-helpline-2024") == _shape(missing, MISSING)
    _assert_reveals_nothing(hidden)


def test_a_query_without_a_grant_charges_nothing_and_costs_no_pricing_time(
    client: FlaskClient, tokens: Tokens
) -> None:
    """The grant is checked before the query is priced: an accuracy target is not searched."""
    query = {"dataset": HIDDEN, "statistic": "count", "accuracy": {"max_error": 1e-6}}
    started = time.perf_counter()
    for _ in range(20):
        assert (
            client.post("/v1/queries/estimate", json=query, headers=tokens.partner).status_code
            == 404
        )
    assert time.perf_counter() - started < 2.0
