"""HTTP details that callers and browsers rely on: no caching of answers, Allow on 405,
a locked-down docs page, expiring tokens, no stray static route, UTF-8 uploads only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from service.app import create_app
from service.config import Settings
from service.database.schema import tokens as token_table
from tests.conftest import BOTH_BACKENDS, Tokens, bearer

pytestmark = BOTH_BACKENDS


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("get", "/v1/datasets", "partner"),
        ("get", "/v1/budgets", "partner"),
        ("get", "/v1/releases", "dpo"),
        ("get", "/v1/audit", "dpo"),
        ("get", "/v1/datasets/xx", "partner"),
        ("get", "/v1/datasets", None),
        ("get", "/healthz", None),
        ("get", "/openapi.json", None),
        ("post", "/v1/queries/estimate", "partner"),
    ],
)
def test_every_api_answer_is_marked_no_store(
    client: FlaskClient, tokens: Tokens, method: str, path: str, role: str | None
) -> None:
    headers = getattr(tokens, role) if role else {}
    response = getattr(client, method)(path, headers=headers, json={} if method == "post" else None)
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("delete", "/v1/queries", {"POST"}),
        ("get", "/v1/queries/estimate", {"POST"}),
        ("put", "/v1/datasets", {"GET", "HEAD"}),
        ("post", "/v1/releases", {"GET", "HEAD"}),
    ],
)
def test_405_names_the_allowed_methods(
    client: FlaskClient, tokens: Tokens, method: str, path: str, allowed: set[str]
) -> None:
    response = getattr(client, method)(path, headers=tokens.partner)
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"
    assert set(response.headers["Allow"].replace(" ", "").split(",")) - {"OPTIONS"} == allowed


def test_the_docs_page_cannot_be_framed_and_runs_only_its_own_scripts(
    client: FlaskClient,
) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert "default-src 'none'" in policy and "unsafe-eval" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"


def test_an_expired_token_is_401_like_an_unknown_one(app: Flask, client: FlaskClient) -> None:
    issued = app.extensions["dpx.tokens"].issue("partner", "no-police")
    assert client.get("/v1/datasets", headers=bearer(issued.token)).status_code == 200
    with app.extensions["dpx.database"].write() as conn:
        conn.execute(
            update(token_table)
            .where(token_table.c.id == issued.token_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = client.get("/v1/datasets", headers=bearer(issued.token))
    assert response.status_code == 401
    assert response.json["detail"] == "missing, malformed, unknown or revoked token"


def test_a_token_expiring_later_still_works(app: Flask, client: FlaskClient) -> None:
    issued = app.extensions["dpx.tokens"].issue("partner", "no-police")
    with app.extensions["dpx.database"].write() as conn:
        conn.execute(
            update(token_table)
            .where(token_table.c.id == issued.token_id)
            .values(expires_at=datetime.now(UTC) + timedelta(hours=1))
        )
    assert client.get("/v1/datasets", headers=bearer(issued.token)).status_code == 200


def test_no_route_serves_files_from_the_working_directory(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdir = tmp_path / "cwd"
    (workdir / "static").mkdir(parents=True)
    (workdir / "static" / "secret.txt").write_text("not for the web")
    monkeypatch.chdir(workdir)
    app = create_app(settings)
    try:
        response = app.test_client().get("/static/secret.txt")
        assert response.status_code == 404
        assert b"not for the web" not in response.data
        assert not any(rule.rule.startswith("/static/") for rule in app.url_map.iter_rules())
    finally:
        app.extensions["dpx.database"].dispose()


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", "iso-8859-1", "cp1252"])
@pytest.mark.parametrize("media", ["text/csv", "application/json"])
def test_uploads_in_other_charsets_are_refused(
    client: FlaskClient, tokens: Tokens, media: str, charset: str
) -> None:
    response = client.post(
        "/v1/datasets/uk-helpline-2024/batches",
        data="month\n2024-01\n".encode(charset.replace("utf-16", "utf-16-le")),
        headers={**tokens.owner, "Content-Type": f"{media}; charset={charset}"},
    )
    assert 400 <= response.status_code < 500
    assert "send UTF-8" in response.json["detail"]


def test_the_openapi_document_does_not_accept_a_null_measure(client: FlaskClient) -> None:
    schema = client.get("/openapi.json").json["components"]["schemas"]["Query"]
    measure = schema["properties"]["measure"]
    assert measure.get("nullable") is not True and "null" not in str(measure.get("type"))


def test_a_null_measure_is_refused_by_the_server_too(client: FlaskClient, tokens: Tokens) -> None:
    response = client.post(
        "/v1/queries/estimate",
        json={"dataset": "uk-helpline-2024", "statistic": "sum", "measure": None, "epsilon": 0.1},
        headers=tokens.partner,
    )
    assert 400 <= response.status_code < 500
