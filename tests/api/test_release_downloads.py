"""GET /v1/releases/{id} with ``Accept: text/csv``: the release's rows as a CSV download, with
the same numbers as the signed JSON, for the release's own partner only."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from dpx_client import Release
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from tests.conftest import Tokens

MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]
CHANNELS = ["phone", "chat", "email", "web"]


@pytest.fixture
def release(client: FlaskClient, tokens: Tokens) -> dict[str, Any]:
    """A no-police release of contacts by month and channel, over uploaded contacts."""
    records = [
        {
            "month": month,
            "country": "GB",
            "channel": "chat",
            "caller_type": "self_concerned",
            "referral_source": "police_warning",
            "minutes": 30,
        }
        for month in MONTHS
        for _ in range(3)
    ]
    uploaded = client.post(
        "/v1/datasets/uk-helpline-2024/batches",
        data=json.dumps(records),
        headers={**tokens.owner, "Content-Type": "application/json"},
    )
    assert uploaded.status_code == 201, uploaded.json
    released = client.post(
        "/v1/queries",
        headers=tokens.partner,
        json={
            "dataset": "uk-helpline-2024",
            "statistic": "count",
            "group_by": ["month", "channel"],
            "epsilon": 0.2,
        },
    )
    assert released.status_code == 201, released.json
    document: dict[str, Any] = released.json
    return document


def _download(client: FlaskClient, headers: dict[str, str], release_id: str) -> Any:
    return client.get(f"/v1/releases/{release_id}", headers={**headers, "Accept": "text/csv"})


def test_csv_holds_each_row_with_its_dimensions_interval_and_release_id(
    client: FlaskClient, tokens: Tokens, release: dict[str, Any]
) -> None:
    response = _download(client, tokens.partner, release["release_id"])

    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.mimetype_params == {"charset": "utf-8"}
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="{release["release_id"]}.csv"'
    )
    assert response.headers["Vary"] == "Accept"
    text = response.get_data(as_text=True)
    assert text.endswith("\r\n")
    header, *lines = list(csv.reader(io.StringIO(text)))
    assert header == ["month", "channel", "value", "ci_low", "ci_high", "release_id"]
    assert len(lines) == len(MONTHS) * len(CHANNELS) == len(release["rows"])
    for line, row in zip(lines, release["rows"], strict=True):
        month, channel, value, low, high, release_id = line
        assert (month, channel) == (row["month"], row["channel"])
        assert (float(value), float(low), float(high)) == (row["value"], *row["ci"])
        assert release_id == release["release_id"]


def test_the_service_and_the_client_write_the_same_csv(
    client: FlaskClient, tokens: Tokens, release: dict[str, Any]
) -> None:
    response = _download(client, tokens.partner, release["release_id"])

    assert response.get_data(as_text=True) == Release(release).to_csv()


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "text/html", "text/csv;q=0.5, application/json"],
)
def test_json_stays_the_answer_unless_csv_is_preferred(
    client: FlaskClient, tokens: Tokens, release: dict[str, Any], accept: str | None
) -> None:
    headers = dict(tokens.partner, **({"Accept": accept} if accept else {}))
    response = client.get(f"/v1/releases/{release['release_id']}", headers=headers)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Vary"] == "Accept"
    assert response.json["rows"] == release["rows"]


def test_another_partners_release_is_not_found_as_csv_either(
    client: FlaskClient, tokens: Tokens, release: dict[str, Any]
) -> None:
    response = _download(client, tokens.other_partner, release["release_id"])

    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "not_found"
    assert "ci_low" not in response.get_data(as_text=True)


def test_a_dpo_downloads_any_release(
    client: FlaskClient, tokens: Tokens, release: dict[str, Any]
) -> None:
    response = _download(client, tokens.dpo, release["release_id"])

    assert response.status_code == 200
    assert response.get_data(as_text=True) == Release(release).to_csv()


def test_the_openapi_document_offers_json_and_csv(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    validate(spec)

    content = spec["paths"]["/v1/releases/{release_id}"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/json", "text/csv"}
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Release"}
    example = content["text/csv"]["example"]
    assert example.splitlines()[0] == "month,value,ci_low,ci_high,release_id"
