"""The partner client against a live dpx (gunicorn, 2 workers): listing, estimating,
querying, cached re-reads, offline signature checks, typed errors, and retries that never
charge twice."""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterator
from datetime import date

import polars as pl
import pytest
from dpx_client import (
    AuthError,
    BudgetExhaustedError,
    DpxClient,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
    verify_signature,
)
from live_dpx import LiveDpx, Proxy

pytestmark = pytest.mark.slow

UK = "uk-helpline-2024"


@pytest.fixture
def client(live: LiveDpx) -> Iterator[DpxClient]:
    with DpxClient(live.url, live.tokens["no-police"], timeout=30, backoff=0.01) as connected:
        yield connected


def _spent(client: DpxClient, dataset: str = UK) -> float:
    return next(row["spent"] for row in client.budgets() if row["dataset"] == dataset)


def test_lists_the_datasets_of_the_partners_grants(client: DpxClient) -> None:
    assert {dataset["id"] for dataset in client.datasets()} == {UK, "nl-helpline-2024"}
    uk = client.dataset(UK)
    assert uk["grant"]["statistics"] == ["count"]
    assert uk["privacy"]["budget_unit"] == "epsilon"


def test_an_unknown_dataset_is_not_found(client: DpxClient) -> None:
    with pytest.raises(NotFoundError, match="no dataset 'xx-helpline'") as raised:
        client.dataset("xx-helpline")
    assert (raised.value.status, raised.value.code) == (404, "not_found")


def test_estimate_reports_cost_and_accuracy_and_spends_nothing(client: DpxClient) -> None:
    before = _spent(client)
    estimate = client.estimate(dataset=UK, group_by=["channel"], epsilon=0.2)
    assert estimate["privacy"]["epsilon"] == 0.2
    assert estimate["accuracy"]["max_error"] > 0
    assert _spent(client) == before


def test_query_is_charged_once_and_its_repeat_is_the_stored_release(client: DpxClient) -> None:
    before = _spent(client)
    first = client.query(
        dataset=UK, group_by=["month"], filters={"referral_source": ["police_warning"]}, epsilon=0.1
    )
    assert not first.cached
    assert [row["month"] for row in first.rows] == [f"2024-{m:02d}" for m in range(1, 13)]
    assert first.values == [row["value"] for row in first.rows]
    assert _spent(client) == pytest.approx(before + 0.1)
    again = client.query(
        dataset=UK, group_by=["month"], filters={"referral_source": ["police_warning"]}, epsilon=0.1
    )
    assert again.cached
    assert (again.release_id, again.values) == (first.release_id, first.values)
    assert _spent(client) == pytest.approx(before + 0.1)
    assert first.release_id in [release.release_id for release in client.releases()]


def test_signatures_verify_offline_and_tampering_is_detected(client: DpxClient) -> None:
    fresh = client.query(dataset=UK, group_by=["channel"], epsilon=0.1)
    stored = client.release(fresh.release_id)
    assert client.verify(fresh)
    assert client.verify(stored)
    assert verify_signature(stored.document, client.signing_keys())
    # budget and cached are per-caller extras outside the signature.
    assert client.verify(dict(fresh.document, cached=True, budget={}))
    tampered = copy.deepcopy(stored.document)
    tampered["rows"][0]["value"] += 1
    assert not client.verify(tampered)
    assert not client.verify(dict(stored.document, dataset="nl-helpline-2024"))
    unsigned = {k: v for k, v in stored.document.items() if k != "signature"}
    assert not client.verify(unsigned)


def test_release_converts_to_a_polars_frame_with_months_as_dates(client: DpxClient) -> None:
    release = client.query(dataset=UK, group_by=["month", "channel"], epsilon=0.1)
    frame = release.to_polars()
    assert frame.shape == (48, 5)
    assert frame.columns == ["month", "channel", "value", "ci_low", "ci_high"]
    assert frame.schema["month"] == pl.Date
    assert frame["month"].unique().sort().to_list() == [date(2024, m, 1) for m in range(1, 13)]
    assert frame["value"].to_list() == release.values
    assert (frame["ci_low"] <= frame["ci_high"]).all()
    assert release.to_pandas()["value"].to_list() == release.values


def test_the_csv_download_is_the_release_as_the_client_writes_it(client: DpxClient) -> None:
    release = client.query(dataset=UK, group_by=["referral_source"], epsilon=0.1)
    downloaded = client.release_csv(release.release_id)
    assert downloaded == release.to_csv()
    assert downloaded.splitlines()[0] == "referral_source,value,ci_low,ci_high,release_id"
    assert len(downloaded.splitlines()) == 1 + len(release.rows)


