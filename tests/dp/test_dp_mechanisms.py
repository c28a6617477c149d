"""Priced OpenDP measurements: exact charges, confirmed losses, accuracy targets met cheaply."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from fractions import Fraction

import opendp.prelude as dp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dp.accounting import NANO, float_at_most, to_nano
from service.dp.errors import InvalidQuery
from service.dp.mechanisms import (
    noisy,
    plan_for_accuracy,
    plan_for_cost,
    scale_to_accuracy,
    serialized,
)
from service.dp.sensitivity import float_sqrt_at_least
from service.policy.model import Definition

DEFINITIONS: list[Definition] = ["pure", "zcdp"]


@pytest.mark.parametrize("definition", DEFINITIONS)
@pytest.mark.parametrize("cost", [Fraction(1, 10), Fraction(3, 10), Fraction(1, 2), Fraction(2)])
@pytest.mark.parametrize("sensitivity", [1, 3, 10, 1200])
def test_plan_for_cost_charges_exactly_the_asked_amount(
    definition: Definition, cost: Fraction, sensitivity: int
) -> None:
    plan = plan_for_cost(definition, sensitivity, cost, 0.05)
    assert plan.cost == cost
    assert plan.measurement.check(sensitivity, float(cost))
    assert plan.measurement.check(sensitivity, float_at_most(cost))
    assert plan.mechanism == ("discrete_laplace" if definition == "pure" else "discrete_gaussian")
    # The least noise for the price: a visibly smaller scale would cost more.
    cheaper = plan_for_cost(definition, sensitivity, cost * Fraction(101, 100), 0.05)
    assert cheaper.scale < plan.scale


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(DEFINITIONS),
    st.integers(min_value=1, max_value=10**6).map(lambda n: Fraction(n, 10**6)),
    st.integers(min_value=1, max_value=500),
)
def test_any_asked_cost_is_confirmed_by_the_privacy_map(
    definition: Definition, cost: Fraction, sensitivity: int
) -> None:
    plan = plan_for_cost(definition, sensitivity, cost, 0.05)
    assert plan.cost == cost
    assert Fraction(plan.measurement.map(sensitivity)) <= cost


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=10**6).map(lambda n: Fraction(n, 10**6)),
    st.integers(min_value=1, max_value=10**5).map(float_sqrt_at_least),
)
def test_an_exact_l2_root_is_charged_exactly_and_confirmed(
    cost: Fraction, sensitivity: float
) -> None:
    plan = plan_for_cost("zcdp", sensitivity, cost, 0.05)
    assert plan.cost == cost and plan.sensitivity == sensitivity
    assert Fraction(plan.measurement.map(sensitivity)) <= cost
    # Calibrated to the root itself: the next integer would lose more than was charged.
    if sensitivity != math.ceil(sensitivity):
        assert Fraction(plan.measurement.map(float(math.ceil(sensitivity)))) > cost


def test_ten_charges_of_a_tenth_spend_exactly_one() -> None:
    plans = [plan_for_cost("pure", 3, Fraction(1, 10), 0.05) for _ in range(10)]
    assert sum(to_nano(plan.cost) for plan in plans) == NANO


@pytest.mark.parametrize("definition", DEFINITIONS)
@pytest.mark.parametrize("max_error", [5.0, 50.0, 333.3])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.25])
def test_plan_for_accuracy_meets_the_target_at_the_smallest_cost(
    definition: Definition, max_error: float, alpha: float
) -> None:
    sensitivity = 10
    plan = plan_for_accuracy(definition, sensitivity, max_error, alpha)
    assert plan.accuracy <= max_error
    assert plan.measurement.check(sensitivity, float(plan.cost))
    assert plan.cost * NANO == math.ceil(plan.cost * NANO)
    # One percent cheaper no longer meets the target.
    cheaper = plan_for_cost(definition, sensitivity, plan.cost * Fraction(99, 100), alpha)
    assert cheaper.accuracy > max_error


@pytest.mark.parametrize("definition", DEFINITIONS)
@pytest.mark.parametrize("scale", [1.5, 5.0, 20.0])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_accuracy_bounds_the_exact_tail_probability(
    definition: Definition, scale: float, alpha: float
) -> None:
    # Sum the exact pmf of the integer noise: P(|noise| > accuracy) must not exceed alpha.
    support = range(-int(80 * scale), int(80 * scale) + 1)
    if definition == "pure":
        weights = [math.exp(-abs(k) / scale) for k in support]
    else:
        weights = [math.exp(-(k * k) / (2 * scale * scale)) for k in support]
    total = math.fsum(weights)
    plan_accuracy = scale_to_accuracy(definition, scale, alpha)
    tail = math.fsum(w for k, w in zip(support, weights, strict=True) if abs(k) > plan_accuracy)
    assert tail / total <= alpha


def test_accuracy_matches_opendp_accuracy_functions() -> None:
    plan = plan_for_cost("pure", 1, Fraction(1, 10), 0.05)
    assert plan.accuracy == dp.discrete_laplacian_scale_to_accuracy(plan.scale, 0.05)
    gaussian = plan_for_cost("zcdp", 1, Fraction(1, 10), 0.05)
    assert gaussian.accuracy == dp.discrete_gaussian_scale_to_accuracy(gaussian.scale, 0.05)


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_serialized_measurement_rebuilds_a_working_measurement(definition: Definition) -> None:
    plan = plan_for_cost(definition, 10, Fraction(1, 2), 0.05)
    rebuilt = dp.deserialize(serialized(plan))
    assert rebuilt.map(10) == plan.measurement.map(10)
    assert len(rebuilt([1, 2, 3])) == 3


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_noisy_releases_integers_near_the_truth(definition: Definition) -> None:
    plan = plan_for_cost(definition, 1, Fraction(5), 0.05)
    released = noisy(plan, [100, 0, 7])
    assert len(released) == 3
    assert all(isinstance(value, int) for value in released)
    # At epsilon (rho) 5 the noise is tiny; far beyond a hundred half-widths is impossible.
    assert all(
        abs(a - b) < 100 * plan.accuracy + 10 for a, b in zip(released, [100, 0, 7], strict=True)
    )


def test_huge_costs_give_a_zero_width_interval_not_a_negative_one() -> None:
    plan = plan_for_cost("pure", 1, Fraction(10**6), 0.05)
    assert plan.accuracy == 0.0


@pytest.mark.parametrize("max_error", [2e4, 1e6])
def test_large_gaussian_targets_are_met_quickly(max_error: float) -> None:
    plan = plan_for_accuracy("zcdp", 10, max_error, 0.05)
    assert plan.accuracy <= max_error
    cheaper = plan_for_cost("zcdp", 10, plan.cost * Fraction(99, 100), 0.05)
    assert cheaper.accuracy > max_error or cheaper.cost < Fraction(1, 10**6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: plan_for_accuracy("zcdp", 10, 0.5, 0.05),
            "accuracy.max_error: 0.5 cannot be met at alpha 0.05; ask for a larger max_error",
        ),
        (
            lambda: plan_for_accuracy("zcdp", 10, 1e9, 0.05),
            "accuracy.max_error: 1000000000.0 is too large: the noise scale would exceed 1000000",
        ),
        (
            lambda: plan_for_cost("zcdp", 50_000, Fraction(1, 10**6), 0.05),
            "rho: 1/1000000 is too small for this query: the noise scale would exceed 1000000",
        ),
        (
            lambda: plan_for_cost("pure", 10**10, Fraction(1, 10**6), 0.05),
            "epsilon: 1/1000000 is too small for this query: "
            "the noise scale would exceed 1000000000000000",
        ),
        (
            lambda: plan_for_accuracy("pure", 10, 1e308, 0.05),
            "accuracy.max_error: 1e+308 is too large: "
            "the noise scale would exceed 1000000000000000",
        ),
    ],
)
def test_unworkable_plans_are_refused_clearly(call: Callable[[], object], message: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        call()
    assert str(caught.value) == message


def test_unreachable_accuracy_targets_are_refused_within_the_search_cap() -> None:
    """A free estimate cannot burn CPU: nine targets that no scale meets are refused in
    about 0.1 s together (without the cap they took 2.3 s); the bound leaves room for load."""
    started = time.perf_counter()
    for max_error in (1e-6, 0.5, 0.99):
        for sensitivity in (1, 10, 1000):
            with pytest.raises(InvalidQuery, match="cannot be met|takes too long"):
                plan_for_accuracy("zcdp", sensitivity, max_error, 0.05)
    assert time.perf_counter() - started < 1.0
