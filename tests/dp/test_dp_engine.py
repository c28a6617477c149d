"""The engine end to end: plan (no noise), release, summary, for every statistic and definition."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import opendp.prelude as dp
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dp.accounting import epsilon_at_delta
from service.dp.aggregate import true_aggregates
from service.dp.engine import (
    measurement_json,
    plan_query,
    plan_summary,
    release_values,
    rounded_mean,
)
from service.dp.errors import InvalidQuery
from service.dp.query import build_query
from service.dp.sensitivity import float_sqrt_at_least
from service.policy.model import DatasetPolicy, Dimension
from tests.dataset_policies import month_channel_dataset

DIMENSIONS = ("month", "country", "channel", "caller_type", "referral_source")


def _cells() -> pl.DataFrame:
    rows = []
    for index, month in enumerate(["2024-01", "2024-02", "2024-03"]):
        for channel in ("phone", "chat"):
            contacts = 200 + 100 * index
            rows.append((month, "GB", channel, "other", "other", contacts, 30 * contacts))
    schema = {**{name: pl.Utf8 for name in DIMENSIONS}, "contacts": pl.Int64, "minutes": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _flow(dataset: DatasetPolicy, **fields: Any) -> tuple[Any, list[Any], Any]:
    raw = {"dataset": dataset.id, "group_by": ["month"], **fields}
    query = build_query(raw, dataset)
    plan = plan_query(query, dataset)
    aggregates = true_aggregates(_cells(), query, dataset)
    return plan, release_values(plan, aggregates), aggregates


PRIVACY = {"pure": {"epsilon": "0.5"}, "zcdp": {"rho": "0.05"}}


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
@pytest.mark.parametrize("statistic", ["count", "sum", "mean"])
def test_flow_charges_the_asked_cost_and_releases_every_cell(
    definition: str, statistic: str, make_dataset: Callable[..., DatasetPolicy]
) -> None:
    dataset = make_dataset(definition=definition, delta=Fraction(1, 10**7))
    measure = {} if statistic == "count" else {"measure": "minutes"}
    plan, values, aggregates = _flow(dataset, statistic=statistic, **measure, **PRIVACY[definition])
    asked = Fraction(PRIVACY[definition][dataset.budget_unit])
    assert plan.cost == asked
    assert sum((part.cost for part in plan.plans.values()), Fraction(0)) == asked
    assert [value.cell for value in values] == [(f"2024-{m:02d}",) for m in range(1, 13)]
    for value in values:
        low, high = value.ci
        assert low <= high
        if statistic == "mean":
            assert 0 <= low <= value.value <= high <= 120
    summary = plan_summary(plan)
    assert json.loads(json.dumps(summary)) == summary
    assert summary["privacy"]["definition"] == definition
    assert summary["privacy"]["cost"] == PRIVACY[definition]
    if definition == "zcdp":
        assert summary["privacy"]["delta"] == 1e-7
        assert summary["privacy"]["epsilon"] == epsilon_at_delta(asked, 1e-7)
        assert summary["mechanism"]["name"] == "discrete_gaussian"
    else:
        assert summary["privacy"] == {
            "definition": "pure",
            "epsilon": 0.5,
            "delta": 0.0,
            "cost": {"epsilon": "0.5"},
        }
        assert summary["mechanism"]["name"] == "discrete_laplace"
    stored = json.loads(measurement_json(plan))
    if statistic == "mean":
        assert set(stored) == {"sum", "count"}
        assert dp.deserialize(json.dumps(stored["count"])).map(plan.plans["count"].sensitivity)
    else:
        assert dp.deserialize(measurement_json(plan)).map(plan.sensitivity) <= float(asked)


def test_count_plan_reports_mechanism_and_accuracy(pure_dataset: DatasetPolicy) -> None:
    plan, values, aggregates = _flow(pure_dataset, statistic="count", epsilon="0.5")
    assert plan_summary(plan)["mechanism"] == {
        "name": "discrete_laplace",
        "scale": 20.0,
        "sensitivity": 10,
    }
    # OpenDP's accuracy is 60.41; an integer noise within it is within 60.
    assert dp.discrete_laplacian_scale_to_accuracy(20.0, 0.05) == pytest.approx(60.408, abs=1e-3)
    assert plan.max_error == 60
    for value in values:
        # Counts are never negative: the interval is clipped at 0, keeping its coverage.
        low, high = value.value - 60, value.value + 60
        assert value.ci == (max(0, low), max(0, high))
        assert all(isinstance(end, int) for end in (value.value, *value.ci))
    assert aggregates.counts[:4] == [400, 600, 800, 0]


def test_mean_splits_the_cost_in_half_exactly(pure_dataset: DatasetPolicy) -> None:
    query = build_query(
        {"dataset": pure_dataset.id, "statistic": "mean", "measure": "minutes", "epsilon": "0.3"},
        pure_dataset,
    )
    plan = plan_query(query, pure_dataset)
    assert plan.plans["sum"].cost == plan.plans["count"].cost == Fraction(3, 20)
    assert plan.plans["sum"].alpha == plan.plans["count"].alpha == 0.025
    assert plan.plans["sum"].sensitivity == 1200
    assert plan.plans["count"].sensitivity == 10
    assert plan.max_error is None


def test_mean_interval_is_honest_and_within_the_measure_bounds(
    pure_dataset: DatasetPolicy,
) -> None:
    # True mean is 30 minutes in the three filled months. At alpha 1e-6 an interval that
    # misses it would be a one-in-a-million event, not noise.
    plan, values, _ = _flow(
        pure_dataset, statistic="mean", measure="minutes", epsilon=4, alpha=1e-6
    )
    for value in values[:3]:
        low, high = value.ci
        assert 0 <= low <= 30 <= high <= 120
        assert low <= value.value <= high
    for value in values[3:]:
        assert 0 <= value.ci[0] <= value.ci[1] <= 120
        assert 0 <= value.value <= 120


def test_mean_with_an_accuracy_target_prices_the_count_and_matches_the_sum(
    zcdp_dataset: DatasetPolicy,
) -> None:
    query = build_query(
        {
            "dataset": zcdp_dataset.id,
            "statistic": "mean",
            "measure": "minutes",
            "accuracy": {"max_error": 20},
        },
        zcdp_dataset,
    )
    plan = plan_query(query, zcdp_dataset)
    assert plan.plans["count"].accuracy <= 20
    assert plan.plans["sum"].cost == plan.plans["count"].cost
    assert plan.cost == 2 * plan.plans["count"].cost


def test_accuracy_target_is_met_for_every_value(zcdp_dataset: DatasetPolicy) -> None:
    plan, values, _ = _flow(zcdp_dataset, statistic="count", accuracy={"max_error": 25})
    assert plan.max_error is not None and plan.max_error <= 25
    assert plan_summary(plan)["accuracy"] == {"alpha": 0.05, "max_error": plan.max_error}
    # The interval is value +- max_error, clipped at 0 (a count is never negative), so its
    # upper end is never above max(value + 25, 0), whatever noise a small count drew.
    assert all(value.ci[1] <= max(value.value + 25, 0) for value in values)


def test_a_per_cell_bound_only_applies_to_unmerged_cells(
    make_dataset: Callable[..., DatasetPolicy],
) -> None:
    dataset = make_dataset(definition="zcdp", delta=Fraction(1, 10**7), max_contacts_per_cell=1)
    every = {"country": ["GB"], "channel": ["chat"], "caller_type": ["other"]}
    fine = build_query(
        {
            "dataset": dataset.id,
            "statistic": "count",
            "group_by": ["month", "referral_source"],
            "filters": every,
            "rho": 1,
        },
        dataset,
    )
    # One stored cell per output cell: a person adds 1 to at most 10 cells, sqrt(10).
    fine_sensitivity = plan_query(fine, dataset).sensitivity
    assert Fraction(fine_sensitivity) ** 2 >= 10 and fine_sensitivity < 3.1623
    coarse = build_query(
        {"dataset": dataset.id, "statistic": "count", "group_by": ["month"], "rho": 1}, dataset
    )
    # 360 stored cells behind each month: all 10 contacts may land in one output cell.
    assert plan_query(coarse, dataset).sensitivity == 10


def test_a_one_cell_count_is_calibrated_to_one_cell(
    make_dataset: Callable[..., DatasetPolicy],
) -> None:
    # C = 3, k = 1: one person moves a single stored cell by at most 1, not by 3.
    dataset = make_dataset(max_contacts_per_person=3, max_contacts_per_cell=1)
    one_cell = {
        "month": ["2024-01"],
        "country": ["GB"],
        "channel": ["chat"],
        "caller_type": ["other"],
        "referral_source": ["other"],
    }
    query = build_query(
        {"dataset": dataset.id, "statistic": "count", "filters": one_cell, "epsilon": 1}, dataset
    )
    plan = plan_query(query, dataset)
    assert plan.sensitivity == 1
    assert plan.scale == pytest.approx(1.0)
    two = build_query(
        {
            "dataset": dataset.id,
            "statistic": "count",
            "group_by": ["month"],
            "filters": {**one_cell, "month": ["2024-01", "2024-02"]},
            "epsilon": 1,
        },
        dataset,
    )
    assert plan_query(two, dataset).sensitivity == 2


def test_zcdp_noise_is_calibrated_to_the_exact_l2_root(
    make_dataset: Callable[..., DatasetPolicy],
) -> None:
    # 22 contacts, at most 1 per cell, 72 output cells: L2 sensitivity sqrt(22), not 5.
    dataset = make_dataset(
        definition="zcdp",
        delta=Fraction(1, 10**7),
        max_contacts_per_person=22,
        max_contacts_per_cell=1,
    )
    query = build_query(
        {
            "dataset": dataset.id,
            "statistic": "count",
            "group_by": ["month", "referral_source"],
            "filters": {"country": ["GB"], "channel": ["chat"], "caller_type": ["other"]},
            "rho": "0.5",
        },
        dataset,
    )
    plan = plan_query(query, dataset)
    assert plan.cost == Fraction(1, 2)
    assert Fraction(plan.sensitivity) ** 2 >= 22 and plan.sensitivity < 4.6905
    # rho = d**2 / (2 scale**2): the scale is sqrt(22), 13.6% less variance than at 5.
    assert plan.scale == pytest.approx(22**0.5, rel=1e-9)
    measurement = dp.deserialize(measurement_json(plan))
    assert measurement.check(plan.sensitivity, 0.5)
    assert not measurement.check(5.0, 0.5)


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
@pytest.mark.parametrize("statistic", ["count", "mean"])
def test_a_loose_accuracy_target_is_refused_like_a_cost_below_the_minimum(
    definition: str, statistic: str, make_dataset: Callable[..., DatasetPolicy]
) -> None:
    dataset = make_dataset(definition=definition, delta=Fraction(1, 10**7))
    measure = {} if statistic == "count" else {"measure": "minutes"}
    for max_error in (1e308, 1e9):
        query = build_query(
            {
                "dataset": dataset.id,
                "statistic": statistic,
                **measure,
                "accuracy": {"max_error": max_error},
            },
            dataset,
        )
        with pytest.raises(InvalidQuery, match=r"^accuracy\.max_error: .*(minimum|too large)"):
            plan_query(query, dataset)


def test_totals_beyond_64_bits_release_within_the_64_bit_range(
    make_dataset: Callable[..., DatasetPolicy],
) -> None:
    # Stored cells whose totals exceed 32 and 64 bits: the release neither fails nor wraps
    # around (a wrapped total would be far from the truth and data-dependent).
    dataset = make_dataset(max_contacts_per_person=1)
    schema = {**{name: pl.Utf8 for name in DIMENSIONS}, "contacts": pl.Int64, "minutes": pl.Int64}
    big = 2**62
    cells = pl.DataFrame(
        [
            ("2024-01", "GB", "chat", "other", "other", 3_000_000_000, 0),
            ("2024-02", "GB", "chat", "other", "other", big, 0),
            ("2024-02", "IE", "chat", "other", "other", big, 0),
            ("2024-02", "GB", "phone", "other", "other", big, 0),
        ],
        schema=schema,
        orient="row",
    )
    query = build_query(
        {"dataset": dataset.id, "statistic": "count", "group_by": ["month"], "epsilon": 1},
        dataset,
    )
    plan = plan_query(query, dataset)
    aggregates = true_aggregates(cells, query, dataset)
    assert aggregates.counts[:2] == [3_000_000_000, 3 * big]
    values = release_values(plan, aggregates)
    assert abs(values[0].value - 3_000_000_000) < 100
    # The 2**63 + 2**62 total is clamped to the largest 64-bit value before noise.
    assert 2**63 - 100 < values[1].value <= 2**63 - 1
    assert all(-100 < value.value < 100 for value in values[2:])


@st.composite
def small_queries(draw: st.DrawFn) -> tuple[DatasetPolicy, dict[str, Any]]:
    """A two-by-two dataset with random bounds and a random count query over it."""
    total = draw(st.integers(min_value=1, max_value=5))
    per_cell = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=3)))
    definition = draw(st.sampled_from(["pure", "zcdp"]))
    dataset = month_channel_dataset(
        ("2024-01", "2024-02"),
        dimensions=(
            Dimension("month", "month", ("2024-01", "2024-02")),
            Dimension("channel", "categorical", ("phone", "chat")),
        ),
        definition=definition,
        delta=Fraction(1, 10**7),
        max_contacts_per_person=total,
        max_contacts_per_cell=per_cell,
    )
    group_by = draw(st.sets(st.sampled_from(["month", "channel"])))
    filters = {}
    for dimension in dataset.dimensions:
        if draw(st.booleans()):
            filters[dimension.name] = [draw(st.sampled_from(dimension.values))]
    privacy = {"epsilon": 1} if definition == "pure" else {"rho": 1}
    raw = {
        "dataset": dataset.id,
        "statistic": "count",
        "group_by": sorted(group_by),
        "filters": filters,
        **privacy,
    }
    return dataset, raw


@settings(max_examples=60, deadline=None)
@given(small_queries())
def test_plan_sensitivity_is_the_worst_person_over_every_stored_placement(
    case: tuple[DatasetPolicy, dict[str, Any]],
) -> None:
    """Brute force: place one person's contacts into the stored cells in every way the bounds
    allow, aggregate them as the query does, and take the largest distance they move."""
    dataset, raw = case
    query = build_query(raw, dataset)
    stored = list(itertools.product(*(dimension.values for dimension in dataset.dimensions)))
    total = dataset.max_contacts_per_person
    per_cell = min(total, dataset.max_contacts_per_cell or total)
    schema = {"month": pl.Utf8, "channel": pl.Utf8, "contacts": pl.Int64}
    worst_l1 = worst_squared = 0
    for placement in itertools.product(range(per_cell + 1), repeat=len(stored)):
        if sum(placement) > total:
            continue
        person = pl.DataFrame(
            [(*cell, contacts) for cell, contacts in zip(stored, placement, strict=True)],
            schema=schema,
            orient="row",
        )
        moved = true_aggregates(person, query, dataset).counts
        worst_l1 = max(worst_l1, sum(moved))
        worst_squared = max(worst_squared, sum(value * value for value in moved))
    plan = plan_query(query, dataset)
    if dataset.definition == "pure":
        assert plan.sensitivity == worst_l1
    else:
        assert plan.sensitivity == float_sqrt_at_least(worst_squared)


@pytest.mark.parametrize("definition", ["pure", "zcdp"])
@pytest.mark.parametrize("statistic", ["count", "sum"])
def test_counts_and_sums_get_whole_number_intervals(
    definition: str, statistic: str, make_dataset: Callable[..., DatasetPolicy]
) -> None:
    dataset = make_dataset(definition=definition, delta=Fraction(1, 10**7))
    measure = {} if statistic == "count" else {"measure": "minutes"}
    plan, values, _ = _flow(dataset, statistic=statistic, **measure, **PRIVACY[definition])
    assert isinstance(plan.max_error, int)
    summary = plan_summary(plan)
    assert summary["accuracy"]["max_error"] == plan.max_error
    assert plan.max_error <= plan.primary.accuracy < plan.max_error + 1
    for value in values:
        low, high = value.ci
        assert all(isinstance(end, int) for end in (value.value, low, high))
        assert (low, high) == (
            max(0, value.value - plan.max_error),
            max(0, value.value + plan.max_error),
        )


def test_a_scale_shows_without_float_noise(pure_dataset: DatasetPolicy) -> None:
    # At epsilon 0.2 OpenDP confirms the scale 50.00000000000001 (one float above 10 / 0.2).
    plan, _, _ = _flow(pure_dataset, statistic="count", epsilon="0.2")
    assert plan.scale == pytest.approx(50.0, rel=1e-12)
    assert repr(plan_summary(plan)["mechanism"]["scale"]) == "50.0"
    assert json.loads(measurement_json(plan)) != {}  # the stored measurement keeps the exact scale


@pytest.mark.parametrize(
    ("value", "low", "high", "shown"),
    [
        (31.41729, 24.9137, 38.1702, (31.0, 24.0, 39.0)),
        (31.41729, 30.9137, 31.8702, (31.42, 30.91, 31.88)),
        (0.0, 0.0, 120.0, (0.0, 0.0, 120.0)),
        (7.123456789, 7.1234312, 7.1235196, (7.123457, 7.123431, 7.12352)),
    ],
)
def test_a_mean_is_rounded_to_what_its_interval_can_tell_apart(
    value: float, low: float, high: float, shown: tuple[float, float, float]
) -> None:
    rounded = rounded_mean(("2024-01",), value, low, high)
    assert (rounded.value, *rounded.ci) == shown
    # Outward rounding: the shown interval contains the computed one.
    assert rounded.ci[0] <= low and high <= rounded.ci[1]


def test_released_means_carry_two_significant_digits_of_their_interval(
    pure_dataset: DatasetPolicy,
) -> None:
    _, values, _ = _flow(pure_dataset, statistic="mean", measure="minutes", epsilon="0.5")
    for value in values:
        low, high = value.ci
        width = high - low
        if width == 0:
            # Both ends clipped to one bound of the measure (a noisy sum whose whole interval
            # lies outside it): nothing left to round.
            assert value.value == low
            continue
        # Two significant digits of the unrounded width; rounding the ends outwards can
        # carry the shown width across a power of ten (9.97 shows as 10.0), one digit less.
        digits = max(0, 2 - math.floor(math.log10(width)))
        for number in (value.value, low, high):
            assert round(number, digits) == number
    assert rounded_mean(("x",), 31.41, 26.03, 35.996).ci == (26.0, 36.0)
