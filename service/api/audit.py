"""The audit log, paged, for DPOs."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView

from service.api.auth import allowed, require
from service.api.bodies import Blueprint
from service.api.cursors import audit_cursor, next_link
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
    def get(self, args: dict[str, Any]) -> Any:
        """Entries after sequence number `after` (or from `cursor`), oldest first."""
        require("dpo")
        audit = current_app.extensions["dpx.audit"]
        after = args.get("cursor", args["after"])
        listed = list(audit.entries(after=after, limit=args["limit"] + 1))
        entries = [dict(e.body(), mac=e.mac) for e in listed[: args["limit"]]]
        next_after = entries[-1]["seq"] if len(listed) > args["limit"] else None
        cursor = audit_cursor(next_after)
        page = {"entries": entries, "next_after": next_after, "next": cursor}
        return page, next_link(cursor)
