"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.docs import PUBLIC, problem_responses
from service.api.problems import problem
from service.api.schemas import HealthSchema
from service.database.migrate import is_current

blp = Blueprint("health", __name__, description="Liveness and readiness")


@blp.route("/healthz")
class Health(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(200, HealthSchema, example={"status": "ok", "checks": {}})
    def get(self) -> dict[str, Any]:
        """The process is up."""
        return {"status": "ok", "checks": {}}


@blp.route("/readyz")
class Ready(MethodView):
    @blp.doc(security=PUBLIC)
    @blp.response(
        200,
        HealthSchema,
        example={"status": "ok", "checks": {"database": "ok", "keyring": "ok", "policies": "ok"}},
    )
    @problem_responses(blp, 503)
    def get(self) -> Any:
        """Database reachable with the current schema, keyring and policies loaded."""
        checks = {"database": "ok", "keyring": "ok", "policies": "ok"}
        database = current_app.extensions["dpx.database"]
        try:
            if not database.is_up():
                checks["database"] = "unreachable"
            elif not is_current(database):
                checks["database"] = "schema is not current: run dpx init"
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            checks["database"] = "unreachable"
        if current_app.extensions.get("dpx.keyring") is None:
            checks["keyring"] = "not loaded"
        exchange = current_app.extensions["dpx.exchange"]
        if not exchange.policies.datasets:
            checks["policies"] = "no datasets"
        if all(value == "ok" for value in checks.values()):
            return {"status": "ok", "checks": checks}
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "ok")
        return problem(503, "unavailable", failing, checks=checks)
