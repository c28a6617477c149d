"""The Python client of the dpx HTTP API, for partner agencies.

``DpxClient`` wraps one ``requests.Session``. Calls that fail on the way (connection
errors, 429 and 503) are retried with exponential backoff; a query is retried with the same
``Idempotency-Key``, so the service answers a retry with the first response and never
charges the budget twice. Problem responses raise :class:`DpxError` subclasses.

A release's Ed25519 signature is checked offline with ``cryptography`` alone: nothing of
the service but its published public keys is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

if TYPE_CHECKING:
    import polars as pl

RETRY_STATUSES = frozenset({429, 503})
# Members a server adds to a release for one caller after signing it.
UNSIGNED_FIELDS = frozenset({"signature", "cached", "budget"})
MAX_RETRY_AFTER = 30.0


class DpxError(Exception):
    """The service answered with a problem (or could not be reached, status 0)."""

    def __init__(
        self, status: int, code: str, detail: str, body: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{detail} ({code}, HTTP {status})" if status else detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.body: dict[str, Any] = dict(body or {})


class InvalidRequestError(DpxError):
    """The request is malformed or names something the dataset does not have (400, 422)."""


class AuthError(DpxError):
    """The token is missing, unknown or revoked (401)."""


class ForbiddenError(DpxError):
    """The token may not do this, or the partner's grant does not allow it (403)."""


class BudgetExhaustedError(ForbiddenError):
    """The query would exceed the partner's grant or the dataset's global budget (403)."""

    @property
    def remaining(self) -> dict[str, Any]:
        """What the partner's grant and the dataset have left, e.g. ``{"partner": {...}}``."""
        remaining: dict[str, Any] = self.body.get("remaining") or {}
        return remaining


class NotFoundError(DpxError):
    """No such dataset or release, or not one this token may see (404)."""


class ConflictError(DpxError):
    """An Idempotency-Key was reused for another request, or a release is in progress (409)."""


class PayloadTooLargeError(DpxError):
    """The request body exceeds the service's limit (413)."""


class RateLimitedError(DpxError):
    """Still rate-limited after every retry (429)."""


class UnavailableError(DpxError):
    """The service is not ready or cannot be reached, after every retry (503, or status 0)."""


