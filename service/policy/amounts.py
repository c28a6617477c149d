"""The exact decimal text of a privacy amount: a budget, a cost, a charge or a delta.

Every amount dpx writes as text — a release's ``privacy.cost``, the canonical form of a query,
a policy error, a policy review — comes from :func:`amount_text`, so one amount never reads
two ways. Amounts are exact ``Fraction``s and so is their text: no float ever rounds it.
"""

from __future__ import annotations

from fractions import Fraction


def amount_text(amount: Fraction) -> str:
    """The exact decimal text of ``amount``: ``0.5``, ``2``, ``100``, ``0.000000000001``.

    Never an exponent, never a trailing zero, never rounded. Raises ``ValueError`` for an
    amount with no finite decimal form (a denominator with a prime factor other than 2 and
    5, such as 1/3): amounts read from decimal text or counted in nano-units never have one,
    and rounding one would state an amount that is not the one set or charged.
    """
    denominator = amount.denominator
    twos = fives = 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        raise ValueError(f"{amount} has no finite decimal form")
    places = max(twos, fives)
    sign = "-" if amount < 0 else ""
    scaled = abs(amount.numerator) * 10**places // amount.denominator
    whole, frac = divmod(scaled, 10**places)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:0{places}d}".rstrip("0")
