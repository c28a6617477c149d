"""Answers from a synopsis over HTTP: free, consistent, integer, signed, under the grant.

The demo dataset nl-helpline-2024 declares marginals [month, channel], [month,
referral_source] and [channel, referral_source] with a synopsis budget of rho 0.5; the demo
partner no-police may see month, country and referral_source. Each test uploads synthetic
contacts as the owner and builds the synopsis as the DPO's command would.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dpx_client.signature import verify_signature
from flask import Flask
from flask.testing import FlaskClient

from service.store.demo import generate_contacts
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

DATASET = "nl-helpline-2024"
MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]


def _upload(
    app: Flask, client: FlaskClient, tokens: Tokens, contacts: int = 3500, seed: int = 7
) -> None:
    dataset = app.extensions["dpx.exchange"].dataset(DATASET)
    body = generate_contacts(dataset, contacts=contacts, seed=seed).write_csv()
    response = client.post(
        f"/v1/datasets/{DATASET}/batches",
        data=body,
        headers={**tokens.other_owner, "Content-Type": "text/csv"},
    )
    assert response.status_code == 201, response.json


def _build(app: Flask) -> str:
    synopses = app.extensions["dpx.exchange"].synopses
    return str(synopses.build(DATASET, actor="admin:test").stored.synopsis_id)


def _ask(client: FlaskClient, tokens: Tokens, **body: Any) -> Any:
    query = {"dataset": DATASET, "statistic": "count", "source": "synopsis", **body}
    return client.post("/v1/queries", json=query, headers=tokens.partner)


def _budgets(client: FlaskClient, tokens: Tokens) -> Any:
    rows = client.get("/v1/budgets", headers=tokens.partner).json["budgets"]
    return next(row for row in rows if row["dataset"] == DATASET)


def test_answers_are_free_consistent_integers_with_signed_releases(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _upload(app, client, tokens)
    synopsis_id = _build(app)
    before = _budgets(client, tokens)
    monthly = _ask(client, tokens, group_by=["month"])
    by_source = _ask(client, tokens, group_by=["month", "referral_source"])
    total = _ask(client, tokens)
    police = _ask(
        client, tokens, group_by=["month"], filters={"referral_source": ["police_warning"]}
    )
    for response in (monthly, by_source, total, police):
        assert response.status_code == 201, response.json
        document = response.json
        assert document["source"] == {"synopsis": synopsis_id}
        assert document["privacy"]["cost"] == {"rho": "0"}
        for row in document["rows"]:
            assert isinstance(row["value"], int) and row["value"] >= 0
            assert row["ci"][0] <= row["value"] <= row["ci"][1]
        # A count's max_error is a whole number, as in a direct release (DESIGN 10).
        reach = max(max(r["value"] - r["ci"][0], r["ci"][1] - r["value"]) for r in document["rows"])
        assert type(document["accuracy"]["max_error"]) is int
        assert document["accuracy"]["max_error"] == reach
    assert _budgets(client, tokens) == before
    months = {row["month"]: row["value"] for row in monthly.json["rows"]}
    for month in MONTHS:
        cells = [r["value"] for r in by_source.json["rows"] if r["month"] == month]
        assert sum(cells) == months[month]
    assert sum(months.values()) == total.json["rows"][0]["value"]
    police_by_month = {r["month"]: r["value"] for r in police.json["rows"]}
    for month in MONTHS:
        cell = next(
            r["value"]
            for r in by_source.json["rows"]
            if r["month"] == month and r["referral_source"] == "police_warning"
        )
        assert police_by_month[month] == cell
    keys = client.get("/v1/signing-keys").json["keys"]
    stored = client.get(f"/v1/releases/{monthly.json['release_id']}", headers=tokens.partner)
    assert stored.status_code == 200
    assert verify_signature(stored.json, keys)
    again = _ask(client, tokens, group_by=["month"])
    assert again.status_code == 200 and again.json["cached"] is True
    assert again.json["release_id"] == monthly.json["release_id"]


def test_refusals_charge_nothing_and_name_the_marginals(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _upload(app, client, tokens)
    none_yet = _ask(client, tokens, group_by=["month"])
    assert none_yet.status_code == 409
    assert none_yet.json["code"] == "no_synopsis"
    assert none_yet.content_type == "application/problem+json"
    _build(app)
    before = _budgets(client, tokens)
    outside = _ask(client, tokens, group_by=["month", "country"])
    assert outside.status_code == 400
    assert outside.json["code"] == "not_in_synopsis"
    assert ["month", "referral_source"] in outside.json["marginals"]
    assert "[month, channel]" in outside.json["detail"]
    # The grant still decides: no-police may not see channel, inside a marginal or not.
    refused = _ask(client, tokens, group_by=["channel"])
    assert refused.status_code == 403 and refused.json["code"] == "forbidden"
    priced = _ask(client, tokens, group_by=["month"], rho=0.01)
    assert priced.status_code == 400 and priced.json["field"] == "rho"
    unknown = client.post(
        "/v1/queries",
        json={"dataset": DATASET, "statistic": "count", "source": "cache"},
        headers=tokens.partner,
    )
    assert unknown.status_code == 422
    assert _budgets(client, tokens) == before
    assert client.get("/v1/releases", headers=tokens.partner).json["releases"] == []


def test_accuracy_first_queries_use_the_synopsis_only_when_it_meets_the_target(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _upload(app, client, tokens)
    synopsis_id = _build(app)
    before = _budgets(client, tokens)
    loose = {"dataset": DATASET, "statistic": "count", "group_by": ["month"]}
    loose["accuracy"] = {"max_error": 200, "alpha": 0.05}
    estimate = client.post("/v1/queries/estimate", json=loose, headers=tokens.partner)
    assert estimate.json["source"] == "synopsis" and estimate.json["synopsis"] == synopsis_id
    assert estimate.json["privacy"]["cost"] == {"rho": "0"}
    answered = client.post("/v1/queries", json=loose, headers=tokens.partner)
    assert answered.status_code == 201 and answered.json["source"] == {"synopsis": synopsis_id}
    assert answered.json["accuracy"]["max_error"] <= 200
    assert _budgets(client, tokens) == before
    width = answered.json["accuracy"]["max_error"]
    # Tighter than the synopsis: charged as a direct release (interpol-sg has no per-query cap).
    tight = dict(loose, accuracy={"max_error": width * 0.7, "alpha": 0.05})
    estimate = client.post("/v1/queries/estimate", json=tight, headers=tokens.other_partner)
    assert estimate.json.get("source") == "direct", estimate.json
    charged = client.post("/v1/queries", json=tight, headers=tokens.other_partner)
    assert charged.status_code == 201 and "source" not in charged.json
    spent = client.get("/v1/budgets", headers=tokens.other_partner).json["budgets"]
    assert next(row for row in spent if row["dataset"] == DATASET)["spent"] > 0


def test_a_synopsis_without_the_unbiased_fit_answers_no_accuracy_first_query(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    """A synopsis stored before the unconstrained fit was kept (format 1) has intervals
    centred on its biased values: it still answers "source": "synopsis", but cannot vouch
    for a max_error, so an accuracy-first query is charged as a direct release."""
    _upload(app, client, tokens)
    _build(app)
    store = app.extensions["dpx.exchange"].synopses.store
    built = store.newest(DATASET)
    older = replace(store.open(built), unbiased=None)
    with store.database.write() as conn:
        store.insert(
            conn,
            synopsis_id="syn_format1",
            dataset=DATASET,
            estimate=older,
            cost=built.cost,
            included=built.batches,
            build_seconds=built.build_seconds,
            policy_version=built.policy_version,
        )
    loose = {"dataset": DATASET, "statistic": "count", "group_by": ["month"]}
    loose["accuracy"] = {"max_error": 10_000, "alpha": 0.05}
    estimate = client.post("/v1/queries/estimate", json=loose, headers=tokens.partner)
    assert estimate.json.get("source") == "direct", estimate.json
    answered = _ask(client, tokens, group_by=["month"])
    assert answered.status_code == 201 and answered.json["source"] == {"synopsis": "syn_format1"}


def test_dataset_view_shows_the_newest_synopsis_and_when_it_is_stale(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _upload(app, client, tokens)
    view = client.get(f"/v1/datasets/{DATASET}", headers=tokens.partner).json["synopsis"]
    assert view["marginals"] == [
        ["month", "channel"],
        ["month", "referral_source"],
        ["channel", "referral_source"],
    ]
    assert view["built"] is None
    first = _build(app)
    answered = _ask(client, tokens, group_by=["month"])
    built = client.get(f"/v1/datasets/{DATASET}", headers=tokens.partner).json["synopsis"]
    assert built["built"]["synopsis_id"] == first
    assert built["built"]["cost"] == {"rho": 0.5} and built["built"]["stale"] is False
    _upload(app, client, tokens, contacts=200, seed=8)
    stale = client.get(f"/v1/datasets/{DATASET}", headers=tokens.dpo).json["synopsis"]
    assert stale["built"]["stale"] is True
    second = _build(app)
    rebuilt = _ask(client, tokens, group_by=["month"])
    assert rebuilt.status_code == 201 and rebuilt.json["source"] == {"synopsis": second}
    earlier = client.get(f"/v1/releases/{answered.json['release_id']}", headers=tokens.partner)
    assert earlier.status_code == 200 and earlier.json["source"] == {"synopsis": first}
    assert (
        client.get(f"/v1/datasets/{DATASET}", headers=tokens.dpo).json["synopsis"]["built"]["stale"]
        is False
    )
