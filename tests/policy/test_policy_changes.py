"""What a DPO sees before deploying a policy change: changed grants and budgets, over-spending."""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from service.policy import load_policies
from service.policy.changes import PolicyChange, policy_changes, review
from service.policy.model import PolicySet
from tests.dataset_policies import DEMO_POLICIES

UK, NL = "uk-helpline-2024", "nl-helpline-2024"
NO_POLICE = "partners/no-police.yaml"
NL_GRANT = """\
  - dataset: nl-helpline-2024
    budget: {rho: 0.5}
    max_per_query: {rho: 0.1}
    statistics: [count]
    dimensions: [month, country, referral_source]
"""
BE_GRANT = """\
  - dataset: be-helpline-2024
    budget: {epsilon: 0.5}
    statistics: [count]
    dimensions: [month]
"""


@pytest.fixture
def deployed() -> PolicySet:
    return load_policies(DEMO_POLICIES)


def _proposed(tmp_path: Path, file: str, old: str, new: str) -> PolicySet:
    """The demo set with the first ``old`` in ``file`` replaced by ``new``."""
    target = tmp_path / "proposed"
    shutil.copytree(DEMO_POLICIES, target)
    text = (target / file).read_text()
    assert old in text
    (target / file).write_text(text.replace(old, new, 1))
    return load_policies(target)


def test_the_same_set_changes_nothing(deployed: PolicySet) -> None:
    result = review(deployed, load_policies(DEMO_POLICIES), {(UK, "no-police"): Fraction(1)})
    assert result.changes == ()
    assert result.over_spent == ()


@pytest.mark.parametrize(
    ("old", "new", "field", "before", "after"),
    [
        ("budget: {epsilon: 2.0}", "budget: {epsilon: 3.0}", "budget", "epsilon 2", "epsilon 3"),
        (
            "max_per_query: {epsilon: 0.5}",
            "max_per_query: {epsilon: 0.25}",
            "max_per_query",
            "epsilon 0.5",
            "epsilon 0.25",
        ),
        ("statistics: [count]", "statistics: [count, sum]", "statistics", "count", "count, sum"),
        (
            "dimensions: [month, channel, referral_source]",
            "dimensions: [month, channel]",
            "dimensions",
            "channel, month, referral_source",
            "channel, month",
        ),
        ("expires: 2027-06-30", "expires: 2026-12-31", "expires", "2027-06-30", "2026-12-31"),
    ],
)
def test_each_changed_grant_field_is_named_with_old_and_new_values(
    deployed: PolicySet, tmp_path: Path, old: str, new: str, field: str, before: str, after: str
) -> None:
    changes = policy_changes(deployed, _proposed(tmp_path, NO_POLICE, old, new))
    assert changes == [
        PolicyChange(
            "changed",
            UK,
            "no-police",
            field,
            before,
            after,
            "epsilon 0" if field == "budget" else None,
        )
    ]


def test_a_budget_change_shows_what_the_ledger_has_spent(
    deployed: PolicySet, tmp_path: Path
) -> None:
    proposed = _proposed(tmp_path, NO_POLICE, "budget: {epsilon: 2.0}", "budget: {epsilon: 3.0}")
    (change,) = review(deployed, proposed, {(UK, "no-police"): Fraction(3, 4)}).changes
    assert str(change) == (
        "~ grant no-police -> uk-helpline-2024: budget epsilon 2 -> epsilon 3 (spent epsilon 0.75)"
    )


def test_a_grant_lowered_below_its_spend_is_over_spent(deployed: PolicySet, tmp_path: Path) -> None:
    proposed = _proposed(tmp_path, NO_POLICE, "budget: {epsilon: 2.0}", "budget: {epsilon: 1.0}")
    result = review(
        deployed, proposed, {(UK, "no-police"): Fraction(3, 2), (UK, "*"): Fraction(3, 2)}
    )
    (over,) = result.over_spent
    assert (over.dataset, over.partner, over.budget, over.spent) == (
        UK,
        "no-police",
        Fraction(1),
        Fraction(3, 2),
    )
    assert str(over) == (
        "grant no-police -> uk-helpline-2024: epsilon 1 is less than the 1.5 already spent"
    )


def test_a_global_budget_lowered_below_the_datasets_spend_is_over_spent(
    deployed: PolicySet, tmp_path: Path
) -> None:
    proposed = _proposed(
        tmp_path,
        f"datasets/{UK}.yaml",
        "global_budget: {epsilon: 8.0}",
        "global_budget: {epsilon: 2.0}",
    )
    result = review(deployed, proposed, {(UK, "*"): Fraction(5, 2)})
    assert [(c.field, c.old, c.new, c.spent) for c in result.changes] == [
        ("global_budget", "epsilon 8", "epsilon 2", "epsilon 2.5")
    ]
    (over,) = result.over_spent
    assert over.partner is None and str(over).startswith(f"dataset {UK} global budget")


def test_an_over_spent_budget_is_reported_even_when_unchanged(deployed: PolicySet) -> None:
    result = review(deployed, deployed, {(NL, "no-police"): Fraction(6, 10)})
    assert result.changes == ()
    assert [(o.dataset, o.partner, o.unit) for o in result.over_spent] == [(NL, "no-police", "rho")]


def test_removed_and_added_grants_and_partners(deployed: PolicySet, tmp_path: Path) -> None:
    proposed = _proposed(tmp_path, NO_POLICE, NL_GRANT, BE_GRANT)
    changes = review(deployed, proposed, {(NL, "no-police"): Fraction(1, 10)}).changes
    assert [str(c) for c in changes] == [
        "+ grant no-police -> be-helpline-2024: added (budget epsilon 0.5)",
        "- grant no-police -> nl-helpline-2024: removed (budget rho 0.5) (spent rho 0.1)",
    ]
    (tmp_path / "proposed" / NO_POLICE).unlink()
    without = load_policies(tmp_path / "proposed")
    assert {(c.kind, c.partner) for c in policy_changes(deployed, without)} == {
        ("removed", "no-police")
    }
    assert {(c.kind, c.partner) for c in policy_changes(without, deployed)} == {
        ("added", "no-police")
    }


def test_dataset_bounds_and_domains_are_changes_too(deployed: PolicySet, tmp_path: Path) -> None:
    target = tmp_path / "proposed"
    shutil.copytree(DEMO_POLICIES, target)
    path = target / "datasets" / f"{UK}.yaml"
    path.write_text(
        path.read_text()
        .replace("max_contacts_per_person: 10", "max_contacts_per_person: 5")
        .replace(
            "channel: {values: [phone, chat, email, web]}",
            "channel: {values: [phone, chat, email, web, sms]}",
        )
    )
    changes = policy_changes(deployed, load_policies(target))
    assert [(c.dataset, c.field, c.old, c.new) for c in changes] == [
        (UK, "max_contacts_per_person", "10", "5"),
        (UK, "dimensions.channel", "phone, chat, email, web", "phone, chat, email, web, sms"),
    ]
