"""What a proposed policy set changes compared with the deployed one, and what it over-spends.

A DPO reviews a policy change before it is deployed: which grants appear, disappear or
change (budget, per-query cap, statistics, dimensions, expiry), which datasets change their
privacy unit, bounds, domains or global budget, and which budgets the ledger has already
spent past. ``review`` is pure: two policy sets and the ledger's spend in, a review out.

Spend is keyed as ``Ledger.all_spent`` keys it: ``(dataset, partner)``, with partner
``"*"`` for the dataset's global account across all partners.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Literal

from service.policy.amounts import amount_text
from service.policy.model import DatasetPolicy, Grant, PolicySet

GLOBAL = "*"
Kind = Literal["added", "removed", "changed"]
_MARK = {"added": "+", "removed": "-", "changed": "~"}


@dataclass(frozen=True)
class PolicyChange:
    """One difference: a dataset or grant added or removed, or one field of it changed.

    ``partner`` is None for dataset-level changes. ``old`` and ``new`` are the field's value
    as a DPO would write it (None when added or removed). ``spent`` is the ledger's spend on
    the account a budget change concerns (None for other fields).
    """

    kind: Kind
    dataset: str
    partner: str | None
    field: str
    old: str | None
    new: str | None
    spent: str | None = None

    @property
    def subject(self) -> str:
        if self.partner is None:
            return f"dataset {self.dataset}"
        return f"grant {self.partner} -> {self.dataset}"

    def __str__(self) -> str:
        where = f"{_MARK[self.kind]} {self.subject}"
        if self.kind != "changed":
            text = f"{where}: {self.kind}" + (
                f" ({self.field} {self.new or self.old})" if self.field else ""
            )
        else:
            text = f"{where}: {self.field} {self.old} -> {self.new}"
        return text + (f" (spent {self.spent})" if self.spent is not None else "")


@dataclass(frozen=True)
class OverSpend:
    """A budget of the proposed set that the ledger has already spent past."""

    dataset: str
    partner: str | None
    unit: str
    budget: Fraction
    spent: Fraction

    def __str__(self) -> str:
        subject = (
            f"dataset {self.dataset} global budget"
            if self.partner is None
            else f"grant {self.partner} -> {self.dataset}"
        )
        return (
            f"{subject}: {self.unit} {amount_text(self.budget)} is less than the "
            f"{amount_text(self.spent)} already spent"
        )


@dataclass(frozen=True)
class PolicyReview:
    changes: tuple[PolicyChange, ...]
    over_spent: tuple[OverSpend, ...]


def review(
    deployed: PolicySet, proposed: PolicySet, spent: Mapping[tuple[str, str], Fraction]
) -> PolicyReview:
    """Every change from ``deployed`` to ``proposed``, and every over-spent proposed budget.

    Changes come in a stable order: datasets by id, then grants by partner and dataset.
    Over-spent budgets are listed whether or not they changed, since either way the
    partner (or every partner, for a global budget) could spend nothing more.
    """
    changes = list(_dataset_changes(deployed, proposed, spent))
    changes.extend(_grant_changes(deployed, proposed, spent))
    return PolicyReview(changes=tuple(changes), over_spent=tuple(over_spent(proposed, spent)))


def policy_changes(deployed: PolicySet, proposed: PolicySet) -> list[PolicyChange]:
    """The changes from ``deployed`` to ``proposed``, without the ledger's spend."""
    return list(review(deployed, proposed, {}).changes)


def budget_changes(deployed: PolicySet, proposed: PolicySet) -> list[dict[str, str | None]]:
    """Every budget that differs between the sets, as the audit log records it: ``dataset``,
    ``partner`` (``"*"`` for the global budget) and the exact ``from`` and ``to`` amounts
    (None where the dataset or grant is absent). With these, a chart draws each budget as it
    was at every moment, not as it is now."""
    found: list[dict[str, str | None]] = []

    def record(dataset: str, partner: str, old: Fraction | None, new: Fraction | None) -> None:
        if old != new:
            found.append(
                {
                    "dataset": dataset,
                    "partner": partner,
                    "from": None if old is None else amount_text(old),
                    "to": None if new is None else amount_text(new),
                }
            )

    for dataset in sorted(set(deployed.datasets) | set(proposed.datasets)):
        old_dataset, new_dataset = deployed.datasets.get(dataset), proposed.datasets.get(dataset)
        record(
            dataset,
            GLOBAL,
            None if old_dataset is None else old_dataset.global_budget,
            None if new_dataset is None else new_dataset.global_budget,
        )
    before = {(d, p): g.budget for p, d, g in _grants(deployed)}
    after = {(d, p): g.budget for p, d, g in _grants(proposed)}
    for dataset, partner in sorted(set(before) | set(after)):
        record(dataset, partner, before.get((dataset, partner)), after.get((dataset, partner)))
    return found


def over_spent(policies: PolicySet, spent: Mapping[tuple[str, str], Fraction]) -> list[OverSpend]:
    """Each global budget and grant of ``policies`` that is smaller than its recorded spend."""
    found = []
    for dataset in sorted(policies.datasets.values(), key=lambda d: d.id):
        total = spent.get((dataset.id, GLOBAL), Fraction(0))
        if total > dataset.global_budget:
            found.append(
                OverSpend(dataset.id, None, dataset.budget_unit, dataset.global_budget, total)
            )
    for partner_id, dataset_id, grant in _grants(policies):
        granted_on = policies.datasets.get(dataset_id)
        own = spent.get((dataset_id, partner_id), Fraction(0))
        if granted_on is not None and own > grant.budget:
            found.append(
                OverSpend(dataset_id, partner_id, granted_on.budget_unit, grant.budget, own)
            )
    return found


