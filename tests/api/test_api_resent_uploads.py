"""A re-sent upload is not counted twice: Idempotency-Key retries get the first batch, and a
byte-identical copy of a stored batch is refused unless the owner allows it."""

from __future__ import annotations

import hashlib

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from tests.api.test_api_batches import _csv, _snapshot
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

URL = "/v1/datasets/uk-helpline-2024/batches"
BODY = _csv(
    "2024-01,GB,chat,self_concerned,police_warning,30",
    "2024-02,IE,phone,professional,other,5",
)
OTHER_BODY = _csv("2024-03,GB,web,family_friend,other,7")


def _post(
    client: FlaskClient, tokens: Tokens, body: bytes, *, key: str | None = None, query: str = ""
) -> TestResponse:
    headers = {**tokens.owner, "Content-Type": "text/csv"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post(URL + query, data=body, headers=headers)


def _batch_ids(app: Flask) -> list[str]:
    return [row[0] for row in _snapshot(app)["batches"]]


def test_identical_copy_is_refused_naming_the_stored_batch(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    first = _post(client, tokens, BODY)
    assert first.status_code == 201, first.json
    before = _snapshot(app)
    again = _post(client, tokens, BODY)
    assert again.status_code == 409
    assert again.mimetype == "application/problem+json"
    assert again.json["code"] == "duplicate_batch"
    assert again.json["batch_id"] == first.json["batch_id"]
    assert first.json["batch_id"] in again.json["detail"]
    assert "allow_duplicate=true" in again.json["detail"]
    assert _snapshot(app) == before


def test_owner_may_store_a_copy_on_purpose(app: Flask, client: FlaskClient, tokens: Tokens) -> None:
    first = _post(client, tokens, BODY)
    copy = _post(client, tokens, BODY, query="?allow_duplicate=true")
    assert copy.status_code == 201, copy.json
    assert copy.json["batch_id"] != first.json["batch_id"]
    assert sorted(_batch_ids(app)) == sorted([first.json["batch_id"], copy.json["batch_id"]])
    cells = app.extensions["dpx.components"].store.cells(
        app.extensions["dpx.exchange"].dataset("uk-helpline-2024")
    )
    assert int(cells["contacts"].sum()) == 4  # both copies count, as the owner asked


def test_a_body_differing_by_one_byte_is_a_new_batch(client: FlaskClient, tokens: Tokens) -> None:
    assert _post(client, tokens, BODY).status_code == 201
    assert _post(client, tokens, BODY.replace(b",30\n", b",31\n")).status_code == 201


def test_retry_with_the_same_key_returns_the_first_answer_and_stores_nothing(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    first = _post(client, tokens, BODY, key="upload-2024-01")
    assert first.status_code == 201, first.json
    before = _snapshot(app)
    for _ in range(3):
        retry = _post(client, tokens, BODY, key="upload-2024-01")
        assert retry.status_code == 201, retry.json
        assert retry.json == first.json
    # Even a retry that asks to allow duplicates stores nothing: it is the same upload.
    retry = _post(client, tokens, BODY, key="upload-2024-01", query="?allow_duplicate=true")
    assert retry.json == first.json
    assert _snapshot(app) == before


def test_the_same_key_with_another_body_is_a_conflict(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    assert _post(client, tokens, BODY, key="k1").status_code == 201
    before = _snapshot(app)
    clash = _post(client, tokens, OTHER_BODY, key="k1")
    assert clash.status_code == 409
    assert clash.json["code"] == "conflict"
    assert "Idempotency-Key" in clash.json["detail"]
    # The same bytes as another form are another request too.
    assert _post(client, tokens, BODY, key="k1", query="?form=cells").status_code in (409, 422)
    assert _snapshot(app) == before


def test_a_new_key_does_not_make_a_copy_new(client: FlaskClient, tokens: Tokens) -> None:
    first = _post(client, tokens, BODY, key="k1")
    copy = _post(client, tokens, BODY, key="k2")
    assert copy.status_code == 409
    assert copy.json["batch_id"] == first.json["batch_id"]


def test_a_rejected_upload_leaves_its_key_unused(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    bad = _post(client, tokens, _csv("2025-13,GB,chat,self_concerned,other,10"), key="k1")
    assert bad.status_code == 422
    assert _post(client, tokens, BODY, key="k1").status_code == 201
    assert len(_batch_ids(app)) == 1


def test_unusable_keys_are_refused(app: Flask, client: FlaskClient, tokens: Tokens) -> None:
    for key in ("x" * 201, "tab\there"):
        response = _post(client, tokens, BODY, key=key)
        assert response.status_code == 400
        assert response.json["field"] == "Idempotency-Key"
    assert _batch_ids(app) == []


def test_stored_digest_is_keyed_not_a_plain_hash(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _post(client, tokens, BODY)
    with app.extensions["dpx.database"].read() as conn:
        digest = conn.execute(text("SELECT digest FROM batches")).scalar_one()
    assert len(digest) == 64
    plain = {
        hashlib.sha256(BODY).hexdigest(),
        hashlib.sha256(b"uk-helpline-2024\0" + BODY).hexdigest(),
    }
    assert digest not in plain
