"""Queries: estimate the cost and accuracy of a question, or run it and get a release."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from service.api.auth import allowed, require
from service.api.bodies import Blueprint
from service.api.docs import BEARER, problem_responses
from service.api.idempotency import idempotency_key, parameter
from service.api.schemas import (
    ESTIMATE_EXAMPLE,
    QUERY_EXAMPLES,
    RELEASE_EXAMPLE,
    EstimateSchema,
    QuerySchema,
    ReleaseSchema,
)
from service.observability.metrics import count_answer, count_refusal

blp = Blueprint(
    "queries", __name__, url_prefix="/v1/queries", description="Differentially private queries"
)


@blp.route("/estimate")
class Estimate(MethodView):
    @allowed("partner")
    @blp.doc(security=BEARER)
    @blp.arguments(QuerySchema, examples=QUERY_EXAMPLES)
    @blp.response(200, EstimateSchema, example=ESTIMATE_EXAMPLE)
    @problem_responses(blp, 400, 401, 403, 404, 409, 413, 429, 503)
    def post(self, query: dict[str, Any]) -> dict[str, Any]:
        """Cost, noise scale, accuracy and remaining budgets of a query; spends nothing."""
        caller = require("partner")
        result: dict[str, Any] = current_app.extensions["dpx.exchange"].estimate(caller, query)
        return result


@blp.route("")
class Queries(MethodView):
    @allowed("partner")
    @blp.doc(
        security=BEARER,
        parameters=[
            parameter(
                "an opaque key, one per logical request: a retry with the same key "
                "and body returns the first response and is never charged again"
            )
        ],
    )
    @blp.arguments(QuerySchema, examples=QUERY_EXAMPLES)
    @blp.response(201, ReleaseSchema, description="a new release, charged", example=RELEASE_EXAMPLE)
    @blp.alt_response(
        200,
        schema=ReleaseSchema,
        description="the stored release of an identical query, free",
        example=dict(RELEASE_EXAMPLE, cached=True),
    )
    @problem_responses(blp, 400, 401, 403, 404, 409, 413, 429, 503)
    def post(self, query: dict[str, Any]) -> Any:
        """Run a query. Repeats return the stored release (`cached: true`) and cost nothing.

        With an `Idempotency-Key` header, a retried request returns the first response and
        is never charged twice.
        """
        caller = require("partner")
        key = idempotency_key()
        try:
            answer = current_app.extensions["dpx.exchange"].run(caller, query, idempotency_key=key)
        except Exception as refusal:
            count_refusal(refusal)
            raise
        count_answer(answer.document["dataset"], cached=answer.cached)
        document = dict(answer.document, cached=answer.cached)
        return document, (200 if answer.cached else 201)
