"""POST /v1/queries end to end: upload as an owner, query as a partner, verify as a partner.

Each test runs over HTTP (the Flask client) against a real keyring and a real database,
SQLite and PostgreSQL. The module adds its own partners and a small dataset to the copy of
the demo policies: ``analyst`` and ``colleague`` with count/sum/mean grants, and
``pilot-2024``, whose global budget is smaller than the two grants together.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from service.crypto.signing import verify_signature
from tests.conftest import BOTH_BACKENDS, Tokens, bearer

pytestmark = BOTH_BACKENDS

MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]
UK_CHANNELS = ["phone", "chat", "email", "web"]
NL_CHANNELS = ["phone", "chat", "email"]
RESPONSE_ONLY = ("cached", "budget")  # depend on the response, so they are not signed

ALL_UK = "[month, country, channel, caller_type, referral_source]"
ALL_NL = "[month, country, channel, caller_type, referral_source]"

POLICIES = {
    "datasets/pilot-2024.yaml": """
id: pilot-2024
title: Pilot dataset with a small global budget (synthetic test data)
owner: pilot-helpline
privacy:
  definition: pure
  unit: person
  max_contacts_per_person: 2
  global_budget: {epsilon: 1.0}
dimensions:
  month: {type: month, from: 2024-01, to: 2024-12}
  channel: {values: [phone, chat]}
""",
    "partners/analyst.yaml": f"""
id: analyst
name: Test analyst with every statistic
jurisdiction: GB
grants:
  - dataset: uk-helpline-2024
    budget: {{epsilon: 1.0}}
    max_per_query: {{epsilon: 1.0}}
    statistics: [count, sum, mean]
    dimensions: {ALL_UK}
  - dataset: nl-helpline-2024
    budget: {{rho: 1.0}}
    max_per_query: {{rho: 0.5}}
    statistics: [count, sum, mean]
    dimensions: {ALL_NL}
  - dataset: pilot-2024
    budget: {{epsilon: 0.6}}
    statistics: [count]
    dimensions: [month, channel]
  - dataset: be-helpline-2024
    budget: {{epsilon: 1.0}}
    statistics: [count]
    dimensions: [month, channel]
""",
    "partners/colleague.yaml": f"""
id: colleague
name: Test colleague of the analyst
jurisdiction: IE
grants:
  - dataset: uk-helpline-2024
    budget: {{epsilon: 1.0}}
    statistics: [count]
    dimensions: {ALL_UK}
  - dataset: pilot-2024
    budget: {{epsilon: 0.6}}
    statistics: [count]
    dimensions: [month, channel]
  - dataset: be-helpline-2024
    budget: {{epsilon: 1.0}}
    statistics: [count]
    dimensions: [month, channel]
""",
}


@pytest.fixture(autouse=True)
def test_policies(policy_dir: Path) -> Path:
    """The demo policies plus this module's partners and dataset, written before the app."""
    for name, body in POLICIES.items():
        (policy_dir / name).write_text(body.lstrip(), encoding="utf-8")
    return policy_dir


@dataclass(frozen=True)
class Callers:
    analyst: dict[str, str]
    colleague: dict[str, str]
    uk_owner: dict[str, str]
    nl_owner: dict[str, str]
    dpo: dict[str, str]


@pytest.fixture
def callers(app: Flask) -> Callers:
    registry = app.extensions["dpx.tokens"]
    return Callers(
        analyst=bearer(registry.issue("partner", "analyst").token),
        colleague=bearer(registry.issue("partner", "colleague").token),
        uk_owner=bearer(registry.issue("owner", "uk-helpline-2024").token),
        nl_owner=bearer(registry.issue("owner", "nl-helpline-2024").token),
        dpo=bearer(registry.issue("dpo", None).token),
    )


# -- helpers ----------------------------------------------------------------------------------


