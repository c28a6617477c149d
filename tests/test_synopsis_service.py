"""Synopsis builds and answers in one process: exact charges, refusals that charge nothing,
idempotent retries, on SQLite and PostgreSQL."""

from __future__ import annotations

from fractions import Fraction

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from service.components import Components
from service.database.schema import audit_log
from service.ledger.budgets import GLOBAL
from service.synopses import SYNOPSIS_ACCOUNT, NoSynopsis, SynopsisRefused
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

NL, UK = "nl-helpline-2024", "uk-helpline-2024"


def _actions(components: Components) -> list[str]:
    with components.database.read() as conn:
        rows = conn.execute(select(audit_log.c.action).order_by(audit_log.c.seq))
        return [str(row.action) for row in rows]


def test_a_build_charges_the_global_budget_exactly_once(components: Components) -> None:
    built = components.synopses.build(NL, actor="admin:test")
    assert built.stored.cost == Fraction(1, 2) == sum(built.shares, Fraction(0))
    assert components.ledger.spent(NL, GLOBAL) == Fraction(1, 2)
    assert components.ledger.spent(NL, SYNOPSIS_ACCOUNT) == Fraction(1, 2)
    lines = components.ledger.history(NL)
    assert [(line.partner, line.amount) for line in lines] == [(SYNOPSIS_ACCOUNT, Fraction(1, 2))]
    assert _actions(components)[-2:] == ["synopsis.charge", "synopsis.build"]
    assert built.global_remaining == Fraction(3, 2)
    assert components.synopses.store.newest(NL) == built.stored


def test_a_build_without_room_is_refused_and_charges_nothing(components: Components) -> None:
    for _ in range(4):  # rho 2.0 holds four builds of rho 0.5
        components.synopses.build(NL, actor="admin:test")
    before = _actions(components)
    with pytest.raises(SynopsisRefused, match="global budget has rho 0 left; nothing was charged"):
        components.synopses.build(NL, actor="admin:test")
    assert components.ledger.spent(NL, GLOBAL) == Fraction(2)
    assert len(components.ledger.history(NL)) == 4
    assert _actions(components) == before


def test_a_dataset_without_a_declared_synopsis_cannot_be_built(components: Components) -> None:
    with pytest.raises(NoSynopsis, match="uk-helpline-2024 declares no synopsis"):
        components.synopses.build(UK, actor="admin:test")
    assert components.ledger.spent(UK, GLOBAL) == 0


def test_a_retried_synopsis_query_returns_the_first_release(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    app.extensions["dpx.exchange"].synopses.build(NL, actor="admin:test")
    body = {"dataset": NL, "statistic": "count", "group_by": ["month"], "source": "synopsis"}
    headers = {**tokens.partner, "Idempotency-Key": "idem-synopsis-1"}
    first = client.post("/v1/queries", json=body, headers=headers)
    again = client.post("/v1/queries", json=body, headers=headers)
    assert first.status_code == 201 and again.status_code == 201
    assert again.json["release_id"] == first.json["release_id"]
    other = client.post("/v1/queries", json=dict(body, group_by=[]), headers=headers)
    assert other.status_code == 409 and other.json["code"] == "conflict"
