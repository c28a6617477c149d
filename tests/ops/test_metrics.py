"""/metrics and the logs of a live gunicorn with two workers, as an operator scrapes them."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.components import Components
from service.store.demo import generate_contacts
from service.store.ingest import parse_batch
from tests.dataset_policies import DEMO_POLICIES
from tests.live_server import LiveServer, deploy, serve, settings_variables

pytestmark = pytest.mark.slow

UK = "uk-helpline-2024"
METRICS_TOKEN = "metrics-scraper-secret-0123456789"
SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}


@dataclass
class Scenario:
    server: LiveServer
    partner_token: str
    request_ids: list[str]


def _query(**changes: object) -> dict[str, object]:
    return {"dataset": UK, "statistic": "count", "group_by": ["month"], "epsilon": 0.5, **changes}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """Four releases, one repeat, a policy refusal and a budget refusal, over two workers."""
    root = tmp_path_factory.mktemp("metrics")
    shutil.copytree(DEMO_POLICIES, root / "policies")
    settings = deploy(root, root / "policies")
    components = Components.open(settings)
    dataset = components.exchange.policies.datasets[UK]
    buffer = io.BytesIO()
    generate_contacts(dataset, contacts=2_000, seed=7).write_csv(buffer)
    components.store.add(
        dataset,
        parse_batch(buffer.getvalue(), content_type="text/csv", form="contacts", dataset=dataset),
        form="contacts",
        actor="test",
    )
    token = components.tokens.issue("partner", "no-police").token
    components.database.dispose()
    headers = {"Authorization": f"Bearer {token}"}
    variables = {
        **settings_variables(settings),
        "DPX_METRICS_TOKEN": METRICS_TOKEN,
        "DPX_METRICS_DATASET_LABELS": "1",
    }
    with serve(variables, workers=2, log_path=settings.data_dir / "gunicorn.log") as server:
        ids = []
        outcomes = []
        for body in (
            _query(),
            _query(group_by=["channel"]),
            _query(group_by=["referral_source"]),
            _query(group_by=["month", "channel"]),
            _query(),  # the same question: cached
            _query(statistic="sum", measure="minutes"),  # not in the grant
            _query(group_by=["month", "referral_source"]),
        ):  # budget is spent
            response = requests.post(
                server.url + "/v1/queries", json=body, headers=headers, timeout=30
            )
            outcomes.append(response.status_code)
            ids.append(response.headers["X-Request-ID"])
        for _ in range(10):
            response = requests.get(server.url + "/v1/datasets", headers=headers, timeout=30)
            ids.append(response.headers["X-Request-ID"])
        assert outcomes == [201, 201, 201, 201, 200, 403, 403]
        yield Scenario(server, token, ids)


def _samples(server: LiveServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(server.url + "/metrics", headers=SCRAPE, timeout=30).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_count_releases_refusals_and_requests_across_workers(scenario: Scenario) -> None:
    samples = _samples(scenario.server)
    assert _value(samples, "dpx_releases_total", dataset=UK) == 4
    assert _value(samples, "dpx_cached_answers_total", dataset=UK) == 1
    assert _value(samples, "dpx_query_refusals_total", reason="statistic") == 1
    assert _value(samples, "dpx_query_refusals_total", reason="budget_exhausted") == 1
    assert (
        _value(
            samples, "dpx_http_requests_total", endpoint="/v1/queries", method="POST", status="201"
        )
        == 4
    )
    assert (
        _value(
            samples, "dpx_http_requests_total", endpoint="/v1/datasets", method="GET", status="200"
        )
        == 10
    )
    assert (
        _value(
            samples,
            "dpx_http_request_duration_seconds_count",
            endpoint="/v1/queries",
            method="POST",
        )
        == 7
    )


def test_metrics_show_budget_spent_per_dataset_from_the_ledger(scenario: Scenario) -> None:
    samples = _samples(scenario.server)
    assert _value(samples, "dpx_budget_spent", dataset=UK, unit="epsilon") == 2.0
    assert _value(samples, "dpx_budget_global", dataset=UK, unit="epsilon") == 8.0
    assert _value(samples, "dpx_budget_spent", dataset="nl-helpline-2024", unit="rho") == 0.0


def test_metrics_need_the_metrics_token_and_name_no_partner(scenario: Scenario) -> None:
    for headers in ({}, {"Authorization": f"Bearer {scenario.partner_token}"}):
        refused = requests.get(scenario.server.url + "/metrics", headers=headers, timeout=30)
        assert refused.status_code == 401 and "dpx_" not in refused.text
    response = requests.get(scenario.server.url + "/metrics", headers=SCRAPE, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    for partner in ("no-police", "interpol-sg", "ie-helpline", "research-uni"):
        assert partner not in response.text
    assert scenario.partner_token not in response.text
    assert "rel_" not in response.text


def test_every_log_line_is_json_and_access_lines_carry_the_request_id(scenario: Scenario) -> None:
    lines = [json.loads(line) for line in scenario.server.log_text().splitlines() if line]
    assert lines
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    logged_ids = {line["request_id"] for line in access}
    assert set(scenario.request_ids) <= logged_ids
    refused = next(line for line in access if line["status"] == "403")
    assert refused["method"] == "POST" and refused["path"] == "/v1/queries"


def test_an_offered_request_id_is_logged_and_echoed(scenario: Scenario) -> None:
    response = requests.get(
        scenario.server.url + "/v1/datasets", headers={"X-Request-ID": "ops-check-42"}, timeout=30
    )
    assert response.status_code == 401
    assert response.json()["request_id"] == "ops-check-42"
    text = scenario.server.wait_for_log('"request_id": "ops-check-42"')
    assert '"status": "401"' in next(line for line in text.splitlines() if "ops-check-42" in line)


def test_the_bearer_token_never_reaches_the_log(scenario: Scenario) -> None:
    text = scenario.server.log_text()
    assert scenario.partner_token not in text
    assert "Bearer" not in text
    assert "authorization" not in text.lower()
