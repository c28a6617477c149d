"""Tokens and roles over HTTP: every bad token looks alike (401); wrong role is 403."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.crypto.tokens import new_token
from tests.conftest import BOTH_BACKENDS, Tokens, bearer

pytestmark = BOTH_BACKENDS


def _problem(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == code
    return response.json


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        "Bearer " + new_token(),  # well-formed, never issued
        "Token " + new_token(),
    ],
)
def test_bad_tokens_are_all_the_same_401(client: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    body = _problem(client.get("/v1/datasets", headers=headers), 401, "unauthenticated")
    assert body["detail"] == "missing, malformed, unknown or revoked token"


def test_revoked_token_is_401_like_an_unknown_one(app: Flask, client: FlaskClient) -> None:
    registry = app.extensions["dpx.tokens"]
    issued = registry.issue("partner", "no-police")
    assert client.get("/v1/datasets", headers=bearer(issued.token)).status_code == 200
    registry.revoke(issued.token_id)
    revoked = _problem(
        client.get("/v1/datasets", headers=bearer(issued.token)), 401, "unauthenticated"
    )
    unknown = _problem(
        client.get("/v1/datasets", headers=bearer(new_token())), 401, "unauthenticated"
    )
    assert {k: v for k, v in revoked.items() if k != "request_id"} == {
        k: v for k, v in unknown.items() if k != "request_id"
    }


def test_rotated_token_keeps_working_for_its_grace_then_stops(
    app: Flask, client: FlaskClient
) -> None:
    registry = app.extensions["dpx.tokens"]
    old = registry.issue("partner", "no-police")
    new = registry.rotate(old.token_id, grace=timedelta(hours=1))
    assert client.get("/v1/datasets", headers=bearer(old.token)).status_code == 200
    assert client.get("/v1/datasets", headers=bearer(new.token)).status_code == 200
    immediate = registry.rotate(new.token_id, grace=timedelta(0))
    assert client.get("/v1/datasets", headers=bearer(new.token)).status_code == 401
    assert client.get("/v1/datasets", headers=bearer(immediate.token)).status_code == 200


def test_tokens_are_stored_only_as_hashes(app: Flask) -> None:
    registry = app.extensions["dpx.tokens"]
    issued = registry.issue("dpo", None)
    database = app.extensions["dpx.database"]
    from sqlalchemy import text

    with database.read() as conn:
        rows = [tuple(str(v) for v in row) for row in conn.execute(text("SELECT * FROM tokens"))]
        audit = [
            tuple(str(v) for v in row) for row in conn.execute(text("SELECT * FROM audit_log"))
        ]
    assert all(issued.token not in value for row in rows + audit for value in row)
    assert any(issued.token_id in value for row in rows for value in row)


def test_wrong_role_is_403(client: FlaskClient, tokens: Tokens) -> None:
    query = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.1}
    _problem(client.post("/v1/queries", json=query, headers=tokens.owner), 403, "forbidden")
    _problem(client.post("/v1/queries", json=query, headers=tokens.dpo), 403, "forbidden")
    _problem(client.get("/v1/audit", headers=tokens.partner), 403, "forbidden")
    _problem(
        client.post(
            "/v1/datasets/uk-helpline-2024/batches",
            data=b"x",
            headers={**tokens.partner, "Content-Type": "text/csv"},
        ),
        403,
        "forbidden",
    )
    # An owner of another dataset may not upload here; to it, the dataset does not exist.
    _problem(
        client.post(
            "/v1/datasets/uk-helpline-2024/batches",
            data=b"x",
            headers={**tokens.other_owner, "Content-Type": "text/csv"},
        ),
        404,
        "not_found",
    )
