"""Ingest refuses data whose totals could leave the range a dataset may hold.

A query sums any selection of cells; the engine releases 64-bit values, and bounding what a
dataset may hold keeps every total far inside that range. So a batch after which the
dataset's contacts, or any measure's absolute sums, would exceed 2**31 - 1 over all batches is
refused whole (422) and nothing is stored.
"""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from service.dp.mechanisms import ENGINE_INTEGER_MAX
from tests.api.test_api_batches import _snapshot
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

URL = "/v1/datasets/uk-helpline-2024/batches?form=cells"
HEADER = "month,country,channel,caller_type,referral_source,contacts,minutes"


def cells(*rows: tuple[str, int, int]) -> bytes:
    lines = [HEADER] + [
        f"{month},GB,chat,self_concerned,police_warning,{contacts},{minutes}"
        for month, contacts, minutes in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def post(client: FlaskClient, tokens: Tokens, body: bytes) -> tuple[int, dict[str, object]]:
    response = client.post(URL, data=body, headers={**tokens.owner, "Content-Type": "text/csv"})
    return response.status_code, response.get_json()


def test_three_billion_contacts_in_one_cell_are_refused_and_nothing_is_stored(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    assert post(client, tokens, cells(("2024-01", 1, 0)))[0] == 201
    before = _snapshot(app)
    status, problem = post(client, tokens, cells(("2024-01", 3_000_000_000, 0)))
    assert status == 422
    assert f"contacts total would exceed {ENGINE_INTEGER_MAX}" in str(problem)
    assert "3000000000" not in str(problem)
    assert _snapshot(app) == before


def test_the_bound_applies_to_the_total_over_all_batches_and_cells(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    half = ENGINE_INTEGER_MAX // 2
    assert post(client, tokens, cells(("2024-01", half, 0)))[0] == 201
    # Neither cell exceeds the bound on its own, but a query over both months sums them.
    assert post(client, tokens, cells(("2024-02", half, 0)))[0] == 201
    before = _snapshot(app)
    status, problem = post(client, tokens, cells(("2024-03", 2, 0)))
    assert status == 422 and "contacts total" in str(problem)
    assert _snapshot(app) == before
    # Up to the bound exactly is accepted.
    assert post(client, tokens, cells(("2024-03", 1, 0)))[0] == 201


def test_a_measure_sum_past_the_bound_is_refused_even_when_the_counts_fit(
    client: FlaskClient, tokens: Tokens
) -> None:
    contacts = 20_000_000  # 120 minutes each: 2.4e9 minutes
    status, problem = post(client, tokens, cells(("2024-01", contacts, 120 * contacts)))
    assert status == 422
    assert "minutes total would exceed" in str(problem)
    assert post(client, tokens, cells(("2024-01", contacts, 100 * contacts)))[0] == 201
