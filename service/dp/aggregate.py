"""True aggregates of a query over stored cells: the exact input of the noise mechanism.

Never returned to anyone: :mod:`service.dp.engine` feeds these vectors to an OpenDP
measurement and only its output leaves the service.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from service.dp.query import Query, group_cells
from service.policy.model import CONTACTS_COLUMN, DatasetPolicy

_ORDER = "__cell_order"


@dataclass(frozen=True)
class TrueAggregates:
    """Exact per-cell counts (and measure sums for sum/mean), in :func:`group_cells` order."""

    cells: list[tuple[str, ...]]
    counts: list[int]
    sums: list[int] | None


def true_aggregates(cells: pl.DataFrame, query: Query, dataset: DatasetPolicy) -> TrueAggregates:
    """Filter, group and sum stored ``cells`` over the query's full output cross product.

    ``cells`` has one Utf8 column per dimension, an Int64 ``contacts`` column and one Int64
    column per measure (the clamped sum in that cell); rows for the same combination (from
    different batches) are added. Output cells with no stored rows are 0.
    """
    output_cells = group_cells(query, dataset)
    columns = [CONTACTS_COLUMN] + ([query.measure] if query.measure is not None else [])
    condition = pl.lit(True)
    for name, values in query.filters:
        condition = condition & pl.col(name).is_in(list(values))
    kept = cells.lazy().filter(condition)
    # Summed in 128 bits: an Int64 sum wraps silently, and a wrapped total could move by far
    # more than the sensitivity when one person is removed. The mechanism clamps to 64 bits.
    totals = [pl.col(column).cast(pl.Int128).sum().alias(column) for column in columns]
    if not query.group_by:
        row = kept.select(totals).collect().row(0)
        counts = [int(row[0] or 0)]
        sums = [int(row[1] or 0)] if query.measure is not None else None
        return TrueAggregates(cells=output_cells, counts=counts, sums=sums)
    grouped = kept.group_by(list(query.group_by)).agg(totals)
    frame = pl.DataFrame(
        {
            _ORDER: list(range(len(output_cells))),
            **{
                name: [cell[index] for cell in output_cells]
                for index, name in enumerate(query.group_by)
            },
        },
        schema={_ORDER: pl.Int64, **{name: pl.Utf8 for name in query.group_by}},
    )
    joined = (
        frame.lazy()
        .join(grouped, on=list(query.group_by), how="left")
        .sort(_ORDER)
        .select([pl.col(column).fill_null(0) for column in columns])
        .collect()
    )
    counts = [int(value) for value in joined[CONTACTS_COLUMN].to_list()]
    sums = (
        [int(value) for value in joined[query.measure].to_list()]
        if query.measure is not None
        else None
    )
    return TrueAggregates(cells=output_cells, counts=counts, sums=sums)
