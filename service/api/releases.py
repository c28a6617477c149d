"""Stored releases: a partner reads its own, a DPO reads all."""

from __future__ import annotations

from typing import Any

from flask import current_app
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
    @blp.doc(security=BEARER)
    @blp.response(
        200,
        ReleaseSchema,
        example={k: v for k, v in RELEASE_EXAMPLE.items() if k not in ("cached", "budget")},
    )
    @problem_responses(blp, 401, 403, 404)
    def get(self, release_id: str) -> dict[str, Any]:
        """One release; another partner's release is 404."""
        caller = require("partner", "dpo")
        document: dict[str, Any] = current_app.extensions["dpx.exchange"].get_release(
            caller, release_id
        )
        return document
