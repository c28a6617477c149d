"""The byte form of a batch's cells: the plaintext that envelope encryption protects.

Cells are written as compressed Arrow IPC behind a short header: a magic, a format version and
a SHA-256 digest of the IPC bytes. The digest catches accidental corruption (authenticity is
the job of the AES-GCM envelope around these bytes), and it keeps damaged input away from the
Arrow reader. Decoding checks the exact schema the dataset policy gives today: cells written
under an older schema are refused rather than silently misread.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

import polars as pl
import pyarrow as pa
import pyarrow.ipc

from service.policy.model import CONTACTS_COLUMN, DatasetPolicy

CELLS_MAGIC = b"DPXC"
CELLS_VERSION = 1
_VERSION_AT = len(CELLS_MAGIC)
_DIGEST_AT = _VERSION_AT + 1
_BODY_AT = _DIGEST_AT + hashlib.sha256().digest_size


class CellFormatError(ValueError):
    """Bytes that are not cells of this dataset in a format this code can read."""


def cells_schema(dataset: DatasetPolicy) -> pl.Schema:
    """The schema of a dataset's cells: dimensions (Utf8), ``contacts``, measures (Int64)."""
    return pl.Schema(
        [
            *((dimension.name, pl.Utf8()) for dimension in dataset.dimensions),
            (CONTACTS_COLUMN, pl.Int64()),
            *((measure.name, pl.Int64()) for measure in dataset.measures),
        ]
    )


def empty_cells(dataset: DatasetPolicy) -> pl.DataFrame:
    """A frame with no cells and the dataset's cell schema."""
    return pl.DataFrame(schema=cells_schema(dataset))


def encode_cells(cells: pl.DataFrame) -> bytes:
    """Serialize cells (as ``parse_batch`` returns them) to versioned, compressed bytes."""
    buffer = io.BytesIO()
    cells.write_ipc(buffer, compression="zstd")
    body = buffer.getvalue()
    return CELLS_MAGIC + bytes([CELLS_VERSION]) + hashlib.sha256(body).digest() + body


def decode_cells(data: bytes, dataset: DatasetPolicy) -> pl.DataFrame:
    """Read cells written by ``encode_cells``; raise CellFormatError unless the version is
    known, the bytes are intact, and the schema is exactly the dataset's (names, order and
    types)."""
    return decode_frame(data, cells_schema(dataset), f"dataset {dataset.id}")


def decode_frame(data: bytes, expected: pl.Schema, owner: str) -> pl.DataFrame:
    """Read a frame written by ``encode_cells`` whose schema must be exactly ``expected``;
    ``owner`` names what it belongs to in the error."""
    if not data.startswith(CELLS_MAGIC):
        raise CellFormatError("not a dpx cells payload")
    version = data[_VERSION_AT:_DIGEST_AT]
    if version != bytes([CELLS_VERSION]):
        found = version[0] if version else "none"
        raise CellFormatError(f"cells format version {found} is not supported")
    body = data[_BODY_AT:]
    if len(data) < _BODY_AT or hashlib.sha256(body).digest() != data[_DIGEST_AT:_BODY_AT]:
        raise CellFormatError("cells payload is damaged: its digest does not match")
    try:
        # pyarrow validates the IPC structure and raises; Polars' own reader can abort the
        # process on malformed input.
        table = pyarrow.ipc.open_file(pa.BufferReader(body)).read_all()
        table.validate(full=True)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise CellFormatError("cells payload is not readable Arrow IPC") from error
    frame = pl.from_arrow(table)
    if not isinstance(frame, pl.DataFrame):
        raise CellFormatError("cells payload is not a table")
    if frame.schema != expected:
        raise CellFormatError(
            f"cells schema {_describe(frame.schema)} does not match {owner}: "
            f"expected {_describe(expected)}"
        )
    return frame


def merge_cells(batches: Iterable[pl.DataFrame], dataset: DatasetPolicy) -> pl.DataFrame:
    """Add up the cells of several batches: one row per cell, in domain order."""
    frames = [empty_cells(dataset), *batches]
    dimensions = [dimension.name for dimension in dataset.dimensions]
    numbers = [CONTACTS_COLUMN, *(measure.name for measure in dataset.measures)]
    return (
        pl.concat(frames, how="vertical")
        .group_by(dimensions)
        .agg(pl.col(name).sum() for name in numbers)
        .sort(
            [
                # A value that left the domain after upload sorts last rather than failing.
                pl.col(dimension.name).cast(pl.Enum(dimension.values), strict=False)
                for dimension in dataset.dimensions
            ],
            nulls_last=True,
        )
    )


def _describe(schema: pl.Schema) -> str:
    return "(" + ", ".join(f"{name}: {dtype}" for name, dtype in schema.items()) + ")"
