"""What each person has contributed to a dataset so far: the state that makes the person
bounds hold across batches.

One row per (keyed pseudonym, cell): the person's HMAC pseudonym (``service.crypto.
pseudonyms``), the dimension values of the cell and the contacts of that person kept in it.
A person's total is the sum of their rows. The state is kept sealed, as one document per
dataset (``service.store.documents``): in the clear, rows per person and cell would be each
caller's contact profile, linkable across months.
"""

from __future__ import annotations

import polars as pl

from service.policy.model import CONTACTS_COLUMN, PERSON_COLUMN, DatasetPolicy
from service.store.cells import decode_frame


def contributions_schema(dataset: DatasetPolicy) -> pl.Schema:
    """``person`` (the keyed pseudonym, Binary), the dimensions (Utf8), ``contacts`` (Int64)."""
    return pl.Schema(
        [
            (PERSON_COLUMN, pl.Binary()),
            *((dimension.name, pl.Utf8()) for dimension in dataset.dimensions),
            (CONTACTS_COLUMN, pl.Int64()),
        ]
    )


def empty_contributions(dataset: DatasetPolicy) -> pl.DataFrame:
    return pl.DataFrame(schema=contributions_schema(dataset))


def add_contributions(
    prior: pl.DataFrame, added: pl.DataFrame, dataset: DatasetPolicy
) -> pl.DataFrame:
    """``prior`` plus ``added``, one row per person and cell."""
    keys = [PERSON_COLUMN, *(dimension.name for dimension in dataset.dimensions)]
    schema = contributions_schema(dataset)
    return (
        pl.concat([prior.select(schema.names()), added.select(schema.names())])
        .group_by(keys)
        .agg(pl.col(CONTACTS_COLUMN).sum())
        .select(schema.names())
    )


def decode_contributions(data: bytes, dataset: DatasetPolicy) -> pl.DataFrame:
    """Read contributions written with ``encode_cells``; ``CellFormatError`` unless they have
    exactly the dataset's contribution schema."""
    return decode_frame(data, contributions_schema(dataset), f"the contributions of {dataset.id}")
