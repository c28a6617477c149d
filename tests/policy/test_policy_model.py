"""The vocabulary every layer shares: what a month is, the statistics, the budget units."""

from __future__ import annotations

from typing import get_args

import pytest

from service.policy.model import BUDGET_UNITS, STATISTICS, Definition, Statistic, is_month


@pytest.mark.parametrize("text", ["2024-01", "2024-09", "2024-10", "2024-12", "0001-01"])
def test_a_calendar_month_is_a_month(text: str) -> None:
    assert is_month(text)


@pytest.mark.parametrize(
    "value",
    [
        "2024-00",
        "2024-13",
        "2024-99",
        "2024-1",
        "24-01",
        "2024-01-01",
        "2024/01",
        "2024-01\n",
        " 2024-01",
        "\uff12\uff10\uff12\uff14-01",  # full-width digits match \d, never a month
        "",
        202401,
        None,
    ],
)
def test_anything_else_is_not_a_month(value: object) -> None:
    assert not is_month(value)


def test_each_privacy_definition_counts_its_budgets_in_one_unit() -> None:
    assert dict(BUDGET_UNITS) == {"pure": "epsilon", "zcdp": "rho"}
    assert tuple(BUDGET_UNITS) == get_args(Definition)


def test_the_statistics_are_those_of_the_statistic_type() -> None:
    assert STATISTICS == get_args(Statistic) == ("count", "sum", "mean")