def upload(
    client: FlaskClient, owner: dict[str, str], dataset: str, records: list[dict[str, Any]]
) -> None:
    response = client.post(
        f"/v1/datasets/{dataset}/batches",
        data=json.dumps(records),
        headers={**owner, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.json


def uk_contacts(month: str, channel: str, n: int, minutes: int = 30) -> list[dict[str, Any]]:
    return [
        {
            "month": month,
            "country": "GB",
            "channel": channel,
            "caller_type": "self_concerned",
            "referral_source": "police_warning",
            "minutes": minutes,
        }
    ] * n


def nl_contacts(month: str, channel: str, n: int, minutes: int = 20) -> list[dict[str, Any]]:
    return [
        {
            "month": month,
            "country": "NL",
            "channel": channel,
            "caller_type": "other",
            "referral_source": "word_of_mouth",
            "minutes": minutes,
        }
    ] * n


def query(
    client: FlaskClient, caller: dict[str, str], body: dict[str, Any], **headers: str
) -> TestResponse:
    return client.post("/v1/queries", json=body, headers={**caller, **headers})


def month_query(
    month: str, epsilon: float = 0.1, dataset: str = "uk-helpline-2024"
) -> dict[str, Any]:
    """A distinct count query per month: each one is charged anew."""
    return {
        "dataset": dataset,
        "statistic": "count",
        "group_by": ["channel"],
        "filters": {"month": [month]},
        "epsilon": epsilon,
    }


def signing_keys(client: FlaskClient) -> list[dict[str, Any]]:
    response = client.get("/v1/signing-keys")
    assert response.status_code == 200
    keys: list[dict[str, Any]] = response.json["keys"]
    return keys


def signed_part(release: dict[str, Any]) -> dict[str, Any]:
    """The release as signed: without the fields that describe one response."""
    return {k: v for k, v in release.items() if k not in RESPONSE_ONLY}


def ledger_rows(app: Flask) -> dict[str, int]:
    """Rows that any charge would add: ledger lines, releases, spent nano-units."""
    with app.extensions["dpx.database"].read() as conn:
        return {
            "charges": conn.execute(text("SELECT COUNT(*) FROM charges")).scalar_one(),
            "releases": conn.execute(text("SELECT COUNT(*) FROM releases")).scalar_one(),
            "spent_nano": conn.execute(
                text("SELECT COALESCE(SUM(spent_nano), 0) FROM budget_accounts")
            ).scalar_one(),
        }


def budget(client: FlaskClient, caller: dict[str, str], dataset: str) -> dict[str, Any]:
    rows = client.get("/v1/budgets", headers=caller).json["budgets"]
    found: dict[str, Any] = next(row for row in rows if row["dataset"] == dataset)
    return found


def audit_entries(client: FlaskClient, dpo: dict[str, str]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.get(f"/v1/audit?after={after}&limit=1000", headers=dpo).json
        entries.extend(page["entries"])
        if page["next_after"] is None:
            return entries
        after = page["next_after"]


# -- 1. a release for every statistic under both definitions ----------------------------------


FLOWS = [
    pytest.param("uk-helpline-2024", "count", {"epsilon": 0.5}, id="pure-count"),
    pytest.param("uk-helpline-2024", "sum", {"epsilon": 0.5}, id="pure-sum"),
    pytest.param("uk-helpline-2024", "mean", {"epsilon": 0.5}, id="pure-mean"),
    pytest.param("nl-helpline-2024", "count", {"rho": 0.1}, id="zcdp-count"),
    pytest.param("nl-helpline-2024", "sum", {"rho": 0.1}, id="zcdp-sum"),
    pytest.param("nl-helpline-2024", "mean", {"rho": 0.1}, id="zcdp-mean"),
]


@pytest.mark.parametrize(("dataset", "statistic", "cost"), FLOWS)
def test_release_covers_the_whole_domain_and_verifies(
    client: FlaskClient, callers: Callers, dataset: str, statistic: str, cost: dict[str, float]
) -> None:
    pure = dataset == "uk-helpline-2024"
    channels = UK_CHANNELS if pure else NL_CHANNELS
    if pure:
        upload(client, callers.uk_owner, dataset, uk_contacts("2024-03", "chat", 400))
    else:
        upload(client, callers.nl_owner, dataset, nl_contacts("2024-03", "chat", 400))
    body: dict[str, Any] = {
        "dataset": dataset,
        "statistic": statistic,
        "group_by": ["month", "channel"],
        **cost,
    }
    if statistic != "count":
        body["measure"] = "minutes"

    response = query(client, callers.analyst, body)

    assert response.status_code == 201, response.json
    release = response.json
    assert release["cached"] is False and release["release_id"].startswith("rel_")
    assert release["dataset"] == dataset and release["partner"] == "analyst"
    # Every cell of month x channel, in domain order, the 47 empty ones included.
    assert [(row["month"], row["channel"]) for row in release["rows"]] == list(
        itertools.product(MONTHS, channels)
    )
    for row in release["rows"]:
        assert set(row) == {"month", "channel", "value", "ci"}
        low, high = row["ci"]
        assert low <= high
        if statistic == "mean":
            assert isinstance(row["value"], float) and 0 <= low <= high <= (120 if pure else 90)
        else:
            assert isinstance(row["value"], int) and low >= 0
    if statistic == "count":
        # 400 contacts, noise scale 20 (pure) or ~17 (zcdp): 15 scales away is impossible.
        filled = next(
            r for r in release["rows"] if (r["month"], r["channel"]) == ("2024-03", "chat")
        )
        assert abs(filled["value"] - 400) < 300

    privacy, mechanism, accuracy = release["privacy"], release["mechanism"], release["accuracy"]
    if pure:
        assert privacy == {
            "definition": "pure",
            "epsilon": 0.5,
            "delta": 0.0,
            "cost": {"epsilon": "0.5"},
        }
        assert mechanism["name"] == "discrete_laplace"
    else:
        assert privacy["definition"] == "zcdp" and privacy["rho"] == 0.1
        assert privacy["delta"] == 1e-7 and privacy["epsilon"] > 0
        assert mechanism["name"] == "discrete_gaussian"
    assert mechanism["scale"] > 0 and mechanism["sensitivity"] >= 1
    assert accuracy["alpha"] == 0.05
    if statistic == "mean":
        assert set(mechanism["components"]) == {"sum", "count"}
    else:
        assert accuracy["max_error"] > 0
    assert release["query"]["statistic"] == statistic

    keys = signing_keys(client)
    assert release["signature"]["alg"] == "Ed25519"
    assert release["signature"]["key_id"] in {key["key_id"] for key in keys}
    assert verify_signature(signed_part(release), keys)
    tampered = json.loads(json.dumps(signed_part(release)))
    tampered["rows"][0]["value"] += 1
    assert not verify_signature(tampered, keys)

    # A cached re-read carries a different budget view, and the same signature still holds.
    again = query(client, callers.analyst, body)
    assert again.status_code == 200 and again.json["cached"] is True
    assert signed_part(again.json) == signed_part(release)
    assert verify_signature(signed_part(again.json), keys)
    stored = client.get(f"/v1/releases/{release['release_id']}", headers=callers.analyst)
    assert stored.status_code == 200
    assert verify_signature(signed_part(stored.json), keys)


# -- 2. exhaustion at exactly the right query ------------------------------------------------


def test_eleventh_tenth_of_a_budget_of_one_is_refused_and_charges_nothing(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    upload(client, callers.uk_owner, "uk-helpline-2024", uk_contacts("2024-01", "web", 5))
    for month in MONTHS[:10]:
        response = query(client, callers.analyst, month_query(month))
        assert response.status_code == 201, response.json
    assert response.json["budget"]["partner_remaining"] == {"epsilon": 0.0}
    before = ledger_rows(app)

    refused = query(client, callers.analyst, month_query(MONTHS[10]))

    assert refused.status_code == 403
    assert refused.mimetype == "application/problem+json"
    assert refused.json["code"] == "budget_exhausted"
    assert refused.json["remaining"] == {"partner": {"epsilon": 0.0}, "dataset": {"epsilon": 7.0}}
    assert ledger_rows(app) == before
    assert before["charges"] == 10 and before["releases"] == 10
    spent = budget(client, callers.analyst, "uk-helpline-2024")
    assert spent["spent"] == 1.0 and spent["remaining"] == 0.0
    # An answered question stays answerable, free, after the budget is gone.
    repeat = query(client, callers.analyst, month_query(MONTHS[0]))
    assert repeat.status_code == 200 and repeat.json["cached"] is True
    assert ledger_rows(app) == before


# -- 3. the dataset's global budget binds all partners together ------------------------------


def test_global_budget_stops_the_second_partner(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    for month in MONTHS[:6]:
        assert (
            query(client, callers.analyst, month_query(month, dataset="pilot-2024")).status_code
            == 201
        )
    for month in MONTHS[:4]:
        assert (
            query(client, callers.colleague, month_query(month, dataset="pilot-2024")).status_code
            == 201
        )
    before = ledger_rows(app)

    refused = query(client, callers.colleague, month_query(MONTHS[4], dataset="pilot-2024"))

    assert refused.status_code == 403 and refused.json["code"] == "budget_exhausted"
    assert "global budget" in refused.json["detail"]
    assert refused.json["remaining"]["dataset"] == {"epsilon": 0.0}
    assert refused.json["remaining"]["partner"]["epsilon"] == pytest.approx(0.2)
    assert ledger_rows(app) == before
    row = budget(client, callers.colleague, "pilot-2024")
    assert row["dataset_spent"] == 1.0 and row["dataset_remaining"] == 0.0


# -- 4. the cache: one question, one release ----------------------------------------------


def test_reworded_repeat_is_answered_from_the_stored_release_for_free(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    upload(client, callers.uk_owner, "uk-helpline-2024", uk_contacts("2024-02", "chat", 50))
    first = query(
        client,
        callers.analyst,
        {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["month", "channel"],
            "filters": {
                "channel": ["chat", "phone"],
                "month": {"from": "2024-01", "to": "2024-03"},
                "country": ["GB", "IE"],
            },
            "epsilon": 0.1,
        },
    )
    assert first.status_code == 201, first.json
    before = ledger_rows(app)
    reworded = {
        "dataset": "uk-helpline-2024",
        "statistic": "count",
        "group_by": ["channel", "month"],
        "filters": {"month": ["2024-03", "2024-01", "2024-02"], "channel": ["phone", "chat"]},
        "epsilon": "0.10",
    }

    estimate = client.post("/v1/queries/estimate", json=reworded, headers=callers.analyst)
    again = query(client, callers.analyst, reworded)

    assert estimate.status_code == 200
    assert estimate.json["cached"] is True and estimate.json["privacy"]["epsilon"] == 0.0
    assert again.status_code == 200 and again.json["cached"] is True
    assert again.json["release_id"] == first.json["release_id"]
    assert again.json["rows"] == first.json["rows"]
    assert len(again.json["rows"]) == 6
    assert ledger_rows(app) == before
    assert budget(client, callers.analyst, "uk-helpline-2024")["spent"] == pytest.approx(0.1)


def test_shared_releases_answer_other_partners_for_free(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    body = {
        "dataset": "be-helpline-2024",
        "statistic": "count",
        "group_by": ["month"],
        "epsilon": 0.25,
    }
    first = query(client, callers.analyst, body)
    assert first.status_code == 201, first.json
    before = ledger_rows(app)

    other = query(client, callers.colleague, body)

    assert other.status_code == 200 and other.json["cached"] is True
    assert other.json["release_id"] == first.json["release_id"]
    assert other.json["rows"] == first.json["rows"]
    assert other.json["budget"]["partner_remaining"] == {"epsilon": 1.0}
    assert ledger_rows(app) == before
    assert budget(client, callers.colleague, "be-helpline-2024")["spent"] == 0.0


def test_without_sharing_each_partner_pays_for_its_own_release(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    body = {
        "dataset": "uk-helpline-2024",
        "statistic": "count",
        "group_by": ["month"],
        "epsilon": 0.25,
    }
    first = query(client, callers.analyst, body)
    other = query(client, callers.colleague, body)

    assert first.status_code == 201 and other.status_code == 201, other.json
    assert other.json["release_id"] != first.json["release_id"]
    assert budget(client, callers.analyst, "uk-helpline-2024")["spent"] == 0.25
    assert budget(client, callers.colleague, "uk-helpline-2024")["spent"] == 0.25
    assert other.json["budget"]["dataset_remaining"] == {"epsilon": 7.5}
    assert ledger_rows(app)["charges"] == 2


# -- 5. Idempotency-Key ---------------------------------------------------------------------


def test_idempotent_retry_returns_the_first_response_and_charges_once(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    body = month_query("2024-05", epsilon=0.2)
    first = query(client, callers.analyst, body, **{"Idempotency-Key": "order-7f3a"})
    assert first.status_code == 201, first.json
    before = ledger_rows(app)

    retry = query(client, callers.analyst, body, **{"Idempotency-Key": "order-7f3a"})
    clash = query(
        client,
        callers.analyst,
        month_query("2024-06", epsilon=0.2),
        **{"Idempotency-Key": "order-7f3a"},
    )

    assert retry.status_code == 201
    assert retry.json == first.json
    assert clash.status_code == 409 and clash.json["code"] == "conflict"
    assert ledger_rows(app) == before
    assert before["charges"] == 1
    assert budget(client, callers.analyst, "uk-helpline-2024")["spent"] == pytest.approx(0.2)


# -- 6. BOLA: a partner sees only its own releases and budgets --------------------------------


def test_partner_never_sees_another_partners_releases_or_budgets(
    client: FlaskClient, callers: Callers
) -> None:
    mine = query(client, callers.analyst, month_query("2024-01")).json["release_id"]
    theirs = query(client, callers.colleague, month_query("2024-02")).json["release_id"]

    listed = client.get("/v1/releases", headers=callers.analyst)
    foreign = client.get(f"/v1/releases/{theirs}", headers=callers.analyst)
    unknown = client.get("/v1/releases/rel_00000000000000000000", headers=callers.analyst)
    budgets = client.get("/v1/budgets", headers=callers.analyst).json["budgets"]
    everything = client.get("/v1/releases", headers=callers.dpo).json["releases"]

    assert listed.status_code == 200
    assert [r["release_id"] for r in listed.json["releases"]] == [mine]
    assert foreign.status_code == 404 and foreign.json["code"] == "not_found"
    assert foreign.json["detail"] == unknown.json["detail"].replace(
        "rel_00000000000000000000", theirs
    )
    assert {row["partner"] for row in budgets} == {"analyst"}
    assert {r["release_id"] for r in everything} == {mine, theirs}


# -- 7. bad costs and grant violations are refused before any charge --------------------------


BAD_COSTS = [
    pytest.param({"epsilon": 0}, 400, id="zero"),
    pytest.param({"epsilon": -0.1}, 400, id="negative"),
    pytest.param({"epsilon": "abc"}, 422, id="not-a-number"),
    pytest.param({"epsilon": "NaN"}, 422, id="nan-text"),
    pytest.param({"epsilon": "Infinity"}, 422, id="infinity-text"),
    pytest.param({"epsilon": 1e-9}, 400, id="absurdly-small"),
    pytest.param({"epsilon": 0.1234567891}, 400, id="ten-decimals"),
    pytest.param({"rho": 0.1}, 400, id="rho-on-pure"),
    pytest.param({"epsilon": 0.1, "accuracy": {"max_error": 50}}, 400, id="cost-and-accuracy"),
    pytest.param({}, 400, id="no-cost"),
    pytest.param({"accuracy": {"max_error": 0}}, 400, id="zero-max-error"),
    # A target so loose it would cost less than the minimum cost of an explicit query.
    pytest.param({"accuracy": {"max_error": 1e308}}, 400, id="max-error-below-minimum-cost"),
]


@pytest.mark.parametrize(("cost", "status"), BAD_COSTS)
def test_bad_cost_is_refused_and_charges_nothing(
    app: Flask, client: FlaskClient, callers: Callers, cost: dict[str, Any], status: int
) -> None:
    before = ledger_rows(app)
    body = {"dataset": "uk-helpline-2024", "statistic": "count", "group_by": ["month"], **cost}

    response = query(client, callers.analyst, body)

    assert response.status_code == status, response.json
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "invalid_request"
    assert ledger_rows(app) == before


def test_nan_literal_and_epsilon_on_zcdp_are_refused(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    before = ledger_rows(app)
    nan = client.post(
        "/v1/queries",
        headers={**callers.analyst, "Content-Type": "application/json"},
        data='{"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": NaN}',
    )
    zcdp = query(
        client,
        callers.analyst,
        {"dataset": "nl-helpline-2024", "statistic": "count", "epsilon": 0.1},
    )

    assert nan.status_code in (400, 422) and nan.json["code"] == "invalid_request"
    assert zcdp.status_code == 400 and zcdp.json["field"] == "epsilon"
    assert "give rho, not epsilon" in zcdp.json["detail"]
    assert ledger_rows(app) == before


GRANT_VIOLATIONS = [
    pytest.param({"statistic": "sum", "measure": "minutes"}, "statistic", id="statistic"),
    pytest.param({"group_by": ["caller_type"]}, "dimension", id="group-by-dimension"),
    pytest.param({"filters": {"country": ["GB"]}}, "dimension", id="filter-dimension"),
    pytest.param({"epsilon": 0.6}, "max_per_query", id="max-per-query"),
]


@pytest.mark.parametrize(("change", "rule"), GRANT_VIOLATIONS)
def test_grant_violation_names_the_rule_and_charges_nothing(
    app: Flask, client: FlaskClient, tokens: Tokens, change: dict[str, Any], rule: str
) -> None:
    before = ledger_rows(app)
    body = {
        "dataset": "uk-helpline-2024",
        "statistic": "count",
        "group_by": ["month"],
        "epsilon": 0.1,
        **change,
    }

    response = query(client, tokens.partner, body)

    assert response.status_code == 403, response.json
    assert response.json["code"] == "forbidden" and response.json["rule"] == rule
    assert ledger_rows(app) == before


def test_expired_grant_is_refused(app: Flask, client: FlaskClient, tokens: Tokens) -> None:
    before = ledger_rows(app)

    response = query(
        client,
        tokens.other_partner,
        {
            "dataset": "be-helpline-2024",
            "statistic": "count",
            "group_by": ["month"],
            "epsilon": 0.1,
        },
    )

    assert response.status_code == 403 and response.json["rule"] == "expired"
    assert "expired on 2025-01-31" in response.json["detail"]
    assert ledger_rows(app) == before


# -- 8. accuracy first ----------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["uk-helpline-2024", "nl-helpline-2024"])
def test_accuracy_target_buys_the_estimated_cost_and_meets_the_target(
    app: Flask, client: FlaskClient, callers: Callers, dataset: str
) -> None:
    unit = "epsilon" if dataset == "uk-helpline-2024" else "rho"
    body = {
        "dataset": dataset,
        "statistic": "count",
        "group_by": ["month"],
        "accuracy": {"max_error": 50, "alpha": 0.05},
    }
    before = ledger_rows(app)

    estimate = client.post("/v1/queries/estimate", json=body, headers=callers.analyst)

    assert estimate.status_code == 200, estimate.json
    assert ledger_rows(app) == before
    cost = estimate.json["privacy"][unit]
    assert 0 < cost and estimate.json["accuracy"]["max_error"] <= 50
    assert estimate.json["budget"]["partner_remaining"] == {unit: 1.0}

    release = query(client, callers.analyst, body)

    assert release.status_code == 201, release.json
    assert release.json["accuracy"] == estimate.json["accuracy"]
    assert release.json["accuracy"]["max_error"] <= 50
    assert release.json["privacy"][unit] == cost
    assert budget(client, callers.analyst, dataset)["spent"] == cost
    assert release.json["budget"]["partner_remaining"][unit] == pytest.approx(1.0 - cost)


# -- 9. the audit log records every charged release and every refusal ---------------------


def test_every_charge_release_and_refusal_is_audited(
    app: Flask, client: FlaskClient, callers: Callers
) -> None:
    released = [
        query(client, callers.analyst, month_query(month, epsilon=0.4)).json for month in MONTHS[:2]
    ]
    assert query(client, callers.analyst, month_query(MONTHS[0], epsilon=0.4)).status_code == 200
    exhausted = query(client, callers.analyst, month_query(MONTHS[2], epsilon=0.4))
    forbidden = query(
        client, callers.analyst, {"dataset": "nl-helpline-2024", "statistic": "count", "rho": 0.6}
    )
    assert exhausted.status_code == 403 and forbidden.status_code == 403

    entries = audit_entries(client, callers.dpo)

    ids = [r["release_id"] for r in released]
    # One entry per release, written in the transaction that charges and stores it.
    creates = [e for e in entries if e["action"] == "release.create"]
    refusals = [e for e in entries if e["action"] == "query.refuse"]
    assert not [e for e in entries if e["action"] == "budget.charge"]
    assert [e["details"]["release_id"] for e in creates] == ids
    assert [e["details"]["epsilon"] for e in creates] == ["0.4", "0.4"]
    assert {e["details"]["partner"] for e in creates} == {"analyst"}
    assert all(e["actor"].find("analyst") >= 0 for e in creates + refusals)
    assert [e["details"]["reason"] for e in refusals] == ["budget_exhausted", "policy"]
    assert [e["dataset"] for e in refusals] == ["uk-helpline-2024", "nl-helpline-2024"]
    assert app.extensions["dpx.audit"].verify().ok
