"""The Python client of the dpx HTTP API, for partner agencies.

``DpxClient`` wraps one ``requests.Session``. Calls that fail on the way (connection
errors, lost responses, 429 and 503) are retried by urllib3's ``Retry`` with exponential
backoff, honouring ``Retry-After``; a query is retried with the same ``Idempotency-Key``,
so the service answers a retry with the first response and never charges the budget twice.
Problem responses raise :class:`DpxError` subclasses.

A release's Ed25519 signature is checked offline with ``cryptography`` alone: nothing of
the service but its published public keys is trusted.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Required, TypedDict, Unpack
from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dpx_client.signature import verify_signature
from dpx_client.table import (
    CSV_MEDIA_TYPE,
    month_dimensions,
    release_columns,
    release_csv,
    release_html,
)

if TYPE_CHECKING:
    import polars as pl

RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER = 30  # seconds: a longer Retry-After is waited for this long only


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

    def to_polars(self) -> pl.DataFrame:
        """The rows as a Polars frame: group-by columns (months as ``Date``, the first day
        of the month), ``value``, ``ci_low``, ``ci_high``. Needs polars
        (``dpx-client[polars]``)."""
        try:
            import polars as pl
        except ImportError as missing:
            raise ImportError("to_polars() needs polars: pip install 'dpx-client[polars]'") from (
                missing
            )
        return pl.DataFrame(release_columns(self.document, months_as_dates=True))

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame, columns as in :meth:`to_polars` (months as
        ``datetime64``). Needs pandas (``dpx-client[pandas]``)."""
        try:
            import pandas as pd
        except ImportError as missing:
            raise ImportError("to_pandas() needs pandas: pip install 'dpx-client[pandas]'") from (
                missing
            )
        frame = pd.DataFrame(release_columns(self.document, months_as_dates=True))
        for name in month_dimensions(self.document):
            frame[name] = pd.to_datetime(frame[name])
        return frame

    def to_csv(self) -> str:
        """The rows as CSV, byte for byte what ``GET /v1/releases/{id}`` answers to
        ``Accept: text/csv``: dimensions, ``value``, ``ci_low``, ``ci_high``, ``release_id``."""
        return release_csv(self.document)

    def _repr_html_(self) -> str:
        """A notebook shows a release as a table."""
        return release_html(self.document)


def _drop_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


class Question(TypedDict, total=False):
    """The members of a query, as :meth:`DpxClient.estimate` and :meth:`DpxClient.query`
    take them: ``dataset`` and a cost (``epsilon``, ``rho`` or an ``accuracy`` target),
    unless ``source="synopsis"`` answers it free. ``statistic`` is ``count`` unless given."""

    dataset: Required[str]
    statistic: str
    measure: str | None
    group_by: Sequence[str]
    filters: Mapping[str, Any] | None
    epsilon: float | None
    rho: float | None
    accuracy: Mapping[str, float] | None
    alpha: float | None
    source: str | None


def _query_body(question: Question) -> dict[str, Any]:
    """The JSON body of ``question``, as both query routes take it."""
    # Keywords are not checked by Python here, so a misspelt one fails as it would in a
    # signature of its own, instead of being dropped and asking another question.
    unknown = sorted(set(question) - Question.__required_keys__ - Question.__optional_keys__)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    if "dataset" not in question:
        raise TypeError("missing required keyword argument: dataset")
    accuracy = question.get("accuracy")
    return _drop_none(
        dataset=question["dataset"],
        statistic=question.get("statistic", "count"),
        measure=question.get("measure"),
        group_by=list(question.get("group_by", ())),
        filters=dict(question.get("filters") or {}),
        epsilon=question.get("epsilon"),
        rho=question.get("rho"),
        accuracy=dict(accuracy) if accuracy else None,
        alpha=question.get("alpha"),
        source=question.get("source"),
    )


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
        self.session = session or requests.Session()
        adapter = HTTPAdapter(max_retries=_retry_policy(retries, backoff))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
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

    def estimate(self, **question: Unpack[Question]) -> dict[str, Any]:
        """Cost, noise scale, accuracy and remaining budgets of a query; spends nothing.

        Takes the members of a :class:`Question` as keywords. ``source="synopsis"`` asks
        about an answer from the dataset's synopsis (free)."""
        body = _query_body(question)
        estimate: dict[str, Any] = self._call("POST", "/v1/queries/estimate", json_body=body)
        return estimate

    def query(self, *, idempotency_key: str | None = None, **question: Unpack[Question]) -> Release:
        """Run a query and return its signed release; spends budget unless ``cached``.

        Takes the members of a :class:`Question` as keywords. ``source="synopsis"`` (and no
        cost) answers from the dataset's newest synopsis, free; :class:`DpxError` with code
        ``not_in_synopsis`` or ``no_synopsis`` when it cannot.

        Every attempt of this call carries the same ``Idempotency-Key`` (a fresh one unless
        given), so a retry after a lost response never charges twice.
        """
        body = _query_body(question)
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

    def release_csv(self, release_id: str) -> str:
        """One stored release as CSV, as the service renders it (see :meth:`Release.to_csv`)."""
        csv_text: str = self._call(
            "GET",
            f"/v1/releases/{_segment(release_id)}",
            headers={"Accept": CSV_MEDIA_TYPE},
            text=True,
        )
        return csv_text

    # -- transport --------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        text: bool = False,
    ) -> Any:
        """Send one logical request (its attempts are the session's retry policy); the
        decoded JSON body, or with ``text`` the body as text."""
        # Every attempt of the call carries the same headers: one request id, and for a
        # query one Idempotency-Key.
        sent = {"X-Request-ID": "req_" + secrets.token_hex(8), **(headers or {})}
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                json=json_body,
                params=params,
                headers=sent,
                timeout=self.timeout,
            )
        except (requests.ConnectionError, requests.Timeout) as failure:
            raise UnavailableError(
                0, "unreachable", f"cannot reach {self.base_url}: {failure}"
            ) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response.text if text else response.json()


def _retry_policy(retries: int, backoff: float) -> Retry:
    """Up to ``retries`` more attempts after connection errors, lost responses, 429 and 503.

    POST is retried too: a query carries one Idempotency-Key for all its attempts and an
    estimate spends nothing, so no retry can charge twice. The wait doubles from
    ``backoff`` (plus up to ``backoff`` of jitter, which only spreads clients apart) unless
    the service names one in Retry-After. When retries run out, the last answer is
    returned, so it becomes the typed error of its problem.
    """
    return Retry(
        total=retries,
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff,
        backoff_jitter=backoff,
        retry_after_max=MAX_RETRY_AFTER,
        raise_on_status=False,
    )


def _segment(value: str) -> str:
    return quote(value, safe="")
