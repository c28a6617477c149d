"""The OpenAPI document describes the whole API, and the docs page works with no network."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from service.policy.model import STATISTICS

# Not operations of the JSON API: static files (Flask's own, the docs page's vendored
# assets), Prometheus' text exposition at /metrics, and the browser dashboard (HTML pages
# with their own sign-in form). Every other route must be in the OpenAPI document.
NOT_OPERATIONS = {"static", "docs.static", "metrics"}
NOT_API_BLUEPRINTS = {"dashboard"}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}
PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json", "/docs", "/v1/signing-keys"}


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.get_json()
    return document


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = spec["components"][kind][name]
    return node


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def test_the_document_is_valid_openapi_3(spec: dict[str, Any]) -> None:
    validate(spec)
    assert spec["openapi"].startswith("3.")


def test_every_route_of_the_app_is_documented(app: Flask, spec: dict[str, Any]) -> None:
    documented = {(path, method) for path, method, _ in _operations(spec)}
    missing = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NOT_OPERATIONS or rule.endpoint.split(".")[0] in NOT_API_BLUEPRINTS:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            if (path, method.lower()) not in documented:
                missing.append(f"{method} {path}")
    assert missing == []


def test_every_error_response_is_problem_json(spec: dict[str, Any]) -> None:
    for path, method, operation in _operations(spec):
        errors = {
            status: _resolve(spec, response)
            for status, response in operation["responses"].items()
            if status == "default" or int(status) >= 400
        }
        assert "default" in errors, f"{method} {path}"
        for status, response in errors.items():
            content = response["content"]
            assert list(content) == ["application/problem+json"], f"{method} {path} {status}"
            assert content["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"
            }, f"{method} {path} {status}"
            for example in content["application/problem+json"]["examples"].values():
                assert example["value"]["status"] == (500 if status == "default" else int(status))


def test_flask_smorest_error_schema_is_not_used(spec: dict[str, Any]) -> None:
    assert "Error" not in spec["components"]["schemas"]
    problem = spec["components"]["schemas"]["Problem"]["properties"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem)


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/v1/datasets", "get", {"401", "403"}),
        ("/v1/datasets/{dataset_id}", "get", {"401", "403", "404"}),
        ("/v1/datasets/{dataset_id}/batches", "post", {"401", "403", "404", "413", "422"}),
        ("/v1/queries/estimate", "post", {"400", "401", "403", "404", "413", "422"}),
        ("/v1/queries", "post", {"400", "401", "403", "404", "409", "413", "422"}),
        ("/v1/releases", "get", {"401", "403", "422"}),
        ("/v1/releases/{release_id}", "get", {"401", "403", "404"}),
        ("/v1/budgets", "get", {"401", "403"}),
        ("/v1/audit", "get", {"401", "403", "422"}),
        ("/readyz", "get", {"503"}),
    ],
)
def test_routes_document_the_errors_they_return(
    spec: dict[str, Any], path: str, method: str, statuses: set[str]
) -> None:
    responses = spec["paths"][path][method]["responses"]
    assert statuses <= set(responses)


def test_protected_routes_need_a_bearer_token_and_public_ones_do_not(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, method, operation in _operations(spec):
        expected = [] if path in PUBLIC_PATHS else [{"bearer": []}]
        assert operation["security"] == expected, f"{method} {path}"
        assert ("401" in operation["responses"]) == (path not in PUBLIC_PATHS), path


def test_queries_document_examples_and_the_idempotency_key(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/v1/queries"]["post"]
    body = operation["requestBody"]["content"]["application/json"]
    assert "count_by_month" in body["examples"]
    assert operation["responses"]["201"]["content"]["application/json"]["example"]["rows"]
    assert [p["name"] for p in operation["parameters"]] == ["Idempotency-Key"]
    forbidden = _resolve(spec, operation["responses"]["403"])
    codes = set(forbidden["content"]["application/problem+json"]["examples"])
    assert codes == {"forbidden", "budget_exhausted"}


def test_the_statistics_documented_are_those_a_query_accepts(spec: dict[str, Any]) -> None:
    query = spec["components"]["schemas"]["Query"]
    assert query["properties"]["statistic"]["enum"] == list(STATISTICS)
    assert list(STATISTICS) == ["count", "sum", "mean"]


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "data-spec-url") and value:
                self.urls.append(value)


def test_docs_page_loads_only_assets_that_dpx_serves(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    parser = _Assets()
    parser.feed(page.get_data(as_text=True))
    assert len(parser.urls) == 4
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        with client.get(url) as asset:
            assert asset.status_code == 200, url
            assert asset.get_data(), url
    assert "/openapi.json" in parser.urls


def test_docs_start_script_never_calls_the_public_validator(client: FlaskClient) -> None:
    with client.get("/docs/assets/dpx-docs.js") as response:
        script = response.get_data(as_text=True)
    assert "validatorUrl: null" in script
    assert "http" not in script
