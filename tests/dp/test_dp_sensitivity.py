"""Sensitivity is a true, tight bound on how far one person moves the vector of aggregates."""

from __future__ import annotations

import math
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dp.sensitivity import sensitivity


@pytest.mark.parametrize(
    ("statistic", "norm", "total", "per_cell", "magnitude", "expected"),
    [
        ("count", "l1", 10, None, 1, 10),
        ("count", "l2", 10, None, 1, 10),
        ("count", "l1", 10, 3, 1, 10),
        ("count", "l2", 10, 3, 1, 6),  # sqrt(3*9 + 1) = 5.29
        ("count", "l2", 10, 1, 1, 4),  # sqrt(10) = 3.16
        ("count", "l2", 4, 2, 1, 3),  # sqrt(8) = 2.83
        ("count", "l2", 9, 3, 1, 6),  # sqrt(27) = 5.20
        ("count", "l2", 4, 4, 1, 4),
        ("count", "l2", 3, 50, 1, 3),  # a per-cell bound above C is C
        ("sum", "l1", 10, None, 120, 1200),
        ("sum", "l2", 10, None, 120, 1200),
        ("sum", "l2", 10, 3, 120, 635),  # 120 * sqrt(28) = 634.98
        ("sum", "l1", 1, 1, 7, 7),
        ("count", "l1", 1, None, 120, 1),  # the magnitude only scales sums
    ],
)
def test_sensitivity_table(
    statistic: Literal["count", "sum"],
    norm: Literal["l1", "l2"],
    total: int,
    per_cell: int | None,
    magnitude: int,
    expected: int,
) -> None:
    assert (
        sensitivity(
            statistic,
            norm,
            max_contacts_per_person=total,
            max_contacts_per_cell=per_cell,
            measure_magnitude=magnitude,
        )
        == expected
    )


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
    bounds = {"max_contacts_per_person": total, "max_contacts_per_cell": per_cell}
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
            assert math.sqrt(sum(x * x for x in moved)) <= l2


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
    squared = sum(x * x for x in moved)
    # Tight: the smallest integer at least the worst-case L2 norm.
    assert (l2 - 1) ** 2 < squared <= l2**2
