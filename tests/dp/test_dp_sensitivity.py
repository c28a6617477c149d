"""Sensitivity is a true, tight bound on how far one person moves the vector of aggregates."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dp.sensitivity import float_sqrt_at_least, sensitivity


@pytest.mark.parametrize(
    ("statistic", "norm", "total", "per_cell", "magnitude", "cells", "squared"),
    [
        # L1 cases give the distance itself, L2 cases its exact square.
        ("count", "l1", 10, None, 1, None, 10),
        ("count", "l2", 10, None, 1, None, 100),
        ("count", "l1", 10, 3, 1, None, 10),
        ("count", "l2", 10, 3, 1, None, 28),  # 3 * 3**2 + 1**2
        ("count", "l2", 10, 1, 1, None, 10),
        ("count", "l2", 4, 2, 1, None, 8),
        ("count", "l2", 9, 3, 1, None, 27),
        ("count", "l2", 4, 4, 1, None, 16),
        ("count", "l2", 3, 50, 1, None, 9),  # a per-cell bound above C is C
        ("sum", "l1", 10, None, 120, None, 1200),
        ("sum", "l2", 10, None, 120, None, 1200**2),
        ("sum", "l2", 10, 3, 120, None, 120**2 * 28),
        ("sum", "l1", 1, 1, 7, None, 7),
        ("count", "l1", 1, None, 120, None, 1),  # the magnitude only scales sums
        # Few output cells: a person cannot spread over more cells than the vector has.
        ("count", "l1", 3, 1, 1, 1, 1),  # one cell, k = 1, C = 3: exactly 1, not 3
        ("count", "l2", 3, 1, 1, 1, 1),
        ("count", "l1", 10, 3, 1, 2, 6),
        ("count", "l2", 10, 3, 1, 2, 18),  # two full cells, no cell left for the rest
        ("count", "l2", 10, 3, 1, 4, 28),  # three full cells and the rest in the fourth
        ("count", "l2", 22, 1, 1, 40, 22),  # sqrt(22), not 5
        ("sum", "l1", 10, 4, 5, 2, 40),
        ("sum", "l2", 10, 4, 5, 3, 25 * (2 * 16 + 4)),
        ("count", "l1", 10, None, 1, 1, 10),
    ],
)
def test_sensitivity_table(
    statistic: Literal["count", "sum"],
    norm: Literal["l1", "l2"],
    total: int,
    per_cell: int | None,
    magnitude: int,
    cells: int | None,
    squared: int,
) -> None:
    result = sensitivity(
        statistic,
        norm,
        max_contacts_per_person=total,
        max_contacts_per_cell=per_cell,
        measure_magnitude=magnitude,
        output_cells=cells,
    )
    if norm == "l1":
        assert result == squared and isinstance(result, int)
    else:
        assert _is_least_float_root(result, squared)


def _is_least_float_root(value: float, squared: int) -> bool:
    """``value`` is the smallest float whose exact square is at least ``squared``."""
    below = math.nextafter(value, 0.0)
    return Fraction(value) ** 2 >= squared and (squared == 0 or Fraction(below) ** 2 < squared)


def test_an_l2_sensitivity_is_the_exact_root_and_costs_less_than_its_rounding() -> None:
    # sqrt(22) rounded up to 5 would cost 25 / 22 - 1 = 13.6% more rho at the same noise.
    exact = sensitivity(
        "count", "l2", max_contacts_per_person=22, max_contacts_per_cell=1, output_cells=22
    )
    assert 4.69 < exact < 4.6905
    assert (5 / exact) ** 2 > 1.136


@pytest.mark.parametrize("value", [0, 1, 2, 3, 22, 10**6, 2**53 + 1, 10**30 + 7, 2**104])
def test_float_sqrt_at_least_is_the_least_float_not_below_the_root(value: int) -> None:
    assert _is_least_float_root(float_sqrt_at_least(value), value)


def _brute_force(total: int, per_cell: int, magnitude: int, cells: int) -> tuple[int, int]:
    """The largest L1 distance and squared L2 distance over every way one person can place
    contacts into ``cells`` cells (at most ``per_cell`` each, ``total`` in all), each contact
    moving a sum by ``magnitude`` (the extreme value)."""
    best_l1 = best_squared = 0
    for placement in itertools.product(range(per_cell + 1), repeat=cells):
        if sum(placement) > total:
            continue
        best_l1 = max(best_l1, sum(placement) * magnitude)
        best_squared = max(best_squared, sum((n * magnitude) ** 2 for n in placement))
    return best_l1, best_squared


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=4),
)
def test_sensitivity_equals_the_brute_force_worst_person(
    total: int, per_cell: int, magnitude: int, cells: int
) -> None:
    bounds = {
        "max_contacts_per_person": total,
        "max_contacts_per_cell": per_cell,
        "output_cells": cells,
    }
    worst_l1, worst_squared = _brute_force(total, min(per_cell, total), magnitude, cells)
    assert sensitivity("sum", "l1", **bounds, measure_magnitude=magnitude) == worst_l1
    l2 = sensitivity("sum", "l2", **bounds, measure_magnitude=magnitude)
    assert _is_least_float_root(l2, worst_squared)
    count_l1, count_squared = _brute_force(total, min(per_cell, total), 1, cells)
    assert sensitivity("count", "l1", **bounds) == count_l1
    assert _is_least_float_root(sensitivity("count", "l2", **bounds), count_squared)


def test_sensitivity_rejects_impossible_bounds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        sensitivity("count", "l1", max_contacts_per_person=0)


@st.composite
def cubes(draw: st.DrawFn) -> tuple[int, int, int, list[list[list[int]]]]:
    """Bounds (C, k, m) and, per person, per cell, the measure values of their contacts."""
    total = draw(st.integers(min_value=1, max_value=6))
    per_cell = draw(st.integers(min_value=1, max_value=total))
    magnitude = draw(st.integers(min_value=1, max_value=5))
    cells = draw(st.integers(min_value=1, max_value=4))
    persons = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        remaining = total
        person = []
        for _ in range(cells):
            contacts = draw(st.integers(min_value=0, max_value=min(per_cell, remaining)))
            remaining -= contacts
            values = draw(
                st.lists(
                    st.integers(min_value=-magnitude, max_value=magnitude),
                    min_size=contacts,
                    max_size=contacts,
                )
            )
            person.append(values)
        persons.append(person)
    return total, per_cell, magnitude, persons


def _vectors(persons: list[list[list[int]]]) -> tuple[list[int], list[int]]:
    cells = len(persons[0])
    counts = [sum(len(person[cell]) for person in persons) for cell in range(cells)]
    sums = [sum(sum(person[cell]) for person in persons) for cell in range(cells)]
    return counts, sums


@settings(max_examples=300)
@given(cubes())
def test_removing_any_person_moves_aggregates_at_most_the_sensitivity(
    cube: tuple[int, int, int, list[list[list[int]]]],
) -> None:
    total, per_cell, magnitude, persons = cube
    counts, sums = _vectors(persons)
    bounds = {
        "max_contacts_per_person": total,
        "max_contacts_per_cell": per_cell,
        "output_cells": len(counts),
    }
    for removed in range(len(persons)):
        rest = persons[:removed] + persons[removed + 1 :]
        rest_counts, rest_sums = _vectors(rest) if rest else ([0] * len(counts), [0] * len(sums))
        pairs: tuple[tuple[Literal["count", "sum"], list[int], list[int]], ...] = (
            ("count", counts, rest_counts),
            ("sum", sums, rest_sums),
        )
        for statistic, full, without in pairs:
            moved = [a - b for a, b in zip(full, without, strict=True)]
            l1 = sensitivity(statistic, "l1", **bounds, measure_magnitude=magnitude)
            l2 = sensitivity(statistic, "l2", **bounds, measure_magnitude=magnitude)
            assert sum(abs(x) for x in moved) <= l1
            assert sum(x * x for x in moved) <= Fraction(l2) ** 2


@given(
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=40),
    st.integers(min_value=1, max_value=200),
)
def test_a_worst_case_person_reaches_the_bound(total: int, per_cell: int, magnitude: int) -> None:
    per_cell = min(per_cell, total)
    # The worst person fills cells with k contacts of the largest magnitude, then the rest.
    full, remainder = divmod(total, per_cell)
    moved = [per_cell * magnitude] * full + ([remainder * magnitude] if remainder else [])
    bounds = {"max_contacts_per_person": total, "max_contacts_per_cell": per_cell}
    assert sensitivity("sum", "l1", **bounds, measure_magnitude=magnitude) == sum(moved)
    assert sensitivity("count", "l1", **bounds) == total
    l2 = sensitivity("sum", "l2", **bounds, measure_magnitude=magnitude)
    # Tight: the smallest float at least the worst-case L2 norm.
    assert _is_least_float_root(l2, sum(x * x for x in moved))
