"""Exact arithmetic of privacy costs: parsing, nano-units, conservative rounding, conversions.

Budgets are spent by many small charges, so costs are exact ``Fraction``s and the ledger may
store them as integer nano-units (``NANO`` per unit of epsilon or rho). Binary floats never
enter a sum: ten charges of 0.1 add up to exactly 1, never to 1.0000000000000002, so a
partner is neither over- nor under-charged by rounding.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import opendp.prelude as dp

from service.dp.errors import InvalidQuery
from service.policy.amounts import amount_text
from service.policy.fields import AMOUNT_DECIMALS

dp.enable_features("contrib")

NANO: int = 10**AMOUNT_DECIMALS
"""Nano-units per unit of epsilon or rho: the finest grain a cost may have."""

MIN_COST = Fraction(1, 10**6)
"""The smallest cost a query may ask for; anything below buys only noise."""

MAX_DECIMALS = 9


def parse_cost(value: object, *, field: str = "cost") -> Fraction:
    """Read a cost from a JSON number, a decimal string or a ``Decimal``, exactly.

    Promises a finite ``Fraction`` >= ``MIN_COST`` with at most 9 decimal places, equal to
    the decimal text the caller wrote (``0.1`` is ``Fraction(1, 10)``). Floats are read
    through their shortest decimal representation, never through binary arithmetic.
    Raises :class:`InvalidQuery` naming ``field`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise InvalidQuery(field, f"must be a number, got {type(value).__name__}")
    text = repr(value) if isinstance(value, float) else str(value)
    try:
        number = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidQuery(field, f"{text!r} is not a number") from None
    if not number.is_finite():
        raise InvalidQuery(field, f"{text} is not a finite number")
    if number <= 0:
        raise InvalidQuery(field, f"{text} must be greater than 0")
    exponent = number.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMALS:
        raise InvalidQuery(field, f"{text} has more than {MAX_DECIMALS} decimal places")
    cost = Fraction(number)
    if cost < MIN_COST:
        raise InvalidQuery(field, f"{text} is below the minimum cost {amount_text(MIN_COST)}")
    return cost


def to_nano(cost: Fraction) -> int:
    """The cost in integer nano-units; raises ``ValueError`` if it is not a whole number of them."""
    scaled = cost * NANO
    if scaled.denominator != 1:
        raise ValueError(f"{cost} is not a whole number of nano-units")
    return scaled.numerator


def from_nano(nanos: int) -> Fraction:
    """The exact cost of ``nanos`` nano-units."""
    return Fraction(nanos, NANO)


def remaining_budget(budget: Fraction, spent: Fraction) -> Fraction:
    """What is left of ``budget`` once ``spent`` is charged, exactly, and never below zero.

    A DPO may lower a budget below what was already spent: that leaves 0, not a debt.
    """
    return max(budget - spent, Fraction(0))


def ceil_nano(cost: float | Fraction) -> Fraction:
    """Round a computed cost UP to the next whole nano-unit.

    Used for costs that come out of a privacy map (floats): charging the rounded-up amount
    is conservative, the partner is never charged less than the loss the map reports.
    """
    exact = Fraction(cost)
    return Fraction(math.ceil(exact * NANO), NANO)


def float_at_most(cost: Fraction) -> float:
    """The largest float that is <= ``cost`` exactly.

    ``float(Fraction(1, 10))`` is slightly *above* 1/10; a measurement confirmed with
    ``check(d_in, float_at_most(cost))`` has a loss no larger than the exact cost charged.
    """
    approx = float(cost)
    if Fraction(approx) > cost:
        approx = math.nextafter(approx, -math.inf)
    return approx


def epsilon_at_delta(rho: Fraction, delta: float) -> float:
    """The epsilon of (epsilon, delta)-DP implied by rho-zCDP, by OpenDP's own conversion.

    Builds a Gaussian measurement whose privacy map at some ``d_in`` is at least ``rho`` (equal
    up to float rounding, never below), converts it with ``make_zCDP_to_approxDP`` and fixes
    ``delta``. Rounding only ever raises the reported epsilon.
    """
    if rho <= 0:
        raise ValueError("rho must be greater than 0")
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    # With scale 1, rho = d_in**2 / 2: pick d_in so that the map is >= the exact rho.
    gaussian: dp.Measurement = space >> dp.m.then_gaussian(scale=1.0)
    d_in = math.sqrt(2 * float(rho))
    while Fraction(gaussian.map(d_in)) < rho:  # type: ignore[no-untyped-call]
        d_in = math.nextafter(d_in, math.inf)
    approx = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(gaussian), delta)
    epsilon, _ = approx.map(d_in)  # type: ignore[no-untyped-call]
    return float(epsilon)
