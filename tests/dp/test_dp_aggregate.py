"""True aggregates over stored cells: filtered, grouped, summed over the full cross product."""

from __future__ import annotations

from typing import Any

import polars as pl

from service.dp.aggregate import true_aggregates
from service.dp.query import build_query
from service.policy.model import DatasetPolicy
from tests.dataset_policies import MONTHS

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
