"""Rate limits, in memory and in Redis shared by several instances: failed authentication
per client address, queries and estimates per token, 429 problem+json with Retry-After,
and a partner's normal reads never throttled."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask

from service.api.rate_limits import EXPIRY_INTERVAL, InlineExpiryStorage
from service.app import create_app
from service.config import Settings
from service.crypto.tokens import new_token
from tests.api.test_dashboard import csrf_of, sign_in
from tests.conftest import BOTH_BACKENDS, DEMO_POLICIES, bearer
from tests.live_server import deploy, free_port, instance_dir, serve, settings_variables

REDIS_URL = "redis://127.0.0.1:6379"
ESTIMATE = {"dataset": "uk-helpline-2024", "statistic": "count", "epsilon": 0.1}


def _redis_or_skip() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings for the limiter's storage; a Redis prefix of its own, deleted afterwards."""
    if request.param == "memory":
        yield {"redis_url": None}
        return
    _redis_or_skip()
    prefix = "dpx-test-" + secrets.token_hex(6)
    yield {"redis_url": REDIS_URL, "rate_limit_prefix": prefix}
    connection = redis.Redis.from_url(REDIS_URL)
    for key in connection.scan_iter(f"*{prefix}*"):
        connection.delete(key)


def _app(settings: Settings, storage: dict[str, Any], **limits: str) -> Flask:
    return create_app(dataclasses.replace(settings, **storage, **limits))


@pytest.fixture
def limited(settings: Settings, storage: dict[str, Any]) -> Iterator[Flask]:
    app = _app(
        settings,
        storage,
        rate_limit_unauthenticated="5 per minute",
        rate_limit_queries="3 per minute",
    )
    yield app
    app.extensions["dpx.database"].dispose()


def _assert_429(response: Any) -> None:
    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 61


