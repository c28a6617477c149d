"""True aggregates over stored cells: filtered, grouped, summed over the full cross product."""

from __future__ import annotations

from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from service.dp.aggregate import CellIndex, polars_aggregates, true_aggregates
from service.dp.query import build_query
from service.policy.model import DatasetPolicy
from tests.dataset_policies import MONTHS, demo_dataset

DIMENSIONS = ("month", "country", "channel", "caller_type", "referral_source")


def _cells(rows: list[tuple[str, str, str, str, str, int, int]]) -> pl.DataFrame:
    columns = [*DIMENSIONS, "contacts", "minutes"]
    schema = {**{name: pl.Utf8 for name in DIMENSIONS}, "contacts": pl.Int64, "minutes": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row").select(columns)


ROWS = [
    ("2024-01", "GB", "chat", "self_concerned", "police_warning", 3, 60),
    ("2024-01", "GB", "chat", "self_concerned", "police_warning", 2, 40),  # a later batch
    ("2024-01", "IE", "phone", "professional", "other", 5, 100),
    ("2024-03", "GB", "chat", "survivor", "social_media_ad", 7, 700),
]


def _query(dataset: DatasetPolicy, **fields: Any) -> Any:
    raw = {"dataset": dataset.id, "statistic": "count", "epsilon": 1, **fields}
    return build_query(raw, dataset)


def test_counts_cover_every_cell_including_empty_ones(pure_dataset: DatasetPolicy) -> None:
    query = _query(pure_dataset, group_by=["month"])
    result = true_aggregates(_cells(ROWS), query, pure_dataset)
    assert result.cells == [(month,) for month in MONTHS]
    assert result.counts == [10, 0, 7] + [0] * 9
    assert result.sums is None


def test_filters_and_batches_add_up(pure_dataset: DatasetPolicy) -> None:
    query = _query(
        pure_dataset,
        statistic="sum",
        measure="minutes",
        group_by=["channel", "country"],
        filters={"month": ["2024-01"]},
    )
    result = true_aggregates(_cells(ROWS), query, pure_dataset)
    expected = {("GB", "chat"): (5, 100), ("IE", "phone"): (5, 100)}
    assert len(result.cells) == 8
    assert result.sums is not None
    for cell, count, total in zip(result.cells, result.counts, result.sums, strict=True):
        assert (count, total) == expected.get(cell, (0, 0))


def test_without_group_by_one_total(pure_dataset: DatasetPolicy) -> None:
    query = _query(pure_dataset, statistic="mean", measure="minutes", filters={"country": ["GB"]})
    result = true_aggregates(_cells(ROWS), query, pure_dataset)
    assert (result.cells, result.counts, result.sums) == ([()], [12], [800])


def test_no_stored_cells_gives_zeros(pure_dataset: DatasetPolicy) -> None:
    query = _query(pure_dataset, group_by=["country"])
    assert true_aggregates(_cells([]), query, pure_dataset).counts == [0, 0]
    total = _query(pure_dataset)
    assert true_aggregates(_cells([]), total, pure_dataset).counts == [0]


def test_a_hundred_thousand_stored_cells_aggregate_quickly(pure_dataset: DatasetPolicy) -> None:
    n = 100_000
    cells = pl.DataFrame(
        {
            "month": [MONTHS[i % 12] for i in range(n)],
            "country": ["GB", "IE"] * (n // 2),
            "channel": [("phone", "chat", "email", "web")[i % 4] for i in range(n)],
            "caller_type": ["other"] * n,
            "referral_source": ["other"] * n,
            "contacts": [1] * n,
            "minutes": [10] * n,
        },
        schema_overrides={"contacts": pl.Int64, "minutes": pl.Int64},
    )
    query = _query(pure_dataset, group_by=["month", "channel"])
    result = true_aggregates(cells, query, pure_dataset)
    # Speed is measured by scripts/bench query; here, many stored rows add up exactly.
    assert sum(result.counts) == n
    assert len(result.counts) == 12 * 4


# -- the counting index against the Polars plan ----------------------------------------------

_DATASET = demo_dataset()
_VALUES = {d.name: d.values for d in _DATASET.dimensions}


@st.composite
def _stored_cells(draw: st.DrawFn) -> pl.DataFrame:
    """Stored cells with repeats (several batches), negative and huge measure sums, and now
    and then a value outside the policy's domain (stored under an older policy)."""
    rows = []
    for _ in range(draw(st.integers(0, 40))):
        cell = tuple(
            draw(st.sampled_from((*_VALUES[name], "retired-value")))
            if draw(st.booleans()) and draw(st.integers(0, 9)) == 0
            else draw(st.sampled_from(_VALUES[name]))
            for name in DIMENSIONS
        )
        contacts = draw(st.integers(0, 2**31 - 1))
        minutes = draw(st.one_of(st.integers(-(2**40), 2**40), st.integers(-(2**62), 2**62)))
        rows.append((*cell, contacts, minutes))
    return _cells(rows)


@st.composite
def _queries(draw: st.DrawFn) -> Any:
    group_by = draw(st.lists(st.sampled_from(DIMENSIONS), unique=True, max_size=3))
    filters = {
        name: draw(st.lists(st.sampled_from(_VALUES[name]), unique=True, min_size=1))
        for name in draw(st.lists(st.sampled_from(DIMENSIONS), unique=True, max_size=3))
    }
    statistic = draw(st.sampled_from(["count", "sum"]))
    extra = {"measure": "minutes"} if statistic == "sum" else {}
    return _query(_DATASET, statistic=statistic, group_by=group_by, filters=filters, **extra)


@settings(max_examples=300, deadline=None)
@given(_stored_cells(), _queries())
def test_the_counting_index_gives_exactly_what_the_polars_plan_gives(
    cells: pl.DataFrame, query: Any
) -> None:
    """Whichever path answers (the index, or Polars for totals beyond float64's exact
    range), every release sees the same exact aggregates."""
    assert true_aggregates(cells, query, _DATASET) == polars_aggregates(cells, query, _DATASET)


def test_the_counting_index_answers_ordinary_cells_itself() -> None:
    """The index is what answers a dataset of ordinary size (not the fallback)."""
    cells = _cells(ROWS)
    query = _query(_DATASET, group_by=["month", "channel"], filters={"country": ["GB"]})
    counted = CellIndex(cells, _DATASET).aggregate(query, _DATASET)
    assert counted is not None
    assert counted == polars_aggregates(cells, query, _DATASET)
    huge = _cells([("2024-01", "GB", "chat", "other", "other", 1, 2**60)] * 9)
    total = _query(_DATASET, statistic="sum", measure="minutes")
    # Past 2**53 a float64 sum could round: the index declines and Polars sums exactly.
    assert CellIndex(huge, _DATASET).aggregate(total, _DATASET) is None
    assert true_aggregates(huge, total, _DATASET).sums == [9 * 2**60]
