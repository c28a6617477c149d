"""Rate limits: Flask-Limiter, counting in Redis when ``DPX_REDIS_URL`` is set (so every
instance and worker shares the counts) and in each process's memory otherwise.

Two limits, both checked before a request is authenticated or its body read:

- per client address, ``DPX_RATE_LIMIT_UNAUTHENTICATED``, counting only answers of 401
  (no token, or a token that failed): guessing tokens is slow. It applies where a token is
  checked: the API routes that need a bearer token (a request with a valid one is exempt,
  so callers sharing an address with a guesser are not locked out), ``/metrics`` (exempt
  with the scraper's token) and the dashboard's sign-in form, which checks the token typed
  into it whatever the header holds. Public routes (health, readiness, the OpenAPI
  document, signing keys) and the dashboard's signed-in pages check no token: a guesser
  at their address never locks them;
- per bearer token, ``DPX_RATE_LIMIT_QUERIES``, counting queries and estimates together:
  each one prices a query and may write an audit entry.

Reads (datasets, releases, budgets) have no limit of their own, so a partner's normal
use is never throttled. A refused request is 429 problem+json with ``Retry-After``.

While Redis cannot be reached, a request that must be counted (a query, an estimate, a
request without a valid token) is refused with 503 problem+json and ``Retry-After``: it is
never let through uncounted. Reads with a valid token go on.

In memory, the counts live in ``InlineExpiryStorage``: limits' own in-memory storage
starts a thread to drop expired entries 10 ms after any count unless one is running,
which at the rates of an exchange is a new thread for nearly every request, about an
eighth of a charged release's CPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limit, Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits.errors import StorageError
from limits.storage import MemoryStorage

from service.api.auth import checks_bearer_token, presented_token, principal
from service.api.problems import problem
from service.auth.registry import Unauthenticated
from service.config import Settings
from service.observability.metrics import METRICS_ENDPOINT, offers_metrics_token

log = logging.getLogger("dpx.api")

QUERY_ENDPOINTS = frozenset({"queries.Queries", "queries.Estimate"})
# Seconds a request refused for an unreachable Redis is told to wait.
STORE_RETRY_AFTER = 5
# Expired counts are dropped at most this often (seconds); whether a request is within its
# limit never depends on it, since every count is checked against its own time.
EXPIRY_INTERVAL = 1.0


class InlineExpiryStorage(MemoryStorage):
    """limits' in-memory storage, with its expiry run by the counting request itself, at
    most once every ``EXPIRY_INTERVAL``, instead of by a new timer thread."""

    STORAGE_SCHEME = ["dpx-memory"]

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        self._next_expiry = 0.0
        self._expiry_lock = threading.Lock()
        super().__init__(uri, **options)

    # The name under which MemoryStorage calls its own private scheduler on every count.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry or not self._expiry_lock.acquire(blocking=False):
            return
        try:
            self._next_expiry = now + EXPIRY_INTERVAL
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]
        finally:
            self._expiry_lock.release()


def _token_key() -> str:
    # A digest, so the token itself never reaches Redis or memory dumps.
    return hashlib.sha256((presented_token() or "").encode()).hexdigest()


# The dashboard's sign-in form: the token it checks is in the form, not the header.
SIGN_IN_FORM = "dashboard.sign_in_submit"


def _authenticated() -> bool:
    if presented_token() is None:
        return False
    try:
        principal()  # cached for the request: authentication does not look twice
    except Unauthenticated:
        return False
    return True


def _cannot_be_a_guess() -> bool:
    """Exempt from the per-address limit: requests on which no token is checked, and those
    whose checked token is valid."""
    if request.endpoint == SIGN_IN_FORM:
        return False
    if request.endpoint == METRICS_ENDPOINT:
        return offers_metrics_token(current_app.config["DPX_SETTINGS"])
    if not checks_bearer_token():
        return True
    return _authenticated()


def _not_a_query() -> bool:
    return request.endpoint not in QUERY_ENDPOINTS


def _failed_authentication(response: Response) -> bool:
    return response.status_code == 401


def register_rate_limits(app: Flask, settings: Settings) -> Limiter:
    """Install the limiter; register it before authentication so it is checked first."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=settings.redis_url or "dpx-memory://",
        # Redis errors arrive as StorageError, refused below, whatever the client library.
        storage_options={"wrap_exceptions": True},
        key_prefix=settings.rate_limit_prefix,
        strategy="moving-window",
        default_limits=[
            Limit(
                settings.rate_limit_unauthenticated,
                key_function=get_remote_address,
                scope="unauthenticated",
                shared=True,
                exempt_when=_cannot_be_a_guess,
                deduct_when=_failed_authentication,
            ),
            Limit(
                settings.rate_limit_queries,
                key_function=_token_key,
                scope="queries",
                shared=True,
                exempt_when=_not_a_query,
            ),
        ],
    )

    @app.errorhandler(RateLimitExceeded)
    def too_many_requests(error: RateLimitExceeded) -> Response:
        response = problem(
            429, "rate_limited", "too many requests; retry after the Retry-After delay"
        )
        current = limiter.current_limit
        wait = current.reset_at - time.time() if current is not None else 1.0
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response

    @app.errorhandler(StorageError)
    def store_unreachable(error: StorageError) -> Response:
        # The error's class only: its text may name the Redis server.
        log.warning(
            "rate-limit store unreachable (%s): a request that must be counted is refused",
            type(error.storage_error).__name__,
        )
        response = problem(
            503,
            "unavailable",
            "requests of this kind cannot be counted against their rate limit now; "
            "retry after the Retry-After delay",
        )
        response.headers["Retry-After"] = str(STORE_RETRY_AFTER)
        return response

    return limiter