@BOTH_BACKENDS
@pytest.mark.parametrize("header", [None, "Bearer " + new_token()], ids=["none", "guessed"])
def test_failed_authentication_is_limited_per_address(limited: Flask, header: str | None) -> None:
    client = limited.test_client()
    headers = {"Authorization": header} if header else {}
    for _ in range(5):
        assert client.get("/v1/datasets", headers=headers).status_code == 401
    _assert_429(client.get("/v1/datasets", headers=headers))
    # Another guess on another route from the same address: the count is shared.
    _assert_429(client.post("/v1/queries", json=ESTIMATE, headers=headers))
    other = limited.test_client()
    assert other.get("/v1/datasets", environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 401


@BOTH_BACKENDS
def test_a_valid_token_from_a_guessing_address_still_works(limited: Flask) -> None:
    client = limited.test_client()
    partner = bearer(limited.extensions["dpx.tokens"].issue("partner", "no-police").token)
    for _ in range(6):
        client.get("/v1/datasets", headers=bearer(new_token()))
    assert client.get("/v1/datasets", headers=partner).status_code == 200


def _guess(client: Any, times: int) -> None:
    for _ in range(times):
        assert client.get("/v1/datasets", headers=bearer(new_token())).status_code == 401


@BOTH_BACKENDS
def test_a_guessing_address_leaves_public_routes_and_signed_in_pages_alone(
    limited: Flask,
) -> None:
    """A guesser shares its address with everyone behind the same proxy or NAT: routes on
    which no token is checked are never refused for its guesses."""
    client = limited.test_client()
    dpo = limited.extensions["dpx.tokens"].issue("dpo", None).token
    assert sign_in(client, dpo).status_code == 303
    _guess(client, 5)
    _assert_429(client.get("/v1/datasets", headers=bearer(new_token())))
    for path in ("/healthz", "/readyz", "/openapi.json", "/v1/signing-keys", "/dashboard/"):
        assert client.get(path).status_code == 200, path


@BOTH_BACKENDS
def test_the_sign_in_form_counts_guesses_whatever_the_header_holds(limited: Flask) -> None:
    """The form checks the token typed into it: a valid bearer token in the header exempts
    nothing there."""
    client = limited.test_client()
    partner = bearer(limited.extensions["dpx.tokens"].issue("partner", "no-police").token)
    form = client.get("/dashboard/sign-in")
    guess = {"token": new_token(), "csrf_token": csrf_of(form)}
    for _ in range(5):
        response = client.post("/dashboard/sign-in", data=guess, headers=partner)
        assert response.status_code == 401
    assert client.post("/dashboard/sign-in", data=guess, headers=partner).status_code == 429
    # The partner's own API calls go on.
    assert client.get("/v1/datasets", headers=partner).status_code == 200


def test_metrics_count_guesses_at_the_scrapers_token_and_not_the_scraper(
    settings: Settings,
) -> None:
    scraper = "scraper-" + secrets.token_hex(16)
    app = _app(
        dataclasses.replace(settings, metrics_token=scraper),
        {"redis_url": None},
        rate_limit_unauthenticated="5 per minute",
    )
    client = app.test_client()
    partner = bearer(app.extensions["dpx.tokens"].issue("partner", "no-police").token)
    for _ in range(5):
        assert client.get("/metrics", headers=partner).status_code == 401
    _assert_429(client.get("/metrics", headers=bearer(new_token())))
    assert client.get("/metrics", headers=bearer(scraper)).status_code == 200
    app.extensions["dpx.database"].dispose()


@BOTH_BACKENDS
def test_queries_and_estimates_share_a_limit_per_token(limited: Flask) -> None:
    client = limited.test_client()
    registry = limited.extensions["dpx.tokens"]
    partner = bearer(registry.issue("partner", "no-police").token)
    other = bearer(registry.issue("partner", "interpol-sg").token)
    assert client.post("/v1/queries/estimate", json=ESTIMATE, headers=partner).status_code == 200
    assert client.post("/v1/queries/estimate", json=ESTIMATE, headers=partner).status_code == 200
    assert client.post("/v1/queries", json=ESTIMATE, headers=partner).status_code == 201
    _assert_429(client.post("/v1/queries/estimate", json=ESTIMATE, headers=partner))
    _assert_429(client.post("/v1/queries", json=ESTIMATE, headers=partner))
    assert client.post("/v1/queries/estimate", json=ESTIMATE, headers=other).status_code == 200


@BOTH_BACKENDS
def test_a_partners_dozens_of_reads_are_never_throttled(limited: Flask) -> None:
    client = limited.test_client()
    partner = bearer(limited.extensions["dpx.tokens"].issue("partner", "no-police").token)
    paths = ["/v1/datasets", "/v1/datasets/uk-helpline-2024", "/v1/releases", "/v1/budgets"]
    for _ in range(15):
        for path in paths:
            assert client.get(path, headers=partner).status_code == 200


def test_counting_in_memory_starts_no_thread(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request that counts (queries, failed authentications) does so without starting
    a thread: limits' own in-memory storage would start one for nearly every request."""
    app = _app(settings, {"redis_url": None}, rate_limit_queries="100 per minute")
    client = app.test_client()
    partner = bearer(app.extensions["dpx.tokens"].issue("partner", "no-police").token)
    started: list[threading.Thread] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for _ in range(5):
        response = client.post("/v1/queries/estimate", json=ESTIMATE, headers=partner)
        assert response.status_code == 200
        assert client.get("/v1/datasets", headers=bearer(new_token())).status_code == 401
    monkeypatch.undo()
    assert started == []
    app.extensions["dpx.database"].dispose()


def test_an_unreachable_redis_refuses_what_must_be_counted_and_nothing_else(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis down, queries and requests without a valid token are refused with 503 and
    Retry-After, never let through uncounted; a partner's reads with its token go on."""
    down = f"redis://127.0.0.1:{free_port()}"
    app = _app(settings, {"redis_url": down}, rate_limit_queries="3 per minute")
    client = app.test_client()
    partner = bearer(app.extensions["dpx.tokens"].issue("partner", "no-police").token)
    for response in (
        client.post("/v1/queries/estimate", json=ESTIMATE, headers=partner),
        client.post("/v1/queries", json=ESTIMATE, headers=partner),
        client.get("/v1/datasets"),
        client.get("/v1/datasets", headers=bearer(new_token())),
    ):
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
        assert response.json["code"] == "unavailable"
        assert response.headers["Retry-After"] == "5"
    assert client.get("/v1/datasets", headers=partner).status_code == 200
    assert client.get("/v1/budgets", headers=partner).status_code == 200
    # Nothing to count where no token is checked: readiness and public reads stay served.
    for path in ("/healthz", "/readyz", "/v1/signing-keys"):
        assert client.get(path).status_code == 200, path
    refusals = [r for r in caplog.records if "rate-limit store unreachable" in r.getMessage()]
    assert len(refusals) == 4
    assert all(r.exc_info is None and down not in r.getMessage() for r in refusals)
    app.extensions["dpx.database"].dispose()


def test_expired_counts_are_dropped_by_later_counts() -> None:
    """Without a timer thread, memory stays bounded: a count made after the expiry interval
    drops the entries whose window has passed, of every key."""
    storage = InlineExpiryStorage("dpx-memory://")
    assert storage.acquire_entry("old", limit=5, expiry=1)
    assert storage.acquire_entry("old", limit=5, expiry=1)
    assert storage.get_moving_window("old", limit=5, expiry=1)[1] == 2
    time.sleep(max(1.0, EXPIRY_INTERVAL) + 0.2)
    assert storage.acquire_entry("new", limit=5, expiry=1)
    assert not storage.events.get("old")
    assert storage.get_moving_window("new", limit=5, expiry=1)[1] == 1


@BOTH_BACKENDS
def test_instances_sharing_redis_share_the_counts(settings: Settings) -> None:
    """Two apps over one database and one Redis prefix: the limit holds across both."""
    _redis_or_skip()
    prefix = "dpx-test-" + secrets.token_hex(6)
    shared = {"redis_url": REDIS_URL, "rate_limit_prefix": prefix}
    first = _app(settings, shared, rate_limit_queries="4 per minute")
    second = _app(settings, shared, rate_limit_queries="4 per minute")
    try:
        token = bearer(first.extensions["dpx.tokens"].issue("partner", "no-police").token)
        clients = [first.test_client(), second.test_client()]
        for index in range(4):
            response = clients[index % 2].post("/v1/queries/estimate", json=ESTIMATE, headers=token)
            assert response.status_code == 200
        _assert_429(clients[0].post("/v1/queries/estimate", json=ESTIMATE, headers=token))
        _assert_429(clients[1].post("/v1/queries/estimate", json=ESTIMATE, headers=token))
    finally:
        for app in (first, second):
            app.extensions["dpx.database"].dispose()
        connection = redis.Redis.from_url(REDIS_URL)
        for key in connection.scan_iter(f"*{prefix}*"):
            connection.delete(key)


@pytest.mark.slow
def test_two_gunicorn_instances_share_one_redis(tmp_path: Path) -> None:
    _redis_or_skip()
    shutil.copytree(DEMO_POLICIES, tmp_path / "policies")
    settings = deploy(tmp_path, tmp_path / "policies")
    prefix = "dpx-test-" + secrets.token_hex(6)
    variables = {
        **settings_variables(settings),
        "DPX_REDIS_URL": REDIS_URL,
        "DPX_RATE_LIMIT_PREFIX": prefix,
        "DPX_RATE_LIMIT_UNAUTHENTICATED": "6 per minute",
    }
    try:
        with (
            serve(variables, log_path=tmp_path / "a.log", workers=2) as a,
            serve(
                {**variables, "DPX_DATA_DIR": str(instance_dir(tmp_path, 1))},
                log_path=tmp_path / "b.log",
                workers=2,
            ) as b,
        ):
            statuses = [
                requests.get(
                    (a, b)[i % 2].url + "/v1/datasets",
                    headers={"Authorization": f"Bearer {new_token()}"},
                    timeout=30,
                ).status_code
                for i in range(8)
            ]
            assert statuses[:6] == [401] * 6
            assert statuses[6:] == [429, 429]
            refused = requests.get(a.url + "/v1/datasets", timeout=30)
            assert refused.status_code == 429
            assert refused.headers["Content-Type"] == "application/problem+json"
            assert int(refused.headers["Retry-After"]) >= 1
    finally:
        connection = redis.Redis.from_url(REDIS_URL)
        for key in connection.scan_iter(f"*{prefix}*"):
            connection.delete(key)
