"""Stored releases: a partner reads its own, a DPO reads all; one release also as CSV."""

from __future__ import annotations

from typing import Any

from dpx_client.table import CSV_MEDIA_TYPE, release_csv
from flask import Response, current_app, request
from flask.views import MethodView

from service.api.auth import allowed, require
from service.api.bodies import Blueprint
from service.api.cursors import next_link, release_cursor
from service.api.docs import BEARER, problem_responses
from service.api.schemas import (
    RELEASE_EXAMPLE,
    ReleaseListArgsSchema,
    ReleaseListSchema,
    ReleaseSchema,
)

blp = Blueprint("releases", __name__, url_prefix="/v1/releases", description="Releases")

# The CSV download is rendered by the partner client's own table code, so a release's CSV
# is the same whether the service or the client writes it.
CSV_RESPONSE = {
    200: {
        "content": {
            CSV_MEDIA_TYPE: {
                "schema": {"type": "string"},
                "example": release_csv(RELEASE_EXAMPLE),
            }
        }
    }
}


@blp.route("")
class Releases(MethodView):
    @allowed("partner", "dpo")
    @blp.doc(security=BEARER)
    @blp.arguments(ReleaseListArgsSchema, location="query")
    @blp.response(200, ReleaseListSchema)
    @problem_responses(blp, 401, 403)
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's releases (all partners' for a DPO), newest first, a page at a time."""
        caller = require("partner", "dpo")
        exchange = current_app.extensions["dpx.exchange"]
        documents, position = exchange.page_releases(
            caller, limit=args["limit"], after=args.get("cursor")
        )
        cursor = release_cursor(position)
        return {"releases": documents, "next": cursor}, next_link(cursor)


@blp.route("/<string:release_id>")
class Release(MethodView):
    @allowed("partner", "dpo")
    @blp.doc(security=BEARER, responses=CSV_RESPONSE)
    @blp.response(
        200,
        ReleaseSchema,
        example={k: v for k, v in RELEASE_EXAMPLE.items() if k not in ("cached", "budget")},
    )
    @problem_responses(blp, 401, 403, 404)
    def get(self, release_id: str) -> Any:
        """One release; another partner's release is 404.

        With `Accept: text/csv`, the release's rows as CSV instead: one column per
        group-by dimension, then `value`, `ci_low`, `ci_high` and `release_id`.
        """
        caller = require("partner", "dpo")
        document: dict[str, Any] = current_app.extensions["dpx.exchange"].get_release(
            caller, release_id
        )
        if _wants_csv():
            return _csv_download(document)
        return document, {"Vary": "Accept"}


def _wants_csv() -> bool:
    """True when the caller prefers CSV to JSON; JSON wins ties, ``*/*`` and no Accept."""
    preferred = request.accept_mimetypes.best_match(["application/json", CSV_MEDIA_TYPE])
    return preferred == CSV_MEDIA_TYPE


def _csv_download(document: dict[str, Any]) -> Response:
    """The release's rows as a CSV attachment named after the release."""
    return Response(
        release_csv(document),
        mimetype=CSV_MEDIA_TYPE,
        headers={
            "Content-Disposition": f'attachment; filename="{document["release_id"]}.csv"',
            "Vary": "Accept",
        },
    )
