"""Amounts as text: one exact decimal form for budgets, costs, charges and deltas."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.policy.amounts import amount_text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Fraction(1, 2), "0.5"),
        (Fraction(2), "2"),
        (Fraction(100), "100"),
        (Fraction(0), "0"),
        (Fraction(-1, 10), "-0.1"),
        (Fraction(1, 10**9), "0.000000001"),
        (Fraction(1, 2 * 10**9), "0.0000000005"),
        # Finer than a nano-unit (a delta may be): still exact, never a float's "1e-12".
        (Fraction(1, 10**12), "0.000000000001"),
        (Fraction(1, 2**40), "0.0000000000009094947017729282379150390625"),
        (Fraction(123456789123, 10**9), "123.456789123"),
    ],
)
def test_an_amount_reads_as_its_exact_decimal(amount: Fraction, text: str) -> None:
    assert amount_text(amount) == text


def test_an_amount_with_no_finite_decimal_is_refused_not_rounded() -> None:
    with pytest.raises(ValueError, match="1/3 has no finite decimal form"):
        amount_text(Fraction(1, 3))


@given(st.integers(min_value=-(10**18), max_value=10**18), st.integers(0, 15))
def test_the_text_reads_back_as_the_same_amount(units: int, places: int) -> None:
    amount = Fraction(units, 10**places)
    assert Fraction(amount_text(amount)) == amount
