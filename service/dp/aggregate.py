"""True aggregates of a query over stored cells: the exact input of the noise mechanism.

Never returned to anyone: :mod:`service.dp.engine` feeds these vectors to an OpenDP
measurement and only its output leaves the service.

Every release sums the same stored cells again under another grouping, so the cells are
indexed once per decrypted frame (each dimension as integer codes into its public domain)
and a query is then one ``numpy.bincount`` over the codes, in well under a millisecond
whatever the grouping. The Polars path computes the same aggregates and remains for what
the index declines: a grouping whose full domain is too large to count into, or totals too
large for ``bincount``'s float64 to stay exact.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from service.dp.query import Query, group_cells
from service.policy.model import CONTACTS_COLUMN, DatasetPolicy

_ORDER = "__cell_order"
# Every integer of magnitude below 2**53 is a float64, and so is every partial sum of
# integers whose magnitudes add up to less than that: bincount is then exact.
_EXACT_IN_FLOAT = 2**53
# The index counts into the full domain of the grouped dimensions; beyond this many cells
# the Polars path groups only the cells present instead.
_MAX_COUNTED_CELLS = 1_000_000


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
    different batches) are added. Output cells with no stored rows are 0, and so are stored
    values outside the dimension's public domain.
    """
    counted = _indexes.get(cells, dataset).aggregate(query, dataset)
    return counted if counted is not None else polars_aggregates(cells, query, dataset)


def polars_aggregates(cells: pl.DataFrame, query: Query, dataset: DatasetPolicy) -> TrueAggregates:
    """:func:`true_aggregates` computed by a Polars plan over ``cells``."""
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


class CellIndex:
    """Stored cells as integer codes into each dimension's public domain, for counting.

    Built once per decrypted cells frame and dataset policy. A code of -1 marks a stored
    value outside the policy's current domain, which no output cell includes.
    """

    def __init__(self, cells: pl.DataFrame, dataset: DatasetPolicy) -> None:
        self.rows = cells.height
        # A frame without some dimension's column (not one the store produces) is left to
        # the Polars path, which reports it.
        self.complete = all(d.name in cells.columns for d in dataset.dimensions)
        self.sizes = {d.name: len(d.values) for d in dataset.dimensions}
        self.codes: dict[str, npt.NDArray[np.int64]] = {}
        for dimension in dataset.dimensions if self.complete else ():
            codes = cells[dimension.name].replace_strict(
                list(dimension.values),
                list(range(len(dimension.values))),
                default=-1,
                return_dtype=pl.Int64,
            )
            self.codes[dimension.name] = codes.to_numpy()
        # Per column, the float64 weights for bincount, or None when their magnitudes add up
        # to 2**53 or more and a float sum could round (Polars sums those in 128 bits).
        self.weights: dict[str, npt.NDArray[np.float64] | None] = {}
        for column in [CONTACTS_COLUMN, *(measure.name for measure in dataset.measures)]:
            if column not in cells.columns:
                continue
            values = cells[column]
            magnitude = values.cast(pl.Int128).abs().sum() if self.rows else 0
            self.weights[column] = (
                values.cast(pl.Float64).to_numpy() if int(magnitude) < _EXACT_IN_FLOAT else None
            )

    def aggregate(self, query: Query, dataset: DatasetPolicy) -> TrueAggregates | None:
        """The query's aggregates, or None when this index cannot count them exactly."""
        columns = [CONTACTS_COLUMN] + ([query.measure] if query.measure is not None else [])
        weights = [self.weights.get(column) for column in columns]
        counted = math.prod(self.sizes[name] for name in query.group_by)
        if counted > _MAX_COUNTED_CELLS or not self.complete:
            return None
        kept = np.ones(self.rows, dtype=bool)
        for name, values in query.filters:
            # One slot more than the domain: code -1 lands in it, and it stays False.
            allowed = np.zeros(self.sizes[name] + 1, dtype=bool)
            allowed[[dataset.dimension(name).values.index(value) for value in values]] = True
            kept &= allowed[self.codes[name]]
        flat = np.zeros(self.rows, dtype=np.int64)
        for name in query.group_by:
            codes = self.codes[name]
            kept &= codes >= 0
            flat = flat * self.sizes[name] + codes
        flat = flat[kept]
        positions = _positions(query, dataset)
        totals: list[list[int]] = []
        for weight in weights:
            if weight is None:
                return None
            summed = np.bincount(flat, weights=weight[kept], minlength=counted)
            totals.append([int(total) for total in summed[positions]])
        return TrueAggregates(
            cells=group_cells(query, dataset),
            counts=totals[0],
            sums=totals[1] if query.measure is not None else None,
        )


def _positions(query: Query, dataset: DatasetPolicy) -> npt.NDArray[np.int64]:
    """Where each output cell, in :func:`group_cells` order, sits in the full domain of the
    grouped dimensions (row-major, as :meth:`CellIndex.aggregate` counts)."""
    flat = np.zeros(1, dtype=np.int64)
    for name in query.group_by:
        domain = dataset.dimension(name).values
        kept = query.filter_values(name)
        codes = np.array(
            [domain.index(value) for value in (domain if kept is None else kept)], dtype=np.int64
        )
        flat = (flat[:, None] * len(domain) + codes[None, :]).reshape(-1)
    return flat


class _Indexes:
    """The index of the few cells frames in use, each for the dataset policy it was built
    under; a frame and a policy are matched by identity, and both are kept alive while
    their index is, so an id can never be reused for another frame."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._held: OrderedDict[tuple[int, int], tuple[pl.DataFrame, DatasetPolicy, CellIndex]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, cells: pl.DataFrame, dataset: DatasetPolicy) -> CellIndex:
        key = (id(cells), id(dataset))
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[0] is cells and held[1] is dataset:
                self._held.move_to_end(key)
                return held[2]
        index = CellIndex(cells, dataset)
        with self._lock:
            self._held[key] = (cells, dataset, index)
            while len(self._held) > self._size:
                self._held.popitem(last=False)
        return index


_indexes = _Indexes()
