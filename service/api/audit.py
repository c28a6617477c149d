"""The audit log, paged, for DPOs."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from service.api.auth import allowed, require
from service.api.bodies import Blueprint
from service.api.docs import BEARER, problem_responses
from service.api.schemas import AuditArgsSchema, AuditPageSchema

blp = Blueprint("audit", __name__, url_prefix="/v1/audit", description="Audit log")


@blp.route("")
class Audit(MethodView):
    @allowed("dpo")
    @blp.doc(security=BEARER)
    @blp.arguments(AuditArgsSchema, location="query")
    @blp.response(200, AuditPageSchema)
    @problem_responses(blp, 401, 403)
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """Entries after sequence number `after`, oldest first."""
        require("dpo")
        audit = current_app.extensions["dpx.audit"]
        entries = [
            dict(e.body(), mac=e.mac)
            for e in audit.entries(after=args["after"], limit=args["limit"])
        ]
        next_after = entries[-1]["seq"] if len(entries) == args["limit"] else None
        return {"entries": entries, "next_after": next_after}
