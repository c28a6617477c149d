"""Budget reports: what callers are shown of granted, spent and remaining privacy budget.

Reports read the ledger and never write it; charging is the exchange's alone. Which
partners' grants and charges a caller may see is ``service.access``'s to decide; the rows
here are the numbers of ``GET /v1/budgets``, ``dpx budget-report`` and the dashboard, and the
``budget`` field that accompanies every answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from service.dp.accounting import remaining_budget
from service.ledger.budgets import GLOBAL, ChargeLine, Ledger, Remaining
from service.policy.model import DatasetPolicy, Grant, PartnerPolicy, PolicySet


@dataclass(frozen=True)
class Spend:
    """What one account has spent and what is left of its budget, exactly."""

    spent: Fraction
    remaining: Fraction


def budget_view(dataset: DatasetPolicy, remaining: Remaining) -> dict[str, Any]:
    """The ``budget`` of an answer: what the caller's grant and the dataset have left."""
    unit = dataset.budget_unit
    return {
        "partner_remaining": {unit: float(remaining.partner)},
        "dataset_remaining": {unit: float(remaining.dataset)},
    }


class BudgetReports:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def remaining(self, dataset: DatasetPolicy, grant: Grant, partner: str) -> Remaining:
        """What is left of a partner's grant and of the dataset's global budget."""
        return self.ledger.remaining(
            dataset=dataset.id,
            partner=partner,
            partner_budget=grant.budget,
            global_budget=dataset.global_budget,
        )

    def answer_budget(self, dataset: DatasetPolicy, grant: Grant, partner: str) -> dict[str, Any]:
        """The ``budget`` of an answer that charges nothing, read now."""
        return budget_view(dataset, self.remaining(dataset, grant, partner))

    def dataset_spend(self, dataset: DatasetPolicy) -> Spend:
        """The dataset's global spend, over every partner and synopsis."""
        spent = self.ledger.spent(dataset.id, GLOBAL)
        return Spend(spent, remaining_budget(dataset.global_budget, spent))

    def grant_spend(self, dataset: DatasetPolicy, grant: Grant, partner: str) -> Spend:
        """One partner's spend of its grant on a dataset."""
        spent = self.ledger.spent(dataset.id, partner)
        return Spend(spent, remaining_budget(grant.budget, spent))

    def grants(
        self, policies: PolicySet, partners: Sequence[PartnerPolicy]
    ) -> list[dict[str, Any]]:
        """Granted, spent and remaining per grant of these partners, with each dataset's
        global budget; grants on datasets the policies no longer hold are left out."""
        spent = self.ledger.all_spent()
        rows = []
        for partner in partners:
            for grant in partner.grants:
                dataset = policies.datasets.get(grant.dataset)
                if dataset is None:
                    continue
                own = spent.get((dataset.id, partner.id), Fraction(0))
                total = spent.get((dataset.id, GLOBAL), Fraction(0))
                rows.append(
                    {
                        "partner": partner.id,
                        "dataset": dataset.id,
                        "unit": dataset.budget_unit,
                        "granted": float(grant.budget),
                        "spent": float(own),
                        "remaining": float(remaining_budget(grant.budget, own)),
                        "expires": grant.expires.isoformat() if grant.expires else None,
                        "dataset_global": float(dataset.global_budget),
                        "dataset_spent": float(total),
                        "dataset_remaining": float(remaining_budget(dataset.global_budget, total)),
                    }
                )
        return rows

    def all_spent(self) -> Mapping[tuple[str, str], Fraction]:
        """Spend of every account, keyed by (dataset, partner); partner ``GLOBAL`` is the
        dataset's global account."""
        return self.ledger.all_spent()

    def charges(self, partner: str | None) -> list[ChargeLine]:
        """Every charge of one partner (of all, for None), oldest first."""
        return self.ledger.history(partner=partner)
