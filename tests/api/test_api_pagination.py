"""Paging the release list and the audit log: an opaque cursor over a stable order reaches
every item exactly once, in order, even when many releases share a creation time."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from itertools import combinations
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import update

from service.database.schema import releases as release_table
from tests.conftest import BOTH_BACKENDS, Tokens

pytestmark = BOTH_BACKENDS

MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]
RANGES = list(combinations(MONTHS, 2))


def _make_releases(client: FlaskClient, tokens: Tokens, count: int) -> None:
    for start, end in RANGES[:count]:
        query = {
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "filters": {"month": {"from": start, "to": end}},
            "epsilon": 0.001,
        }
        response = client.post("/v1/queries", json=query, headers=tokens.partner)
        assert response.status_code == 201, response.json


def _follow(client: FlaskClient, headers: dict[str, str], path: str, key: str) -> list[Any]:
    """Every item of a listing, following ``next`` and checking ``Link`` agrees with it."""
    found: list[Any] = []
    url = path
    for _ in range(200):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, response.json
        body = response.json
        found.extend(body[key])
        if body["next"] is None:
            assert "Link" not in response.headers
            return found
        link = response.headers["Link"]
        assert link.endswith('>; rel="next"') and f"cursor={body['next']}" in link
        url = link[1 : link.index(">")]
    raise AssertionError("the listing never ended")


def test_every_release_is_reached_once_newest_first_even_with_tied_times(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _make_releases(client, tokens, 40)
    # Twenty releases made in the same instant (a coarse clock, a busy server).
    tied = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    listed = client.get("/v1/releases?limit=1000", headers=tokens.partner).json["releases"]
    with app.extensions["dpx.database"].write() as conn:
        conn.execute(
            update(release_table)
            .where(release_table.c.id.in_([r["release_id"] for r in listed[5:25]]))
            .values(created_at=tied)
        )
    everything = client.get("/v1/releases?limit=1000", headers=tokens.partner).json["releases"]
    assert len(everything) == 40

    paged = _follow(client, tokens.partner, "/v1/releases?limit=7", "releases")
    assert [r["release_id"] for r in paged] == [r["release_id"] for r in everything]
    dpo = _follow(client, tokens.dpo, "/v1/releases?limit=3", "releases")
    assert sorted(r["release_id"] for r in dpo) == sorted(r["release_id"] for r in everything)


def test_a_partner_pages_only_its_own_releases(client: FlaskClient, tokens: Tokens) -> None:
    _make_releases(client, tokens, 5)
    cursor = client.get("/v1/releases?limit=2", headers=tokens.partner).json["next"]
    other = client.get(f"/v1/releases?limit=2&cursor={cursor}", headers=tokens.other_partner)
    assert other.status_code == 200 and other.json == {"releases": [], "next": None}


@pytest.mark.parametrize(
    "cursor",
    [
        "nonsense",
        "e30",
        "WyJ4IiwgNV0",
        "WyJyIiwgIm5vdC1hLXRpbWUiLCAicmVsXzEiXQ",
        "%00",
        # ["r", "0001-01-01T00:00:00+05:00", "rel_x"] and ["r", "9999-12-31T23:59:59-05:00",
        # "rel_x"]: valid times that fall off the calendar in UTC
        "WyJyIiwiMDAwMS0wMS0wMVQwMDowMDowMCswNTowMCIsInJlbF94Il0",
        "WyJyIiwiOTk5OS0xMi0zMVQyMzo1OTo1OS0wNTowMCIsInJlbF94Il0",
        # 1,200 and 3,000 nested arrays: deep enough for Python's parser to give up
        base64.urlsafe_b64encode(b"[" * 1200).decode().rstrip("="),
        base64.urlsafe_b64encode(b"[" * 3000).decode().rstrip("="),
    ],
    ids=lambda cursor: cursor[:40],
)
def test_a_cursor_the_service_did_not_give_is_a_422(
    client: FlaskClient, tokens: Tokens, cursor: str
) -> None:
    for path in ("/v1/releases", "/v1/audit"):
        headers = tokens.partner if path == "/v1/releases" else tokens.dpo
        response = client.get(f"{path}?cursor={cursor}", headers=headers)
        assert response.status_code == 422, (path, cursor, response.json)
        assert response.mimetype == "application/problem+json"


def test_the_audit_log_pages_by_cursor_without_gaps(
    app: Flask, client: FlaskClient, tokens: Tokens
) -> None:
    _make_releases(client, tokens, 12)
    everything = client.get("/v1/audit?limit=1000", headers=tokens.dpo).json["entries"]
    assert len(everything) > 12  # several pages of 4
    paged = _follow(client, tokens.dpo, "/v1/audit?limit=4", "entries")
    assert [e["seq"] for e in paged] == [e["seq"] for e in everything]
    # The older numeric form still works and agrees with the cursor.
    first = client.get("/v1/audit?limit=4", headers=tokens.dpo).json
    after = client.get(f"/v1/audit?limit=4&after={first['next_after']}", headers=tokens.dpo)
    following = client.get(f"/v1/audit?limit=4&cursor={first['next']}", headers=tokens.dpo)
    assert after.json["entries"] == following.json["entries"]
