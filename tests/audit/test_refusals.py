"""Refused queries are audited, but a flood of identical refusals is folded into one entry
and a count per minute instead of one entry each."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

REFUSED = {"dataset": "uk-helpline-2024", "statistic": "sum", "measure": "minutes", "epsilon": 0.1}


class Clock:
    """The refusal log's clock, moved by the test (the edge of the world)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _refusals(app: Flask) -> list[dict[str, object]]:
    return [
        dict(entry.details)
        for entry in app.extensions["dpx.audit"].entries()
        if entry.action == "query.refuse"
    ]


def test_identical_refusals_are_one_entry_and_a_count_per_minute(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    clock = Clock(1_800_000_000.0)  # 2027-01-15T08:00:00Z, the start of a minute
    app.extensions["dpx.exchange"].refusals.clock = clock
    for _ in range(50):
        response = client.post("/v1/queries/estimate", json=REFUSED, headers=tokens.partner)
        assert response.status_code == 403
    assert len(_refusals(app)) == 1

    clock.now += 60  # the next minute: its first refusal also writes the last one's count
    client.post("/v1/queries/estimate", json=REFUSED, headers=tokens.partner)
    entries = _refusals(app)
    assert len(entries) == 3
    first, count, next_first = entries
    assert first["reason"] == count["reason"] == next_first["reason"] == "policy"
    assert count["repeated"] == 49 and count["minute"] == "2027-01-15T08:00Z"
    assert "repeated" not in next_first


def test_different_refusals_are_each_recorded(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    app.extensions["dpx.exchange"].refusals.clock = Clock(1_800_000_000.0)
    count = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.1}
    for query in (
        {**count, "statistic": "mean", "measure": "minutes"},
        {**count, "group_by": ["caller_type"]},
        {**count, "epsilon": 0.6},
    ):
        response = client.post("/v1/queries/estimate", json=query, headers=tokens.partner)
        assert response.status_code == 403
    client.post("/v1/queries/estimate", json=REFUSED, headers=tokens.other_partner)
    assert len(_refusals(app)) == 4


def test_flush_writes_the_counts_of_the_current_minute(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    exchange = app.extensions["dpx.exchange"]
    exchange.refusals.clock = Clock(1_800_000_000.0)
    for _ in range(5):
        client.post("/v1/queries/estimate", json=REFUSED, headers=tokens.partner)
    exchange.refusals.flush()
    assert [e.get("repeated") for e in _refusals(app)] == [None, 4]
