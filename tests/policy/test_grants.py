"""check_grant: what a partner's grant allows, rule by rule, on the demo policies."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest

from service.policy import PolicySet, PolicyViolation, check_grant, load_policies
from tests.dataset_policies import DEMO_POLICIES

TODAY = date(2026, 3, 1)


@pytest.fixture(scope="module")
def policies() -> PolicySet:
    return load_policies(DEMO_POLICIES)


def check(
    policies: PolicySet,
    partner: str,
    dataset: str,
    *,
    statistic: str = "count",
    dimensions: frozenset[str] = frozenset({"month"}),
    cost: Fraction = Fraction(1, 10),
    today: date = TODAY,
) -> object:
    return check_grant(
        policies.partners[partner],
        policies.datasets[dataset],
        statistic=statistic,
        dimensions=set(dimensions),
        cost=cost,
        today=today,
    )


def test_allowed_query_returns_the_grant(policies: PolicySet) -> None:
    grant = check(
        policies,
        "no-police",
        "uk-helpline-2024",
        dimensions=frozenset({"month", "channel", "referral_source"}),
        cost=Fraction(1, 2),
    )

    assert grant == policies.partners["no-police"].grant_for("uk-helpline-2024")


@pytest.mark.parametrize(
    ("partner", "dataset", "query", "rule", "message"),
    [
        pytest.param(
            "no-police", "be-helpline-2024", {},
            "no_grant", "partner no-police has no grant for be-helpline-2024",
            id="no-grant",
        ),
        pytest.param(
            "research-uni", "uk-helpline-2024", {},
            "expired", "grant for uk-helpline-2024 expired on 2025-01-31",
            id="expired",
        ),
        pytest.param(
            "no-police", "uk-helpline-2024", {"statistic": "sum"},
            "statistic", "grant for uk-helpline-2024 allows statistics count; 'sum' is not allowed",
            id="statistic",
        ),
        pytest.param(
            "research-uni", "nl-helpline-2024", {"statistic": "median"},
            "statistic",
            "grant for nl-helpline-2024 allows statistics count, sum, mean; 'median' is not "
            "allowed",
            id="statistic-listed-in-canonical-order",
        ),
        pytest.param(
            "no-police", "uk-helpline-2024", {"dimensions": frozenset({"month", "country"})},
            "dimension",
            "grant for uk-helpline-2024 allows dimensions month, channel, referral_source; "
            "'country' is not allowed",
            id="dimension",
        ),
        pytest.param(
            "no-police", "uk-helpline-2024",
            {"dimensions": frozenset({"caller_type", "country", "weekday"})},
            "dimension",
            "grant for uk-helpline-2024 allows dimensions month, channel, referral_source; "
            "'country', 'caller_type', 'weekday' are not allowed",
            id="several-dimensions",
        ),
        pytest.param(
            "no-police", "uk-helpline-2024", {"cost": Fraction(6, 10)},
            "max_per_query",
            "grant for uk-helpline-2024 allows at most epsilon 0.5 per query; "
            "this query costs epsilon 0.6",
            id="max-per-query-epsilon",
        ),
        pytest.param(
            "no-police", "nl-helpline-2024", {"cost": Fraction(1, 5)},
            "max_per_query",
            "grant for nl-helpline-2024 allows at most rho 0.1 per query; this query costs rho 0.2",
            id="max-per-query-rho",
        ),
    ],
)  # fmt: skip
def test_query_outside_the_grant_is_refused(
    policies: PolicySet,
    partner: str,
    dataset: str,
    query: dict[str, object],
    rule: str,
    message: str,
) -> None:
    with pytest.raises(PolicyViolation) as caught:
        check(policies, partner, dataset, **query)

    assert (caught.value.rule, caught.value.message, str(caught.value)) == (rule, message, message)


def test_grant_is_valid_through_its_expiry_day(policies: PolicySet) -> None:
    check(policies, "research-uni", "uk-helpline-2024", today=date(2025, 1, 31))

    with pytest.raises(PolicyViolation, match="^grant for uk-helpline-2024 expired on 2025-01-31$"):
        check(policies, "research-uni", "uk-helpline-2024", today=date(2025, 2, 1))


def test_cost_equal_to_max_per_query_is_allowed(policies: PolicySet) -> None:
    check(policies, "no-police", "uk-helpline-2024", cost=Fraction(1, 2))


def test_grant_without_max_per_query_allows_any_single_cost(policies: PolicySet) -> None:
    grant = check(policies, "interpol-sg", "nl-helpline-2024", cost=Fraction(3, 10))

    assert grant == policies.partners["interpol-sg"].grant_for("nl-helpline-2024")


def test_filter_only_dimension_counts_as_used(policies: PolicySet) -> None:
    # The caller passes filter dimensions too: filtering on country reveals country.
    with pytest.raises(PolicyViolation, match="'country' is not allowed"):
        check(policies, "no-police", "uk-helpline-2024", dimensions=frozenset({"country"}))


def test_query_without_dimensions_needs_only_the_statistic(policies: PolicySet) -> None:
    check(policies, "interpol-sg", "uk-helpline-2024", dimensions=frozenset())


def test_expiry_is_checked_before_the_question(policies: PolicySet) -> None:
    with pytest.raises(PolicyViolation) as caught:
        check(
            policies,
            "interpol-sg",
            "be-helpline-2024",
            statistic="mean",
            dimensions=frozenset({"region"}),
            cost=Fraction(5),
        )

    assert caught.value.rule == "expired"
