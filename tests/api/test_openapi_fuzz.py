"""Generated requests from the OpenAPI document, as a partner, a DPO and an owner: no answer
is a 5xx, and every answer has a documented status, content type and body schema.

Schemathesis calls the app in-process (WSGI): no network at all. Examples are bounded
(``EXAMPLES`` per operation) and derandomized, so CI repeats the same requests.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.config import Settings
from tests.conftest import BOTH_BACKENDS, bearer

pytestmark = [pytest.mark.slow, BOTH_BACKENDS]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 30
"""Generated requests per operation; each is sent with all three tokens."""
ROLES = {
    "partner": ("partner", "no-police"),
    "dpo": ("dpo", None),
    "owner": ("owner", "uk-helpline-2024"),
}


@pytest.fixture
def fuzzed_app(settings: Settings) -> Iterator[Flask]:
    # Rate limits are tested elsewhere; here they would only turn examples into 429s.
    app = create_app(
        dataclasses.replace(
            settings,
            rate_limit_unauthenticated="100000 per minute",
            rate_limit_queries="100000 per minute",
        )
    )
    app.config["TESTING"] = True
    yield app
    app.extensions["dpx.database"].dispose()


def _check_operation(operation: Any, tokens: dict[str, str], seen: Counter[int]) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def each_role(case: schemathesis.Case) -> None:
        for token in tokens.values():
            response = case.call(headers=bearer(token))
            seen[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

    each_role()


def test_generated_requests_get_documented_answers(fuzzed_app: Flask) -> None:
    """Each generated request is sent once with each role's token."""
    registry = fuzzed_app.extensions["dpx.tokens"]
    tokens = {role: registry.issue(kind, subject).token for role, (kind, subject) in ROLES.items()}
    schema = schemathesis.openapi.from_wsgi("/openapi.json", fuzzed_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    seen: Counter[int] = Counter()
    for operation in operations:
        _check_operation(operation, tokens, seen)
    # The run reached both answers and refusals, and sent what it was meant to send.
    assert seen[200] > 0 and sum(seen[s] for s in (400, 401, 403, 404, 422)) > 0
    assert sum(seen.values()) >= len(operations) * len(ROLES), seen
