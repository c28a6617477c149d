"""Exact cost arithmetic: parsing, nano-units, conservative rounding, zCDP to (epsilon, delta)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.dp.accounting import (
    NANO,
    ceil_nano,
    epsilon_at_delta,
    float_at_most,
    from_nano,
    parse_cost,
    remaining_budget,
    to_nano,
)
from service.dp.errors import InvalidQuery
from service.policy.amounts import amount_text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, Fraction(1, 10)),
        ("0.1", Fraction(1, 10)),
        (Decimal("0.25"), Fraction(1, 4)),
        (2, Fraction(2)),
        ("1e-6", Fraction(1, 10**6)),
        (0.000001, Fraction(1, 10**6)),
        ("0.123456789", Fraction(123456789, NANO)),
        (1.5e3, Fraction(1500)),
    ],
)
def test_parse_cost_is_the_exact_decimal(value: object, expected: Fraction) -> None:
    assert parse_cost(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "epsilon: 0 must be greater than 0"),
        (-0.5, "epsilon: -0.5 must be greater than 0"),
        ("1e-7", "epsilon: 1e-7 is below the minimum cost 0.000001"),
        ("0.1234567891", "epsilon: 0.1234567891 has more than 9 decimal places"),
        (float("inf"), "epsilon: inf is not a finite number"),
        (float("nan"), "epsilon: nan is not a finite number"),
        ("abc", "epsilon: 'abc' is not a number"),
        (True, "epsilon: must be a number, got bool"),
        (None, "epsilon: must be a number, got NoneType"),
    ],
)
def test_parse_cost_rejects_with_exact_message(value: object, message: str) -> None:
    with pytest.raises(InvalidQuery) as caught:
        parse_cost(value, field="epsilon")
    assert str(caught.value) == message
    assert caught.value.field == "epsilon"


def test_ten_tenths_make_exactly_one() -> None:
    tenth = parse_cost(0.1)
    assert sum([tenth] * 10, Fraction(0)) == 1
    assert sum(to_nano(tenth) for _ in range(10)) == NANO


@given(st.lists(st.integers(min_value=1000, max_value=10**12), min_size=1, max_size=50))
def test_nano_sums_equal_fraction_sums(nanos: list[int]) -> None:
    costs = [parse_cost(amount_text(from_nano(n))) for n in nanos]
    assert sum(to_nano(cost) for cost in costs) == to_nano(sum(costs, Fraction(0)))
    assert from_nano(sum(nanos)) == sum(costs, Fraction(0))


def test_to_nano_refuses_sub_nano_amounts() -> None:
    with pytest.raises(ValueError, match="not a whole number of nano-units"):
        to_nano(Fraction(1, 3 * NANO))


@given(st.floats(min_value=1e-9, max_value=1e3, allow_nan=False))
def test_ceil_nano_never_rounds_down(value: float) -> None:
    rounded = ceil_nano(value)
    assert rounded >= Fraction(value)
    assert rounded - Fraction(value) < Fraction(1, NANO)
    assert to_nano(rounded) >= 1


def test_ceil_nano_keeps_exact_nano_amounts() -> None:
    assert ceil_nano(Fraction(3, 10)) == Fraction(3, 10)
    assert ceil_nano(0.30000000000000004) == Fraction(300000001, NANO)


@given(st.fractions(min_value=Fraction(1, 10**6), max_value=100, max_denominator=10**9))
def test_float_at_most_is_never_above_the_exact_cost(cost: Fraction) -> None:
    assert Fraction(float_at_most(cost)) <= cost


def test_epsilon_at_delta_matches_opendp_gaussian_conversion() -> None:
    # A discrete Gaussian with sigma 10 at d_in 3 has rho = 9/200; OPENDP_NOTES measured
    # epsilon 1.5309 at delta 1e-7 for it.
    assert epsilon_at_delta(Fraction(9, 200), 1e-7) == pytest.approx(1.5309, abs=1e-4)


@given(st.fractions(min_value=Fraction(1, 10**4), max_value=10, max_denominator=10**9))
def test_epsilon_at_delta_grows_with_rho(rho: Fraction) -> None:
    assert epsilon_at_delta(rho, 1e-7) < epsilon_at_delta(rho * 2, 1e-7)


def test_remaining_budget_is_exact_and_never_below_zero() -> None:
    assert remaining_budget(Fraction(3, 10), Fraction(1, 10) + Fraction(2, 10)) == 0
    assert remaining_budget(Fraction(1), Fraction(3, 10)) == Fraction(7, 10)
    # A budget lowered below what was already spent leaves nothing, not a debt.
    assert remaining_budget(Fraction(1, 2), Fraction(3, 4)) == 0
