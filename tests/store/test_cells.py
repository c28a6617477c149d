"""Cell serialization: what is encrypted at rest must read back exactly, or not at all."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from service.policy.model import DatasetPolicy, Measure
from service.store.cells import (
    CellFormatError,
    cells_schema,
    decode_cells,
    empty_cells,
    encode_cells,
    merge_cells,
)
from service.store.ingest import parse_batch
from tests.dataset_policies import CHANNELS, month_channel_dataset

MONTHS = ("2024-01", "2024-02")
DATASET = month_channel_dataset(MONTHS)


def ingested(*rows: str) -> pl.DataFrame:
    body = ("month,channel,minutes\n" + "\n".join(rows) + "\n").encode()
    return parse_batch(body, content_type="text/csv", form="contacts", dataset=DATASET).cells


def test_ingested_cells_round_trip_exactly() -> None:
    cells = ingested("2024-01,chat,30", "2024-02,web,500", "2024-01,chat,1")
    assert_frame_equal(decode_cells(encode_cells(cells), DATASET), cells)


def test_empty_cells_have_the_dataset_schema_and_round_trip() -> None:
    empty = empty_cells(DATASET)
    assert empty.height == 0
    assert empty.schema == pl.Schema(
        {"month": pl.Utf8, "channel": pl.Utf8, "contacts": pl.Int64, "minutes": pl.Int64}
    )
    assert_frame_equal(decode_cells(encode_cells(empty), DATASET), empty)


def test_ingest_output_has_exactly_the_cells_schema() -> None:
    assert ingested("2024-01,chat,30").schema == cells_schema(DATASET)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(MONTHS),
            st.sampled_from(CHANNELS),
            st.integers(0, 2**40),
            st.integers(-(2**62), 2**62),
        ),
        max_size=30,
    )
)
def test_any_cells_round_trip(rows: list[tuple[str, str, int, int]]) -> None:
    cells = pl.DataFrame(rows, schema=cells_schema(DATASET), orient="row")
    assert_frame_equal(decode_cells(encode_cells(cells), DATASET), cells)


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (replace(DATASET, measures=()), "does not match dataset uk-helpline-2024"),
        (
            replace(DATASET, measures=(Measure("minutes", 0, 120), Measure("calls", 0, 5))),
            r"expected \(month: String, channel: String, contacts: Int64, minutes: Int64, "
            r"calls: Int64\)",
        ),
        (
            replace(DATASET, dimensions=tuple(reversed(DATASET.dimensions))),
            "does not match",
        ),
    ],
)
def test_cells_written_under_another_schema_are_refused(
    dataset: DatasetPolicy, message: str
) -> None:
    data = encode_cells(ingested("2024-01,chat,30"))
    with pytest.raises(CellFormatError, match=message):
        decode_cells(data, dataset)


def test_a_column_of_the_wrong_type_is_refused() -> None:
    cells = ingested("2024-01,chat,30").with_columns(pl.col("minutes").cast(pl.Float64))
    with pytest.raises(CellFormatError, match="minutes: Float64"):
        decode_cells(encode_cells(cells), DATASET)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a dpx cells payload"),
        (b"PAR1....", "not a dpx cells payload"),
        (b"DPXC", "cells format version none is not supported"),
        (b"DPXC\x02rest", "cells format version 2 is not supported"),
        (b"DPXC\x01short", "damaged: its digest does not match"),
        (b"DPXC\x01" + hashlib.sha256(b"garbage").digest() + b"garbage", "not readable Arrow IPC"),
    ],
)
def test_bytes_that_are_not_cells_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(CellFormatError, match=message):
        decode_cells(data, DATASET)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_damage_to_a_payload_is_detected(data: st.DataObject) -> None:
    payload = bytearray(encode_cells(ingested("2024-01,chat,30", "2024-02,web,5")))
    if data.draw(st.booleans(), label="truncate"):
        damaged = payload[: data.draw(st.integers(0, len(payload) - 1), label="length")]
    else:
        at = data.draw(st.integers(0, len(payload) - 1), label="offset")
        payload[at] ^= data.draw(st.integers(1, 255), label="flip")
        damaged = payload
    with pytest.raises(CellFormatError):
        decode_cells(bytes(damaged), DATASET)


def test_cell_format_errors_are_value_errors() -> None:
    assert issubclass(CellFormatError, ValueError)


def test_merging_batches_adds_cells_in_domain_order() -> None:
    first = ingested("2024-02,web,10", "2024-01,chat,5")
    second = ingested("2024-01,chat,7", "2024-01,phone,1")
    merged = merge_cells([first, second], DATASET)
    assert merged.rows() == [
        ("2024-01", "phone", 1, 1),
        ("2024-01", "chat", 2, 12),
        ("2024-02", "web", 1, 10),
    ]
    assert merged.schema == cells_schema(DATASET)


def test_merging_no_batches_gives_empty_cells() -> None:
    assert_frame_equal(merge_cells([], DATASET), empty_cells(DATASET))
