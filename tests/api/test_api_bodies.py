"""Request bodies: authentication before parsing, per-route size limits from Content-Length,
and hostile JSON answered with 4xx problem+json, never 5xx."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.config import Settings
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

QUERY = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.5}
QUERY_ROUTES = ["/v1/queries", "/v1/queries/estimate"]


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.json
    return body


@pytest.mark.parametrize("route", QUERY_ROUTES)
def test_a_caller_without_a_token_gets_401_not_validation_details(
    client: FlaskClient, route: str
) -> None:
    body = _problem(client.post(route, json={"statistic": "nonsense"}), 401)
    assert body["code"] == "unauthenticated"
    assert "errors" not in body and "statistic" not in body["detail"]


@pytest.mark.parametrize("route", QUERY_ROUTES)
def test_a_wrong_role_gets_403_before_its_body_is_parsed(
    client: FlaskClient, tokens: Tokens, route: str
) -> None:
    body = _problem(client.post(route, json={"statistic": "nonsense"}, headers=tokens.owner), 403)
    assert body["code"] == "forbidden" and "errors" not in body


class Unread:
    """A body of ``size`` bytes that fails the request if the server reads any of it."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = 0) -> int:
        self.position = self.size if whence == 2 else offset
        return self.position

    def read(self, *_: Any) -> bytes:
        raise AssertionError("the server read a body it should have refused")

    readline = read


@pytest.mark.parametrize("route", QUERY_ROUTES)
def test_an_oversized_query_is_413_from_its_content_length_alone(
    client: FlaskClient, tokens: Tokens, route: str
) -> None:
    size = Settings().max_query_bytes + 1
    response = client.post(
        route,
        input_stream=Unread(size),
        headers={**tokens.partner, "Content-Type": "application/json", "Content-Length": str(size)},
    )
    assert _problem(response, 413)["code"] == "payload_too_large"


@pytest.mark.parametrize("route", QUERY_ROUTES)
def test_an_unauthenticated_oversized_body_is_401_and_never_read(
    client: FlaskClient, route: str
) -> None:
    size = 30 * 1024 * 1024
    response = client.post(
        route,
        input_stream=Unread(size),
        headers={"Content-Type": "application/json", "Content-Length": str(size)},
    )
    assert _problem(response, 401)["code"] == "unauthenticated"


def test_uploads_keep_the_upload_limit(client: FlaskClient, tokens: Tokens) -> None:
    """A batch far larger than a query is accepted; one over DPX_MAX_UPLOAD_BYTES is 413."""
    rows = ["month,country,channel,caller_type,referral_source,minutes,person"] + [
        f"2024-01,GB,chat,self_concerned,social_media_ad,15,synthetic-{i:07d}" for i in range(1000)
    ]
    body = "\n".join(rows).encode()
    assert len(body) > Settings().max_query_bytes
    ok = client.post(
        "/v1/datasets/uk-helpline-2024/batches",
        data=body,
        headers={**tokens.owner, "Content-Type": "text/csv"},
    )
    assert ok.status_code == 201, ok.get_data(as_text=True)
    size = Settings().max_upload_bytes + 1
    refused = client.post(
        "/v1/datasets/uk-helpline-2024/batches",
        input_stream=Unread(size),
        headers={**tokens.owner, "Content-Type": "text/csv", "Content-Length": str(size)},
    )
    assert _problem(refused, 413)["code"] == "payload_too_large"


DEEP = "[" * 5000 + "]" * 5000
HOSTILE_QUERIES = {
    "deep_nesting": '{"dataset": "uk-helpline-2024", "statistic": "count", "filters": '
    '{"channel": ' + DEEP + '}, "epsilon": 0.5}',
    "deep_top_level": DEEP,
    "moderately_deep": '{"dataset": "uk-helpline-2024", "statistic": "count", "filters": '
    '{"channel": ' + "[" * 900 + "]" * 900 + '}, "epsilon": 0.5}',
    "5000_digit_epsilon": '{"dataset": "uk-helpline-2024", "statistic": "count", '
    '"epsilon": ' + "1" * 5000 + "}",
    "4000_digit_epsilon": '{"dataset": "uk-helpline-2024", "statistic": "count", '
    '"epsilon": ' + "1" * 4000 + "}",
    "5000_digit_max_error": '{"dataset": "uk-helpline-2024", "statistic": "count", '
    '"accuracy": {"max_error": ' + "9" * 5000 + "}}",
    "huge_exponent": '{"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 1e999}',
    "nan": '{"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": NaN}',
    "not_utf8": b'{"dataset": "\xff\xfe", "statistic": "count", "epsilon": 0.5}',
    # Which epsilon would it be? Python's parser keeps the last, other parsers the first.
    "key_twice": '{"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.5, '
    '"epsilon": 0.01}',
}


@pytest.mark.parametrize("route", QUERY_ROUTES)
@pytest.mark.parametrize("name", sorted(HOSTILE_QUERIES))
def test_hostile_json_queries_are_400_problems(
    app: Flask, client: FlaskClient, tokens: Tokens, route: str, name: str
) -> None:
    raw = HOSTILE_QUERIES[name]
    response = client.post(
        route,
        data=raw if isinstance(raw, bytes) else raw.encode(),
        headers={**tokens.partner, "Content-Type": "application/json"},
    )
    body = _problem(response, 400)
    assert body["code"] == "invalid_request"
    assert client.get("/v1/budgets", headers=tokens.partner).json["budgets"][0]["spent"] == 0


@pytest.mark.parametrize(
    "raw",
    [
        "[" + "[" * 5000 + "]" * 5000 + "]",
        '[{"month": "2024-01", "minutes": ' + "7" * 5000 + "}]",
        '[{"month": "2024-01", "minutes": ' + "7" * 4000 + "}]",
        '[{"month": ' + "[" * 900 + "]" * 900 + "}]",
        '[{"month": "2024-01", "channel": "chat", "month": "2024-02"}]',
    ],
    ids=["deep", "5000_digits", "4000_digits", "deep_value", "key_twice"],
)
def test_hostile_json_uploads_are_rejected_and_store_nothing(
    client: FlaskClient, tokens: Tokens, raw: str
) -> None:
    response = client.post(
        "/v1/datasets/uk-helpline-2024/batches",
        data=raw.encode(),
        headers={**tokens.owner, "Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500
    assert response.mimetype == "application/problem+json"
    assert client.get("/v1/datasets/uk-helpline-2024", headers=tokens.dpo).status_code == 200


@pytest.mark.parametrize(
    "after", [str(2**63), str(2**64 + 5), "9" * 5000, "-1", "1e3", "0x10"], ids=str
)
def test_audit_after_beyond_64_bits_is_a_422_problem(
    client: FlaskClient, tokens: Tokens, after: str
) -> None:
    response = client.get(f"/v1/audit?after={after[:5000]}", headers=tokens.dpo)
    assert _problem(response, 422)["code"] == "invalid_request"


def test_a_valid_query_still_works(client: FlaskClient, tokens: Tokens) -> None:
    response = client.post(
        "/v1/queries/estimate",
        data=json.dumps(QUERY),
        headers={**tokens.partner, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.json