_BY_CODE: dict[str, type[DpxError]] = {
    "invalid_request": InvalidRequestError,
    "unauthenticated": AuthError,
    "forbidden": ForbiddenError,
    "budget_exhausted": BudgetExhaustedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "payload_too_large": PayloadTooLargeError,
    "rate_limited": RateLimitedError,
    "unavailable": UnavailableError,
}
_BY_STATUS: dict[int, type[DpxError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: UnavailableError,
}


def error_from_response(response: requests.Response) -> DpxError:
    """The :class:`DpxError` subclass that names an error response's problem."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"http_{response.status_code}")
    detail = str(body.get("detail") or body.get("title") or response.reason or "error")
    kind = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, DpxError)
    return kind(response.status_code, code, detail, body)


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """The bytes a release signature covers: keys sorted, separators ``,`` and ``:``, UTF-8."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def verify_signature(document: Mapping[str, Any], keys: Sequence[Mapping[str, Any]]) -> bool:
    """True only if ``document["signature"]`` is a valid Ed25519 signature, by the key it
    names among ``keys`` (as ``GET /v1/signing-keys`` lists them), over the document
    without its unsigned members (``signature``, ``cached``, ``budget``).

    Malformed input of any kind is False, never an exception.
    """
    signature = document.get("signature")
    if not isinstance(signature, Mapping) or signature.get("alg") != "Ed25519":
        return False
    named = [
        key
        for key in keys
        if key.get("key_id") == signature.get("key_id") and key.get("alg") == "Ed25519"
    ]
    if len(named) != 1:
        return False
    signed = {name: value for name, value in document.items() if name not in UNSIGNED_FIELDS}
    try:
        public_key = Ed25519PublicKey.from_public_bytes(
            base64.b64decode(str(named[0].get("public_key")), validate=True)
        )
        public_key.verify(
            base64.b64decode(str(signature.get("value")), validate=True), canonical_json(signed)
        )
    # binascii.Error is a ValueError; TypeError and ValueError also cover documents that
    # have no canonical JSON form.
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


class Release:
    """A signed release as the service returned it, with its rows in convenient shapes."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document: dict[str, Any] = dict(document)

    def __repr__(self) -> str:
        return f"Release({self.release_id!r}, rows={len(self.rows)}, cached={self.cached})"

    @property
    def release_id(self) -> str:
        return str(self.document.get("release_id", ""))

    @property
    def dataset(self) -> str:
        return str(self.document.get("dataset", ""))

    @property
    def query(self) -> dict[str, Any]:
        query: dict[str, Any] = self.document.get("query") or {}
        return query

    @property
    def group_by(self) -> list[str]:
        return list(self.query.get("group_by") or [])

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per output cell: the group-by values, ``value`` and ``ci`` [low, high]."""
        rows: list[dict[str, Any]] = self.document.get("rows") or []
        return rows

    @property
    def values(self) -> list[float]:
        """The noisy values, in row order."""
        return [row["value"] for row in self.rows]

    @property
    def cached(self) -> bool:
        """True when this is the stored answer of an earlier identical query (charged 0)."""
        return bool(self.document.get("cached", False))

    @property
    def privacy(self) -> dict[str, Any]:
        privacy: dict[str, Any] = self.document.get("privacy") or {}
        return privacy

    @property
    def budget(self) -> dict[str, Any]:
        """Remaining budgets when the release was returned (absent on stored copies)."""
        budget: dict[str, Any] = self.document.get("budget") or {}
        return budget

    def _columns(self) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {name: [] for name in self.group_by}
        columns.update(value=[], ci_low=[], ci_high=[])
        for row in self.rows:
            for name in self.group_by:
                columns[name].append(row[name])
            columns["value"].append(row["value"])
            columns["ci_low"].append(row["ci"][0])
            columns["ci_high"].append(row["ci"][1])
        return columns

    def to_polars(self) -> pl.DataFrame:
        """The rows as a Polars frame: group-by columns, ``value``, ``ci_low``, ``ci_high``."""
        import polars as pl

        return pl.DataFrame(self._columns())

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas; ``ImportError`` without it)."""
        try:
            import pandas as pd
        except ImportError as missing:
            raise ImportError("to_pandas() needs pandas: pip install pandas") from missing
        return pd.DataFrame(self._columns())


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


class DpxClient:
    """A partner's (or DPO's) connection to one dpx service."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["Accept"] = "application/json, application/problem+json"
        self._keys: list[dict[str, Any]] | None = None

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> DpxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API ----------------------------------------------------------------------------

    def datasets(self) -> list[dict[str, Any]]:
        """Datasets visible to this token: schema, privacy unit and this partner's grant."""
        datasets: list[dict[str, Any]] = self._call("GET", "/v1/datasets")["datasets"]
        return datasets

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset; :class:`NotFoundError` when unknown or not visible."""
        dataset: dict[str, Any] = self._call("GET", f"/v1/datasets/{_segment(dataset_id)}")
        return dataset

    def estimate(
        self,
        *,
        dataset: str,
        statistic: str = "count",
        measure: str | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, Any] | None = None,
        epsilon: float | None = None,
        rho: float | None = None,
        accuracy: Mapping[str, float] | None = None,
        alpha: float | None = None,
    ) -> dict[str, Any]:
        """Cost, noise scale, accuracy and remaining budgets of a query; spends nothing."""
        body = _drop_none(
            dataset=dataset,
            statistic=statistic,
            measure=measure,
            group_by=list(group_by),
            filters=dict(filters or {}),
            epsilon=epsilon,
            rho=rho,
            accuracy=dict(accuracy) if accuracy else None,
            alpha=alpha,
        )
        estimate: dict[str, Any] = self._call("POST", "/v1/queries/estimate", json_body=body)
        return estimate

    def query(
        self,
        *,
        dataset: str,
        statistic: str = "count",
        measure: str | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, Any] | None = None,
        epsilon: float | None = None,
        rho: float | None = None,
        accuracy: Mapping[str, float] | None = None,
        alpha: float | None = None,
        idempotency_key: str | None = None,
    ) -> Release:
        """Run a query and return its signed release; spends budget unless ``cached``.

        Every attempt of this call carries the same ``Idempotency-Key`` (a fresh one unless
        given), so a retry after a lost response never charges twice.
        """
        body = _drop_none(
            dataset=dataset,
            statistic=statistic,
            measure=measure,
            group_by=list(group_by),
            filters=dict(filters or {}),
            epsilon=epsilon,
            rho=rho,
            accuracy=dict(accuracy) if accuracy else None,
            alpha=alpha,
        )
        key = idempotency_key or "idem_" + secrets.token_urlsafe(18)
        return Release(
            self._call("POST", "/v1/queries", json_body=body, headers={"Idempotency-Key": key})
        )

    def releases(self, *, limit: int | None = 100, page_size: int = 100) -> list[Release]:
        """This partner's stored releases, newest first: the first ``limit`` (None: all),
        fetched ``page_size`` at a time by following the service's ``next`` cursor."""
        found: list[Release] = []
        cursor: str | None = None
        while limit is None or len(found) < limit:
            size = page_size if limit is None else min(page_size, limit - len(found))
            page = self._call("GET", "/v1/releases", params=_drop_none(limit=size, cursor=cursor))
            found.extend(Release(document) for document in page["releases"])
            cursor = page.get("next")
            if cursor is None:
                break
        return found

    def release(self, release_id: str) -> Release:
        """One stored release; :class:`NotFoundError` for another partner's."""
        return Release(self._call("GET", f"/v1/releases/{_segment(release_id)}"))

    def budgets(self) -> list[dict[str, Any]]:
        """Granted, spent and remaining per dataset, with each dataset's global budget."""
        budgets: list[dict[str, Any]] = self._call("GET", "/v1/budgets")["budgets"]
        return budgets

    def signing_keys(self) -> list[dict[str, Any]]:
        """The service's Ed25519 public keys, current and retired."""
        keys: list[dict[str, Any]] = self._call("GET", "/v1/signing-keys")["keys"]
        self._keys = keys
        return keys

    def verify(self, release: Release | Mapping[str, Any]) -> bool:
        """True only if the release carries a valid signature by a published key.

        The keys are fetched once and again only when a release names a key not yet seen
        (a rotation); the check itself runs locally.
        """
        document = release.document if isinstance(release, Release) else dict(release)
        signature = document.get("signature")
        key_id = signature.get("key_id") if isinstance(signature, Mapping) else None
        keys = self._keys
        if keys is None or not any(key.get("key_id") == key_id for key in keys):
            keys = self.signing_keys()
        return verify_signature(document, keys)

    # -- transport --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one logical request, retrying what may be retried; the decoded JSON body."""
        call_id = "req_" + secrets.token_hex(8)
        sent = {"X-Request-ID": call_id, **(headers or {})}
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                response = self.session.request(
                    method, url, json=json_body, params=params, headers=sent, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as failure:
                if attempt >= self.retries:
                    raise UnavailableError(
                        0, "unreachable", f"cannot reach {self.base_url}: {failure}"
                    ) from None
                time.sleep(self._delay(call_id, attempt, None))
                attempt += 1
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                delay = self._delay(call_id, attempt, response.headers.get("Retry-After"))
                response.close()
                time.sleep(delay)
                attempt += 1
                continue
            if response.status_code >= 400:
                raise error_from_response(response)
            return response.json()

    def _delay(self, call_id: str, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: the server's Retry-After if it gave
        one, else exponential backoff with jitter.

        The jitter only spreads the retries of many clients apart; it is taken from the
        call's random request id, hashed with the attempt number. It is not noise and
        protects nothing, so no random number generator is needed for it.
        """
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
            except ValueError:
                pass
        digest = hashlib.sha256(f"{call_id}:{attempt}".encode()).digest()
        spread = 0.5 + int.from_bytes(digest[:2], "big") / 0xFFFF / 2  # in [0.5, 1.0]
        return float(self.backoff * 2.0**attempt * spread)


def _segment(value: str) -> str:
    return quote(value, safe="")
