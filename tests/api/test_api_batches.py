"""POST /v1/datasets/{id}/batches: atomic, validated uploads; a rejected batch stores nothing."""

from __future__ import annotations

import json
from dataclasses import replace

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from service.config import Settings
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

HEADER = "month,country,channel,caller_type,referral_source,minutes"


def _csv(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join((header, *rows)) + "\n").encode()


def _snapshot(app: Flask) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, blobs included: storage compared byte for byte."""
    database = app.extensions["dpx.database"]
    tables = [
        "batches",
        "dataset_documents",
        "tokens",
        "budget_accounts",
        "charges",
        "releases",
        "audit_log",
        "audit_head",
    ]
    with database.read() as conn:
        return {
            t: sorted(
                (
                    tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in conn.execute(text(f"SELECT * FROM {t}"))  # noqa: S608
                ),
                key=repr,
            )
            for t in tables
        }


def _upload(
    client: FlaskClient,
    tokens: Tokens,
    body: bytes,
    content_type: str = "text/csv",
    form: str = "contacts",
):  # type: ignore[no-untyped-def]
    return client.post(
        f"/v1/datasets/uk-helpline-2024/batches?form={form}",
        data=body,
        headers={**tokens.owner, "Content-Type": content_type},
    )


def test_contact_csv_is_aggregated_and_stored_encrypted(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    body = _csv(
        "2024-01,GB,chat,self_concerned,police_warning,30",
        "2024-01,GB,chat,self_concerned,police_warning,200",
        "2024-02,IE,phone,professional,other,5",
    )
    response = _upload(client, tokens, body)
    assert response.status_code == 201, response.json
    batch = response.json
    assert batch["rows"] == 3 and batch["contacts"] == 3 and batch["cells"] == 2
    assert batch["clamped"] == 1  # 200 minutes clamped to the bound of 120
    exchange = app.extensions["dpx.exchange"]
    cells = app.extensions["dpx.components"].store.cells(exchange.dataset("uk-helpline-2024"))
    assert sorted(cells["contacts"].to_list()) == [1, 2]
    assert sorted(cells["minutes"].to_list()) == [5, 150]
    with app.extensions["dpx.database"].read() as conn:
        blob = bytes(conn.execute(text("SELECT blob FROM batches")).scalar_one())
    assert b"police_warning" not in blob and b"self_concerned" not in blob


def test_json_records_and_cell_form(client: FlaskClient, tokens: Tokens) -> None:
    records = [
        {
            "month": "2024-03",
            "country": "GB",
            "channel": "web",
            "caller_type": "family_friend",
            "referral_source": "social_media_ad",
            "minutes": 12,
        }
    ]
    response = _upload(client, tokens, json.dumps(records).encode(), "application/json")
    assert response.status_code == 201, response.json
    cells = _csv(
        "2024-03,GB,web,family_friend,social_media_ad,40,400",
        header=HEADER.replace("minutes", "contacts,minutes"),
    )
    response = _upload(client, tokens, cells, form="cells")
    assert response.status_code == 201, response.json
    assert response.json["contacts"] == 40


def test_person_column_truncates_over_contributors_and_is_never_stored(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    rows = [f"2024-01,GB,chat,self_concerned,other,10,p-secret-{i // 12}" for i in range(24)]
    response = _upload(client, tokens, _csv(*rows, header=HEADER + ",person"))
    assert response.status_code == 201, response.json
    assert response.json["truncated"] == 4  # two people, 12 contacts each, bound 10
    assert response.json["contacts"] == 20
    snapshot = json.dumps(_snapshot(app), default=repr)
    assert "p-secret" not in snapshot


def test_rejected_batch_lists_rows_and_changes_nothing(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    assert (
        _upload(client, tokens, _csv("2024-01,GB,chat,self_concerned,other,10")).status_code == 201
    )
    before = _snapshot(app)
    body = _csv(
        "2024-01,GB,chat,self_concerned,other,10",
        "2025-13,GB,chat,self_concerned,other,10",
        "2024-01,FR,fax,self_concerned,other,ten",
    )
    response = _upload(client, tokens, body)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "invalid_request"
    problems = {(e["row"], e["column"]) for e in response.json["errors"]}
    assert {(2, "month"), (3, "country"), (3, "channel"), (3, "minutes")} <= problems
    assert _snapshot(app) == before


def test_malformed_uploads_are_rejected_without_change(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    client.get("/v1/datasets", headers=tokens.owner)  # stamps the token's first use
    before = _snapshot(app)
    cases = [
        (b"", "text/csv"),
        (_csv("2024-01,GB,chat,self_concerned,other,10", header=HEADER + ",extra"), "text/csv"),
        (b"{not json", "application/json"),
        (b'{"month": "2024-01"}', "application/json"),
        (b"month\n2024-01\n", "application/xml"),
    ]
    for body, content_type in cases:
        response = _upload(client, tokens, body, content_type)
        assert response.status_code in (400, 415, 422), (body, response.json)
        assert response.mimetype == "application/problem+json"
    response = _upload(client, tokens, b"x", form="rows")
    assert response.status_code == 422 and "form" in response.json["detail"]
    assert _snapshot(app) == before


def test_oversized_upload_is_413_and_changes_nothing(
    settings: Settings, tokens: Tokens, app: Flask
) -> None:
    from service.app import create_app

    small = create_app(replace(settings, max_upload_bytes=1024))
    small.test_client().get("/v1/datasets", headers=tokens.owner)  # stamps first use
    before = _snapshot(app)
    body = _csv(*["2024-01,GB,chat,self_concerned,other,10"] * 100)
    response = small.test_client().post(
        "/v1/datasets/uk-helpline-2024/batches",
        data=body,
        headers={**tokens.owner, "Content-Type": "text/csv"},
    )
    assert response.status_code == 413
    assert response.json["code"] == "payload_too_large"
    assert _snapshot(app) == before
    small.extensions["dpx.database"].dispose()


def test_truncated_counts_what_the_bound_drops_across_batches(
    client: FlaskClient, tokens: Tokens
) -> None:
    # One caller, four contacts a month, bound 10: the third month keeps two of four.
    answers = [
        _upload(
            client,
            tokens,
            _csv(
                *[f"2024-0{m},GB,chat,self_concerned,other,10,caller" for _ in range(4)],
                header=HEADER + ",person",
            ),
        ).json
        for m in (1, 2, 3, 4)
    ]
    assert [(a["contacts"], a["truncated"]) for a in answers] == [(4, 0), (4, 0), (2, 2), (0, 4)]