def _amount(dataset: DatasetPolicy, amount: Fraction | None) -> str:
    return "none" if amount is None else f"{dataset.budget_unit} {amount_text(amount)}"


def _dataset_fields(dataset: DatasetPolicy) -> dict[str, str]:
    fields = {
        "definition": dataset.definition,
        "unit": dataset.unit,
        "max_contacts_per_person": str(dataset.max_contacts_per_person),
        "max_contacts_per_cell": str(dataset.max_contacts_per_cell or "none"),
        "delta": "none" if dataset.delta is None else amount_text(dataset.delta),
        "global_budget": _amount(dataset, dataset.global_budget),
        "share_releases": str(dataset.share_releases).lower(),
    }
    for dimension in dataset.dimensions:
        fields[f"dimensions.{dimension.name}"] = ", ".join(dimension.values)
    for measure in dataset.measures:
        fields[f"measures.{measure.name}"] = f"{measure.lower}..{measure.upper}"
    if dataset.synopsis is not None:
        fields["synopsis.marginals"] = "; ".join(
            "[" + ", ".join(marginal) + "]" for marginal in dataset.synopsis.marginals
        )
        fields["synopsis.budget"] = _amount(dataset, dataset.synopsis.budget)
    return fields


def _dataset_changes(
    deployed: PolicySet, proposed: PolicySet, spent: Mapping[tuple[str, str], Fraction]
) -> Iterable[PolicyChange]:
    for dataset_id in sorted(set(deployed.datasets) | set(proposed.datasets)):
        old = deployed.datasets.get(dataset_id)
        new = proposed.datasets.get(dataset_id)
        total = spent.get((dataset_id, GLOBAL))
        if old is None and new is not None:
            yield PolicyChange(
                "added", dataset_id, None, "global_budget", None, _amount(new, new.global_budget)
            )
        elif new is None and old is not None:
            yield PolicyChange(
                "removed",
                dataset_id,
                None,
                "global_budget",
                _amount(old, old.global_budget),
                None,
                _amount(old, total) if total is not None else None,
            )
        elif old is not None and new is not None:
            before, after = _dataset_fields(old), _dataset_fields(new)
            for field in [*before, *(f for f in after if f not in before)]:
                if before.get(field) != after.get(field):
                    shown = _amount(new, total or Fraction(0)) if field == "global_budget" else None
                    yield PolicyChange(
                        "changed",
                        dataset_id,
                        None,
                        field,
                        before.get(field, "absent"),
                        after.get(field, "absent"),
                        shown,
                    )


def _grants(policies: PolicySet) -> Iterable[tuple[str, str, Grant]]:
    for partner in sorted(policies.partners.values(), key=lambda p: p.id):
        for grant in sorted(partner.grants, key=lambda g: g.dataset):
            yield partner.id, grant.dataset, grant


def _grant_fields(dataset: DatasetPolicy | None, grant: Grant) -> dict[str, str]:
    def amount(value: Fraction | None) -> str:
        if dataset is None:
            return "none" if value is None else amount_text(value)
        return _amount(dataset, value)

    def day(value: date | None) -> str:
        return "never" if value is None else value.isoformat()

    return {
        "budget": amount(grant.budget),
        "max_per_query": amount(grant.max_per_query),
        "statistics": ", ".join(sorted(grant.statistics)),
        "dimensions": ", ".join(sorted(grant.dimensions)),
        "expires": day(grant.expires),
    }


def _grant_changes(
    deployed: PolicySet, proposed: PolicySet, spent: Mapping[tuple[str, str], Fraction]
) -> Iterable[PolicyChange]:
    before = {(p, d): g for p, d, g in _grants(deployed)}
    after = {(p, d): g for p, d, g in _grants(proposed)}
    for partner_id, dataset_id in sorted(set(before) | set(after)):
        old, new = before.get((partner_id, dataset_id)), after.get((partner_id, dataset_id))
        old_fields = _grant_fields(deployed.datasets.get(dataset_id), old) if old else {}
        new_dataset = proposed.datasets.get(dataset_id)
        new_fields = _grant_fields(new_dataset, new) if new else {}
        own = spent.get((dataset_id, partner_id), Fraction(0))
        shown_in = new_dataset or deployed.datasets.get(dataset_id)
        own_text = _amount(shown_in, own) if shown_in else amount_text(own)
        if old is None:
            yield PolicyChange(
                "added",
                dataset_id,
                partner_id,
                "budget",
                None,
                new_fields["budget"],
                own_text if own else None,
            )
        elif new is None:
            yield PolicyChange(
                "removed", dataset_id, partner_id, "budget", old_fields["budget"], None, own_text
            )
        else:
            for field, value in new_fields.items():
                if old_fields[field] != value:
                    yield PolicyChange(
                        "changed",
                        dataset_id,
                        partner_id,
                        field,
                        old_fields[field],
                        value,
                        own_text if field == "budget" else None,
                    )
