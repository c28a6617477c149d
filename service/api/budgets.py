"""Budgets: granted, spent and remaining, per grant and per dataset."""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.auth import allowed, require
from service.api.docs import BEARER, problem_responses
from service.api.schemas import BudgetListSchema

blp = Blueprint("budgets", __name__, url_prefix="/v1/budgets", description="Privacy budgets")


@blp.route("")
class Budgets(MethodView):
    @allowed("partner", "dpo")
    @blp.doc(security=BEARER)
    @blp.response(
        200,
        BudgetListSchema,
        example={
            "budgets": [
                {
                    "partner": "no-police",
                    "dataset": "uk-helpline-2024",
                    "unit": "epsilon",
                    "granted": 2.0,
                    "spent": 0.2,
                    "remaining": 1.8,
                    "expires": "2027-06-30",
                    "dataset_global": 8.0,
                    "dataset_spent": 0.7,
                    "dataset_remaining": 7.3,
                }
            ]
        },
    )
    @problem_responses(blp, 401, 403)
    def get(self) -> dict[str, Any]:
        """A partner's own budgets, or every partner's for a DPO."""
        caller = require("partner", "dpo")
        return {"budgets": current_app.extensions["dpx.exchange"].budgets(caller)}
