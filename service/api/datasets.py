"""Datasets: their public schema, privacy unit and the caller's grant; uploads of batches."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flask import current_app, request
from flask.views import MethodView

from service.api.auth import allowed, principal, require
from service.api.bodies import Blueprint, upload_body
from service.api.docs import BEARER, problem_responses
from service.api.idempotency import idempotency_key, parameter
from service.api.schemas import (
    CSV_UPLOAD_EXAMPLE,
    BatchSchema,
    DatasetListSchema,
    DatasetSchema,
    UploadArgsSchema,
)
from service.exchange import Exchange
from service.policy.model import DatasetPolicy, Grant

blp = Blueprint(
    "datasets",
    __name__,
    url_prefix="/v1/datasets",
    description="Datasets and uploads of contact batches",
)


def _exchange() -> Exchange:
    exchange: Exchange = current_app.extensions["dpx.exchange"]
    return exchange


def render_dataset(
    exchange: Exchange, dataset: DatasetPolicy, grant: Grant | None, partner: str | None
) -> dict[str, Any]:
    global_spend = exchange.dataset_spend(dataset)
    view: dict[str, Any] = {
        "id": dataset.id,
        "title": dataset.title,
        "owner": dataset.owner,
        "privacy": {
            "definition": dataset.definition,
            "unit": dataset.unit,
            "max_contacts_per_person": dataset.max_contacts_per_person,
            "max_contacts_per_cell": dataset.max_contacts_per_cell,
            "delta": float(dataset.delta) if dataset.delta is not None else None,
            "budget_unit": dataset.budget_unit,
            "global_budget": float(dataset.global_budget),
            "global_remaining": float(global_spend.remaining),
            "share_releases": dataset.share_releases,
        },
        "dimensions": [asdict(d) for d in dataset.dimensions],
        "measures": list(dataset.measures),
        "grant": None,
        "synopsis": exchange.synopses.describe(dataset) if exchange.synopses else None,
    }
    if grant is not None and partner is not None:
        spend = exchange.grant_spend(dataset, grant, partner)
        view["grant"] = {
            "budget": float(grant.budget),
            "max_per_query": float(grant.max_per_query) if grant.max_per_query else None,
            "statistics": sorted(grant.statistics),
            "dimensions": sorted(grant.dimensions),
            "expires": grant.expires,
            "spent": float(spend.spent),
            "remaining": float(spend.remaining),
        }
    return view


@blp.route("")
class Datasets(MethodView):
    @allowed("partner", "owner", "dpo")
    @blp.doc(security=BEARER)
    @blp.response(200, DatasetListSchema)
    @problem_responses(blp, 401, 403)
    def get(self) -> dict[str, Any]:
        """Datasets visible to the caller, with the caller's grant on each."""
        caller = principal()
        exchange = _exchange()
        return {
            "datasets": [
                render_dataset(exchange, d, g, caller.subject)
                for d, g in exchange.visible_datasets(caller)
            ]
        }


@blp.route("/<string:dataset_id>")
class Dataset(MethodView):
    @allowed("partner", "owner", "dpo")
    @blp.doc(security=BEARER)
    @blp.response(200, DatasetSchema)
    @problem_responses(blp, 401, 403, 404)
    def get(self, dataset_id: str) -> dict[str, Any]:
        """One dataset (404 when unknown or not visible to the caller)."""
        caller = principal()
        exchange = _exchange()
        dataset, grant = exchange.visible_dataset(caller, dataset_id)
        return render_dataset(exchange, dataset, grant, caller.subject)


@blp.route("/<string:dataset_id>/batches")
class Batches(MethodView):
    @allowed("owner")
    @upload_body
    @blp.doc(
        security=BEARER,
        parameters=[
            parameter(
                "an opaque key, one per upload: a retry with the same key and body returns "
                "the first batch and stores nothing more; the key with another body is 409"
            )
        ],
        requestBody={
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": CSV_UPLOAD_EXAMPLE},
                "application/json": {
                    "schema": {"type": "array", "items": {"type": "object"}},
                    "example": [
                        {
                            "month": "2024-01",
                            "country": "GB",
                            "channel": "chat",
                            "caller_type": "self_concerned",
                            "referral_source": "social_media_ad",
                            "minutes": 15,
                            "person": "synthetic-0000124",
                        }
                    ],
                },
            },
        },
    )
    @blp.arguments(UploadArgsSchema, location="query")
    @blp.response(201, BatchSchema)
    @problem_responses(blp, 401, 403, 404, 409, 413)
    def post(self, args: dict[str, Any], dataset_id: str) -> Any:
        """Upload a batch as CSV (text/csv) or a JSON array of records.

        Rows are validated against the dataset's public domains and bounds; a batch with any
        bad row is rejected whole (422, listing up to 100 rows) and nothing is stored.
        A byte-identical copy of a stored batch is refused (409 `duplicate_batch`, naming
        it) unless `allow_duplicate=true`; with an `Idempotency-Key`, a retry returns the
        first batch.
        """
        caller = require("owner")
        key = idempotency_key()
        body = request.get_data(cache=False)
        batch = _exchange().upload(
            caller,
            dataset_id,
            body,
            content_type=request.content_type or "",
            form=args["form"],
            idempotency_key=key,
            allow_duplicate=args["allow_duplicate"],
        )
        return asdict(batch)