def test_problems_raise_typed_errors(client: DpxClient, live: LiveDpx) -> None:
    with pytest.raises(ForbiddenError, match="allows statistics count") as refused:
        client.query(dataset=UK, statistic="sum", measure="minutes", epsilon=0.1)
    assert not isinstance(refused.value, BudgetExhaustedError)
    with pytest.raises(InvalidRequestError, match="group_by") as invalid:
        client.estimate(dataset=UK, group_by=["planet"], epsilon=0.1)
    assert invalid.value.status == 400
    with (
        DpxClient(live.url, "dpx_not-a-real-token") as stranger,
        pytest.raises(AuthError, match="token") as unauthenticated,
    ):
        stranger.datasets()
    assert unauthenticated.value.status == 401


def test_an_exhausted_budget_raises_with_what_is_left(live: LiveDpx) -> None:
    # interpol-sg holds epsilon 1.0 on the UK dataset, at most 0.25 a query.
    with DpxClient(live.url, live.tokens["interpol-sg"]) as interpol:
        for month in ("2024-01", "2024-02", "2024-03", "2024-04"):
            interpol.query(dataset=UK, filters={"month": [month]}, epsilon=0.25)
        with pytest.raises(BudgetExhaustedError, match="exceed the partner's grant") as spent:
            interpol.query(dataset=UK, filters={"month": ["2024-05"]}, epsilon=0.25)
    assert spent.value.remaining["partner"] == {"epsilon": 0.0}


def test_a_lost_response_is_retried_with_the_same_key_and_charged_once(
    live: LiveDpx, proxy: Proxy
) -> None:
    proxy.faults["POST /v1/queries"] = ["lose"]
    with DpxClient(proxy.url, live.tokens["no-police"], backoff=0.01) as client:
        before = _spent(client)
        release = client.query(dataset=UK, group_by=["referral_source"], epsilon=0.2)
        after = _spent(client)
    keys = [key for route, key in proxy.seen if route == "POST /v1/queries"]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0] is not None
    assert after == pytest.approx(before + 0.2)
    assert len(release.rows) == 6
    assert DpxClient(live.url, live.tokens["no-police"]).verify(release)


@pytest.mark.parametrize(("fault", "epsilon"), [("503", 0.05), ("429", 0.06)])
def test_busy_answers_are_retried_with_the_same_key(
    live: LiveDpx, proxy: Proxy, fault: str, epsilon: float
) -> None:
    proxy.faults["POST /v1/queries"] = [fault, fault]
    with DpxClient(proxy.url, live.tokens["no-police"], backoff=0.01) as client:
        before = _spent(client)
        client.query(dataset=UK, filters={"channel": ["email"]}, epsilon=epsilon)
        assert _spent(client) == pytest.approx(before + epsilon)
    keys = [key for route, key in proxy.seen if route == "POST /v1/queries"]
    assert len(keys) == 3 and len(set(keys)) == 1


def test_retries_end_with_a_typed_error(live: LiveDpx, proxy: Proxy) -> None:
    proxy.faults["GET /v1/budgets"] = ["503"] * 3
    with (
        DpxClient(proxy.url, live.tokens["no-police"], retries=2, backoff=0.01) as client,
        pytest.raises(UnavailableError, match="try again"),
    ):
        client.budgets()
    assert len(proxy.seen) == 3


@pytest.fixture
def nothing_listening() -> Iterator[str]:
    """A loopback URL whose port is bound but never listens: connections are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


def test_an_unreachable_service_is_one_clear_error(nothing_listening: str) -> None:
    with (
        DpxClient(nothing_listening, "token", retries=1, backoff=0.01) as client,
        pytest.raises(UnavailableError, match="cannot reach") as raised,
    ):
        client.datasets()
    assert raised.value.status == 0


def test_releases_follow_the_services_pages(client: DpxClient) -> None:
    for month in ("2024-01", "2024-02", "2024-03", "2024-04", "2024-05"):
        client.query(dataset=UK, filters={"month": [month]}, epsilon=0.01)
    everything = client.releases(limit=None, page_size=1000)
    assert len(everything) >= 5
    paged = client.releases(limit=None, page_size=2)
    assert [r.release_id for r in paged] == [r.release_id for r in everything]
    assert [r.release_id for r in client.releases(limit=3, page_size=2)] == [
        r.release_id for r in everything[:3]
    ]


@pytest.mark.parametrize("call", ["estimate", "query"])
def test_a_misspelt_or_missing_query_member_fails_before_any_request(call: str) -> None:
    # Nothing listens on this port: a request would fail with a connection error instead.
    with DpxClient("http://127.0.0.1:9", "dpx_unused", retries=0) as offline:
        with pytest.raises(TypeError, match="epsilom"):
            getattr(offline, call)(dataset=UK, epsilom=0.1)
        with pytest.raises(TypeError, match="dataset"):
            getattr(offline, call)(statistic="count", epsilon=0.1)
