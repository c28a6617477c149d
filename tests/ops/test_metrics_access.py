"""Who may read /metrics, and what its labels may name: off without DPX_METRICS_TOKEN,
401 without that exact bearer token, and no dataset id unless dataset labels are on."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.app import create_app
from service.config import Settings
from tests.conftest import BOTH_BACKENDS, bearer

pytestmark = BOTH_BACKENDS

TOKEN = "metrics-scraper-secret-0123456789"
DATASETS = ("uk-helpline-2024", "nl-helpline-2024", "be-helpline-2024")
PARTNERS = ("no-police", "interpol-sg", "ie-helpline", "research-uni")


@pytest.fixture
def metrics_app(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Flask]:
    app = create_app(
        dataclasses.replace(settings, metrics_token=TOKEN, **getattr(request, "param", {}))
    )
    yield app
    app.extensions["dpx.database"].dispose()


def _answer_a_query(app: Flask) -> None:
    client = app.test_client()
    partner = bearer(app.extensions["dpx.tokens"].issue("partner", "no-police").token)
    query = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.1}
    assert client.post("/v1/queries", json=query, headers=partner).status_code == 201


def test_metrics_are_off_without_a_metrics_token(client: FlaskClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 404 and b"dpx_" not in response.data


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "]
)
def test_metrics_need_the_exact_bearer_token(metrics_app: Flask, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = metrics_app.test_client().get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json" and b"dpx_" not in response.data


def _scrape(app: Flask) -> str:
    response = app.test_client().get("/metrics", headers=bearer(TOKEN))
    assert response.status_code == 200
    return response.get_data(as_text=True)


def _named(text: str) -> set[str]:
    return {line for line in text.splitlines() if any(n in line for n in DATASETS + PARTNERS)}


def _all_releases(text: str) -> float:
    prefix = 'dpx_releases_total{dataset="all"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_metrics_name_no_dataset_or_partner_by_default(metrics_app: Flask) -> None:
    # Counters are per process, so the test compares a scrape before and after its query.
    before = _scrape(metrics_app)
    _answer_a_query(metrics_app)
    after = _scrape(metrics_app)
    assert _all_releases(after) == _all_releases(before) + 1
    assert _named(after) == _named(before)
    assert "dpx_budget_spent" not in after


@pytest.mark.parametrize("metrics_app", [{"metrics_dataset_labels": True}], indirect=True)
def test_dataset_labels_appear_when_configured(metrics_app: Flask) -> None:
    _answer_a_query(metrics_app)
    text = _scrape(metrics_app)
    assert 'dpx_releases_total{dataset="uk-helpline-2024"}' in text
    assert 'dpx_budget_spent{dataset="uk-helpline-2024",unit="epsilon"} 0.1' in text
    for name in PARTNERS:
        assert name not in text
