"""RFC 7807 problem+json: the one table that turns domain exceptions into HTTP errors.

Error bodies never carry data values, key material, SQL or stack traces; the server log
gets the details under the same request id that the body names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, g, json
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from service.api import docs
from service.api.schemas import ProblemSchema
from service.auth.registry import Unauthenticated
from service.crypto.errors import IntegrityError
from service.dp.errors import InvalidQuery
from service.dp.synopsis import NotInSynopsis
from service.exchange import Conflict, Forbidden, NotFound
from service.ledger.budgets import BudgetExhausted
from service.policy.errors import PolicyViolation
from service.store.errors import BoundsChanged, DuplicateBatch, InvalidBatch, UploadConflict
from service.synopses import NoSynopsis

log = logging.getLogger("dpx.api")

PROBLEM_TYPE = "https://dpx.invalid/problems/"
TITLES = {
    "invalid_request": "The request is not valid",
    "unauthenticated": "A valid bearer token is required",
    "forbidden": "Not allowed",
    "not_found": "Not found",
    "budget_exhausted": "Privacy budget exhausted",
    "payload_too_large": "The request body is too large",
    "rate_limited": "Too many requests",
    "conflict": "Conflicting request",
    "not_in_synopsis": "The question lies outside the synopsis",
    "no_synopsis": "No synopsis to answer from",
    "duplicate_batch": "This batch is stored already",
    "integrity_error": "Stored data failed its integrity check",
    "unavailable": "Unavailable",
    "internal_error": "Internal error",
}
_BY_STATUS = {
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "payload_too_large",
    415: "invalid_request",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + code,
        "title": TITLES.get(code, code),
        "status": status,
        "detail": detail,
        "code": code,
    }
    request_id = g.get("request_id")
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype="application/problem+json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="dpx"'
    return response


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, Mapping):
        out: list[str] = []
        for key, value in messages.items():
            out.extend(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix}: {m}" if prefix else m for m in messages]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, prefix)]
    return [f"{prefix}: {messages}"]


def _http(error: HTTPException) -> Response:
    status = error.code or 500
    code = _BY_STATUS.get(status, "internal_error" if status >= 500 else "invalid_request")
    data = getattr(error, "data", None) or {}
    messages = data.get("messages") or data.get("errors")
    if messages:
        # webargs groups messages by location ("json", "query"); the field path is enough.
        if isinstance(messages, Mapping) and set(messages) <= {
            "json",
            "query",
            "headers",
            "form",
            "files",
        }:
            messages = (
                {k: v for loc in messages.values() for k, v in loc.items()}
                if all(isinstance(v, Mapping) for v in messages.values())
                else messages
            )
        lines = _flatten(messages)
        return problem(status, code, "; ".join(lines), errors=lines)
    if status == 413:
        return problem(413, code, "the request body exceeds the size limit of this route")
    detail = error.description or error.name
    if status >= 500:
        log.error("http error %s: %s", status, detail)
        detail = "the service failed to answer; the request id identifies it in the log"
    response = problem(status, code, detail)
    # 405 names the methods that would work (Allow); 429 says when to retry (Retry-After).
    for name, value in error.get_headers():
        if name in ("Allow", "Retry-After"):
            response.headers[name] = value
    return response


Handler = Callable[[Any], Response]

HANDLERS: dict[type[Exception], Handler] = {
    Unauthenticated: lambda e: problem(
        401, "unauthenticated", "missing, malformed, unknown or revoked token"
    ),
    Forbidden: lambda e: problem(403, "forbidden", str(e)),
    PolicyViolation: lambda e: problem(403, "forbidden", str(e), rule=e.rule),
    NotFound: lambda e: problem(404, "not_found", str(e)),
    InvalidQuery: lambda e: problem(400, "invalid_request", str(e), field=e.field),
    InvalidBatch: lambda e: problem(
        422,
        "invalid_request",
        str(e).splitlines()[0],
        total_rejected=e.total,
        errors=[{"row": r.row, "column": r.column, "reason": r.reason} for r in e.errors],
    ),
    BudgetExhausted: lambda e: problem(
        403,
        "budget_exhausted",
        str(e),
        remaining={
            "partner": {e.unit: float(e.remaining.partner)},
            "dataset": {e.unit: float(e.remaining.dataset)},
        },
    ),
    Conflict: lambda e: problem(409, "conflict", str(e)),
    NotInSynopsis: lambda e: problem(400, "not_in_synopsis", str(e), marginals=e.marginals),
    NoSynopsis: lambda e: problem(409, "no_synopsis", str(e)),
    UploadConflict: lambda e: problem(409, "conflict", str(e)),
    BoundsChanged: lambda e: problem(409, "conflict", str(e)),
    DuplicateBatch: lambda e: problem(409, "duplicate_batch", str(e), batch_id=e.batch_id),
    IntegrityError: lambda e: _integrity(e),
}


def _integrity(error: Exception) -> Response:
    log.error("integrity check failed: %s", error)
    return problem(
        500,
        "integrity_error",
        "stored data failed its integrity check; the operators have been told",
    )


def _unexpected(error: Exception) -> Response:
    log.exception("unhandled error")
    return problem(
        500,
        "internal_error",
        "the service failed to answer; the request id identifies it in the log",
    )


PROBLEM_JSON = "application/problem+json"

# Examples of the error bodies of each status, as the OpenAPI document shows them.
_EXAMPLES: dict[int, list[tuple[str, str, dict[str, Any]]]] = {
    400: [
        (
            "invalid_request",
            "filters.month: '2025-01' is not in 2024-01..2024-12",
            {"field": "filters.month"},
        ),
        (
            "not_in_synopsis",
            "the dimensions caller_type do not lie in one declared marginal of the synopsis "
            "(marginals: [month, channel]); ask a direct query with a cost instead",
            {"marginals": [["month", "channel"]]},
        ),
    ],
    401: [("unauthenticated", "missing, malformed, unknown or revoked token", {})],
    403: [
        (
            "forbidden",
            "grant for uk-helpline-2024 allows statistics count; 'sum' is not allowed",
            {"rule": "statistic"},
        ),
        (
            "budget_exhausted",
            "this query would exceed the partner's grant: remaining epsilon is 0.1",
            {"remaining": {"partner": {"epsilon": 0.1}, "dataset": {"epsilon": 6.0}}},
        ),
    ],
    404: [("not_found", "no dataset 'xx-helpline-2024'", {})],
    409: [
        ("conflict", "this Idempotency-Key was already used for another request", {}),
        (
            "no_synopsis",
            "dataset nl-helpline-2024 has no synopsis built yet; ask a direct query with a "
            "cost instead",
            {},
        ),
        (
            "duplicate_batch",
            "this upload is identical to batch bat_3f2a… of uk-helpline-2024, which is stored "
            "already; upload it with ?allow_duplicate=true to store it a second time",
            {"batch_id": "bat_3f2a…"},
        ),
    ],
    413: [("payload_too_large", "the request body exceeds the size limit of this route", {})],
    422: [
        (
            "invalid_request",
            "statistic: Must be one of: count, sum, mean.",
            {"errors": ["statistic: Must be one of: count, sum, mean."]},
        )
    ],
    429: [("rate_limited", "too many requests; retry after the Retry-After delay", {})],
    503: [
        (
            "unavailable",
            "database: unreachable",
            {"checks": {"database": "unreachable", "keyring": "ok", "policies": "ok"}},
        )
    ],
    500: [
        (
            "internal_error",
            "the service failed to answer; the request id identifies it in the log",
            {},
        )
    ],
}


def _example_body(status: int, code: str, detail: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE + code,
        "title": TITLES[code],
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": "req_5f0c2a9e1b7d4c36",
        **extra,
    }


_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer realm="dpx"'}},
    429: {
        "Retry-After": {
            "schema": {"type": "integer"},
            "description": "seconds to wait before retrying",
        }
    },
    503: {
        "Retry-After": {
            "schema": {"type": "integer"},
            "description": "seconds to wait before retrying, when known",
        }
    },
}


def _problem_response(description: str, status: int) -> dict[str, Any]:
    examples = {
        code: {"value": _example_body(status, code, detail, extra)}
        for code, detail, extra in _EXAMPLES.get(status, _EXAMPLES[500])
    }
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": ProblemSchema, "examples": examples}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


class ProblemApi(Api):  # type: ignore[misc]
    """flask-smorest's Api, with problem+json for every HTTP error it handles and documents.

    Every error response in the OpenAPI document is ``application/problem+json`` with
    ``ProblemSchema`` (flask-smorest's own error schema is never used), and the document
    includes itself and the self-hosted docs page. Only flask-smorest's public hooks are
    used: ``ERROR_SCHEMA``, ``handle_http_exception``, ``init_app`` and ``spec``.
    """

    ERROR_SCHEMA = ProblemSchema

    def handle_http_exception(self, error: HTTPException) -> Response:
        return _http(error)

    def init_app(self, app: Flask, *, spec_kwargs: dict[str, Any] | None = None) -> None:
        super().init_app(app, spec_kwargs=spec_kwargs)
        self._document_problems()
        self._document_openapi_json(app)
        self.register_blueprint(docs.blp)

    def _document_problems(self) -> None:
        # flask-smorest names an error response component after its status (a view's
        # arguments refer to UNPROCESSABLE_ENTITY by itself) and registers each lazily,
        # as application/json. Registering the same names lazily again replaces them
        # before any view refers to one, so only the statuses some operation names appear.
        for status in HTTPStatus:
            if status >= 400:
                self.spec.components.response(
                    status.name, _problem_response(status.phrase, status), lazy=True
                )
        self.spec.components.response(
            self.DEFAULT_ERROR_RESPONSE_NAME,
            _problem_response("any other error, as problem+json", 500),
            lazy=True,
        )

    def _document_openapi_json(self, app: Flask) -> None:
        rule = next(app.url_map.iter_rules(docs.OPENAPI_JSON_ENDPOINT))
        self.spec.path(
            rule=rule,
            operations={
                "get": {
                    "summary": "This OpenAPI document.",
                    "tags": [docs.blp.name],
                    "security": docs.PUBLIC,
                    "responses": {
                        "200": {
                            "description": "the OpenAPI 3 document of this service",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "default": self.DEFAULT_ERROR_RESPONSE_NAME,
                    },
                }
            },
        )


def register_problem_handlers(app: Flask) -> None:
    for exception, handler in HANDLERS.items():
        app.register_error_handler(exception, handler)
    app.register_error_handler(Exception, _unexpected)
