"""Validate an uploaded batch against its dataset's schema and aggregate it into cells.

A batch arrives as CSV (with a header row) or as a JSON array of objects, in one of two forms:

* ``contacts``: one row per contact, one column per dimension, one per declared measure, and
  optionally a ``person`` pseudonym;
* ``cells``: one row per cell, one column per dimension, ``contacts``, and one column per
  measure holding that cell's sum.

Every value is read as text and checked with vectorised Polars expressions against the public
domains and measure bounds of the dataset policy. A batch with any bad row is rejected whole,
with the offending rows listed. A good batch is reduced to cells (one row per combination of
dimension values present, a ``contacts`` count and the clamped measure sums): only these
aggregates are ever stored, and the ``person`` column never leaves this module.

The module is long because it is one pipeline, bytes to cells, in the order a batch passes
through it (reading, columns, rows, aggregation), and each row check keeps its error
message beside its Polars expression so that the two cannot drift apart.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Literal

import polars as pl

from service.json_input import HostileJson, load_json
from service.policy.model import (
    CONTACTS_COLUMN,
    PERSON_COLUMN,
    DatasetPolicy,
    Dimension,
    Measure,
)
from service.store.errors import MAX_LISTED_ERRORS, InvalidBatch, RowError

Form = Literal["contacts", "cells"]

_ROW = "__dpx_row"
_PERSON_KEY = "__dpx_person"
_PERSON_CELL_KEY = "__dpx_person_cell"
_PERSON_RUN = "__dpx_person_run"
_USED_IN_CELL = "__dpx_used_in_cell"
_USED_IN_TOTAL = "__dpx_used_in_total"
_INT64_MAX = 2**63 - 1
_QUOTED_MAX = 40
_LISTED_VALUES_MAX = 12


@dataclass(frozen=True)
class Aggregated:
    """The cells of one accepted batch, and what ingest did to reach them.

    ``cells`` has the dimensions in policy order (Utf8), ``contacts`` and one column per
    measure in policy order (Int64), sorted by the dimensions in domain order. ``rows`` is the
    number of data rows uploaded; ``contacts`` the number of contacts the cells hold;
    ``truncated`` the contacts dropped to enforce the per-person bounds; ``clamped`` the
    measure values moved to their bounds; ``persons`` the distinct pseudonyms seen, or None
    when the upload carried no ``person`` column.

    With a ``person`` column, ``cells`` and ``truncated`` apply the bounds within this batch
    alone; ``person_contacts`` then holds every valid contact in file order (the ``person``
    column, stripped, then the dimensions and the unclamped measures) so that the store can
    apply the bounds again across all batches of the dataset with :func:`bound_contacts`,
    after replacing each pseudonym with its keyed hash. It is never stored.
    """

    cells: pl.DataFrame
    rows: int
    contacts: int
    truncated: int
    clamped: int
    persons: int | None
    person_contacts: pl.DataFrame | None = field(default=None, repr=False)


def parse_batch(
    body: bytes, *, content_type: str, form: Form, dataset: DatasetPolicy
) -> Aggregated:
    """Validate ``body`` as a batch of ``dataset`` in ``form`` and aggregate it into cells.

    Raises ``InvalidBatch`` listing the problems (at most 100, with the true total) when the
    body is not UTF-8 CSV or JSON, its columns do not match the schema, it holds no data rows,
    or any row holds a value outside the public domains or bounds. Nothing is partially
    accepted: either every row is valid or the batch is rejected.
    """
    frame = _read_frame(body, content_type, form, dataset)
    if frame.height == 0:
        raise InvalidBatch([RowError(0, None, "the batch holds no data rows")])
    if form == "contacts":
        return _aggregate_contacts(frame, dataset)
    return _aggregate_cells(frame, dataset)


def cell_columns(dataset: DatasetPolicy) -> list[str]:
    """The column names of a dataset's cells: dimensions, ``contacts``, measures."""
    return [
        *(dimension.name for dimension in dataset.dimensions),
        CONTACTS_COLUMN,
        *(measure.name for measure in dataset.measures),
    ]


# --- reading ---------------------------------------------------------------------------------


def _file_error(reason: str) -> InvalidBatch:
    return InvalidBatch([RowError(0, None, reason)])


def _read_frame(body: bytes, content_type: str, form: Form, dataset: DatasetPolicy) -> pl.DataFrame:
    """Read the body into a frame of Utf8 columns named by the header, in file order, once
    the header has been checked against the columns of ``form``."""
    media_type, _, parameters = content_type.partition(";")
    media_type = media_type.strip().lower()
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            if charset not in ("utf-8", "utf8"):
                raise _file_error(f"charset {charset!r} is not supported; send UTF-8")
    if media_type == "text/csv":
        return _read_csv(body, form, dataset)
    if media_type == "application/json":
        return _read_json(body, form, dataset)
    raise _file_error(
        f"content type {media_type!r} is not supported; send text/csv or application/json"
    )


def _read_csv(body: bytes, form: Form, dataset: DatasetPolicy) -> pl.DataFrame:
    # The header is read as a data row so that duplicate names are seen as written (Polars
    # would rename them). Every value stays text: validation decides what is an integer.
    try:
        raw = pl.read_csv(io.BytesIO(body), has_header=False, infer_schema=False)
    except pl.exceptions.NoDataError:
        raise _file_error("the file is empty; expected a header row and data rows") from None
    except pl.exceptions.PolarsError:
        # Polars' message can quote file content (a pseudonym among it), so it is not passed on.
        raise _file_error(
            "not a well-formed UTF-8 CSV file (every row needs as many fields as the header)"
        ) from None
    header = [(name or "").strip() for name in raw.row(0)]
    _check_columns(header, form, dataset)
    return raw.slice(1).rename(dict(zip(raw.columns, header, strict=True)))


def _read_json(body: bytes, form: Form, dataset: DatasetPolicy) -> pl.DataFrame:
    try:
        # A batch is checked for its shape below, so nesting is bounded by the parser only.
        records = load_json(body, max_depth=None)
    except UnicodeDecodeError:
        raise _file_error("the body is not valid UTF-8") from None
    except HostileJson as error:
        raise _file_error(f"not valid JSON: {error}") from None
    except json.JSONDecodeError as error:
        # JSONDecodeError.msg names the syntax problem only, never the document's content.
        raise _file_error(
            f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(records, list):
        raise _file_error("expected a JSON array of objects")
    if not records:
        raise _file_error("the batch holds no data rows")
    problems = [
        RowError(index, None, "not a JSON object")
        for index, record in enumerate(records, start=1)
        if not isinstance(record, dict)
    ]
    if problems:
        raise InvalidBatch(problems, total=len(problems))
    names = list(dict.fromkeys(chain.from_iterable(records)))
    _check_columns(names, form, dataset)
    # Every value becomes text, as in a CSV file: numbers keep their JSON spelling (so 12.0
    # is not an integer), a missing key or null becomes an empty value.
    return pl.DataFrame(
        [
            pl.Series(name, [record.get(name) for record in records], pl.Utf8, strict=False)
            for name in names
        ]
    )


# --- columns ---------------------------------------------------------------------------------


def _name(name: str) -> str:
    return name if len(name) <= _QUOTED_MAX else name[:_QUOTED_MAX] + "…"


def _check_columns(columns: Sequence[str], form: Form, dataset: DatasetPolicy) -> None:
    """Refuse a header that is not exactly the columns of ``form`` (``person`` optional)."""
    expected = (
        cell_columns(dataset)
        if form == "cells"
        else [
            *(dimension.name for dimension in dataset.dimensions),
            *(measure.name for measure in dataset.measures),
        ]
    )
    optional = {PERSON_COLUMN} if form == "contacts" else set()
    missing = [name for name in expected if name not in columns]
    unknown = [name for name in columns if name not in expected and name not in optional]
    if missing and len(missing) == len(expected):
        # No expected name at all: most likely the first row is data, not a header, and its
        # values (a pseudonym among them) must not be echoed as column names.
        raise _file_error(f"no header row found; expected columns {', '.join(expected)}")
    unnamed = [str(index + 1) for index, name in enumerate(columns) if not name]
    if unnamed:
        raise _file_error(f"header field {', '.join(unnamed)} has no column name")
    duplicates = sorted(name for name, count in Counter(columns).items() if count > 1)
    if duplicates:
        raise _file_error(f"duplicate column names: {', '.join(map(_name, duplicates))}")
    problems: list[RowError] = []
    if missing:
        problems.append(RowError(0, None, f"missing column {', '.join(missing)}"))
    if unknown:
        allowed = ", ".join([*expected, *sorted(optional)])
        problems.append(
            RowError(
                0,
                None,
                f"unknown column {', '.join(map(_name, unknown))}; the {form} form has {allowed}",
            )
        )
    if problems:
        raise InvalidBatch(problems)


# --- rows ------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return repr(value if len(value) <= _QUOTED_MAX else value[:_QUOTED_MAX] + "…")


def _empty(value: str | None) -> bool:
    return value is None or value.strip() == ""


def _domain_reason(dimension: Dimension) -> Callable[[dict[str, Any]], str]:
    values = dimension.values
    if dimension.kind == "month":
        expected = f"{values[0]}..{values[-1]}"

        def month_reason(row: dict[str, Any]) -> str:
            value = row[dimension.name]
            if _empty(value):
                return f"empty; expected a month in {expected}"
            return f"{_quote(value)} is not in {expected}"

        return month_reason

    listed = ", ".join(values[:_LISTED_VALUES_MAX]) + (
        ", …" if len(values) > _LISTED_VALUES_MAX else ""
    )

    def value_reason(row: dict[str, Any]) -> str:
        value = row[dimension.name]
        if _empty(value):
            return f"empty; expected one of {listed}"
        return f"{_quote(value)} is not one of {listed}"

    return value_reason


def _integer_reason(column: str, expected: str) -> Callable[[dict[str, Any]], str]:
    def reason(row: dict[str, Any]) -> str:
        value = row[column]
        if _empty(value):
            return f"empty; expected {expected}"
        return f"{_quote(value)} is not {expected}"

    return reason


def _person_reason(row: dict[str, Any]) -> str:
    # The value is never quoted: it is (or was meant to be) a pseudonym of the privacy unit.
    return "empty; every row needs a person pseudonym when the person column is present"


def _sum_reason(measure: Measure) -> Callable[[dict[str, Any]], str]:
    def reason(row: dict[str, Any]) -> str:
        value = row[measure.name]
        contacts = row[f"{_ROW}_contacts"]
        if row[f"{_ROW}_sum_{measure.name}"] is None:
            return f"{_quote(value) if not _empty(value) else 'empty'} is not an integer sum"
        low, high = measure.lower * contacts, measure.upper * contacts
        return (
            f"sum {value} lies outside {low}..{high} ({measure.lower} to {measure.upper} "
            f"for each of {contacts} contacts)"
        )

    return reason


@dataclass(frozen=True)
class _Check:
    """A per-row condition: ``bad`` is true where the row is rejected for ``column``."""

    column: str
    bad: pl.Expr
    reason: Callable[[dict[str, Any]], str]


def _in_domain(dimension: Dimension) -> pl.Expr:
    return pl.col(dimension.name).is_in(dimension.values).fill_null(False)


def _as_integer(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Int64, strict=False)


def _reject_bad_rows(frame: pl.DataFrame, checks: Sequence[_Check]) -> None:
    """Raise InvalidBatch when any check flags any row; list the first flagged rows."""
    flags = frame.with_row_index(_ROW, offset=1).with_columns(
        [check.bad.alias(f"{_ROW}_bad_{index}") for index, check in enumerate(checks)]
    )
    flag_names = [f"{_ROW}_bad_{index}" for index in range(len(checks))]
    offending = flags.filter(pl.any_horizontal(flag_names))
    if offending.height == 0:
        return
    problems: list[RowError] = []
    for row in offending.head(MAX_LISTED_ERRORS).iter_rows(named=True):
        for flag, check in zip(flag_names, checks, strict=True):
            if row[flag] and len(problems) < MAX_LISTED_ERRORS:
                problems.append(RowError(row[_ROW], check.column, check.reason(row)))
    raise InvalidBatch(problems, total=offending.height)


def _dimension_checks(dataset: DatasetPolicy) -> list[_Check]:
    return [
        _Check(dimension.name, ~_in_domain(dimension), _domain_reason(dimension))
        for dimension in dataset.dimensions
    ]


def _domain_order(dataset: DatasetPolicy) -> list[pl.Expr]:
    """Sort keys that put cells in the order of each dimension's declared domain."""
    return [
        pl.col(dimension.name).cast(pl.Enum(dimension.values)) for dimension in dataset.dimensions
    ]


def _finish_cells(grouped: pl.LazyFrame, dataset: DatasetPolicy) -> pl.DataFrame:
    """Sort cells in domain order, check the sums fit Int64, and give them the cell schema."""
    dimensions = [dimension.name for dimension in dataset.dimensions]
    numbers = [CONTACTS_COLUMN, *(measure.name for measure in dataset.measures)]
    cells = grouped.collect().sort(_domain_order(dataset))
    overflowing = [
        name for name in numbers if cells.select(pl.col(name).abs().max() > _INT64_MAX).item()
    ]
    if overflowing:
        raise _file_error(f"the {', '.join(overflowing)} total exceeds the 64-bit integer range")
    return cells.select(
        *(pl.col(name).cast(pl.Utf8) for name in dimensions),
        *(pl.col(name).cast(pl.Int64) for name in numbers),
    )


def _first_of_each(frame: pl.DataFrame, key: str, limit: int, used: str) -> pl.DataFrame:
    """Keep the first rows of each group of equal ``key`` while the group's earlier rows plus
    its ``used`` column (contacts already counted in earlier batches) stay under ``limit``,
    for a frame in file order; the result is in file order too.

    A stable sort and ranking within runs is several times faster than a window over
    hundreds of thousands of persons, and the result is the same.
    """
    ordered = frame.sort(key, maintain_order=True)
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    starts_group = (pl.col(key) != pl.col(key).shift(1)).fill_null(True)
    group_start = pl.when(starts_group).then(index).forward_fill()
    return ordered.filter(index - group_start + pl.col(used) < limit).sort(_ROW)


def bound_contacts(
    contacts: pl.DataFrame, dataset: DatasetPolicy, *, key: str, prior: pl.DataFrame | None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Truncate each person's contacts to the dataset's bounds, counting what ``prior`` says
    they contributed before; return the kept contacts and what they add to ``prior``.

    ``contacts`` is in file order with the person in column ``key``, the dimensions and the
    measures. ``prior`` (or None for nothing) has ``key``, the dimensions and ``contacts``:
    the contacts already stored per person and cell. A person's first contacts are kept, as
    long as the person's count in the cell stays within ``max_contacts_per_cell`` and their
    count overall within ``max_contacts_per_person``, earlier batches included. The per-cell
    bound is applied first so that a contact it drops does not use up the person's overall
    allowance. The second frame has ``key``, the dimensions and ``contacts`` per person and
    cell of the kept contacts; without a per-cell bound, per person only, with null
    dimensions (a per-cell bound cannot be introduced once data is stored, see
    ``service.store.bounds``, so per-cell counts would never be read).
    """
    dimensions = [dimension.name for dimension in dataset.dimensions]
    per_cell = dataset.max_contacts_per_cell is not None
    frame = contacts.with_row_index(_ROW)
    used = [pl.lit(0, pl.Int64).alias(_USED_IN_CELL), pl.lit(0, pl.Int64).alias(_USED_IN_TOTAL)]
    if prior is not None and prior.height > 0:
        in_total = prior.group_by(key).agg(pl.col(CONTACTS_COLUMN).sum().alias(_USED_IN_TOTAL))
        frame = frame.join(in_total, on=key, how="left", maintain_order="left")
        if per_cell:
            in_cell = prior.group_by([key, *dimensions]).agg(
                pl.col(CONTACTS_COLUMN).sum().alias(_USED_IN_CELL)
            )
            frame = frame.join(in_cell, on=[key, *dimensions], how="left", maintain_order="left")
        else:
            frame = frame.with_columns(used[0])
        frame = frame.with_columns(pl.col(_USED_IN_CELL, _USED_IN_TOTAL).fill_null(0))
    else:
        frame = frame.with_columns(used)
    if dataset.max_contacts_per_cell is not None:
        # One hash for (person, cell); two pairs whose hashes collide are truncated as one,
        # which can only drop contacts, so every real person still stays within the bounds.
        frame = _first_of_each(
            frame.with_columns(pl.struct(key, *dimensions).hash(seed=0).alias(_PERSON_CELL_KEY)),
            _PERSON_CELL_KEY,
            dataset.max_contacts_per_cell,
            _USED_IN_CELL,
        ).drop(_PERSON_CELL_KEY)
    # Runs of one person are found on a 64-bit hash of the key, which sorts several times
    # faster than a 128-bit keyed pseudonym; a collision again only drops contacts.
    frame = _first_of_each(
        frame.with_columns(pl.col(key).hash(seed=0).alias(_PERSON_RUN)),
        _PERSON_RUN,
        dataset.max_contacts_per_person,
        _USED_IN_TOTAL,
    )
    kept = frame.drop(_ROW, _USED_IN_CELL, _USED_IN_TOTAL, _PERSON_RUN)
    if per_cell:
        added = kept.group_by([key, *dimensions]).agg(
            pl.len().cast(pl.Int64).alias(CONTACTS_COLUMN)
        )
    else:
        added = (
            kept.group_by(key)
            .agg(pl.len().cast(pl.Int64).alias(CONTACTS_COLUMN))
            .select(
                key,
                *(pl.lit(None, pl.Utf8).alias(name) for name in dimensions),
                CONTACTS_COLUMN,
            )
        )
    return kept.drop(key), added


def contact_cells(contacts: pl.DataFrame, dataset: DatasetPolicy) -> pl.DataFrame:
    """The cells of valid contacts (dimensions and unclamped measures): a count and the
    clamped measure sums per combination of dimension values present, in domain order."""
    dimensions = [dimension.name for dimension in dataset.dimensions]
    grouped = (
        contacts.lazy()
        .group_by(dimensions)
        .agg(
            pl.len().cast(pl.Int128).alias(CONTACTS_COLUMN),
            *(
                pl.col(m.name).clip(m.lower, m.upper).cast(pl.Int128).sum().alias(m.name)
                for m in dataset.measures
            ),
        )
    )
    return _finish_cells(grouped, dataset)


def _aggregate_contacts(frame: pl.DataFrame, dataset: DatasetPolicy) -> Aggregated:
    has_person = PERSON_COLUMN in frame.columns
    checks = _dimension_checks(dataset)
    checks += [
        _Check(
            measure.name,
            _as_integer(measure.name).is_null(),
            _integer_reason(measure.name, "an integer"),
        )
        for measure in dataset.measures
    ]
    if has_person:
        checks.append(
            _Check(
                PERSON_COLUMN,
                pl.col(PERSON_COLUMN).is_null() | (pl.col(PERSON_COLUMN).str.strip_chars() == ""),
                _person_reason,
            )
        )
    _reject_bad_rows(frame, checks)

    dimensions = [dimension.name for dimension in dataset.dimensions]
    contacts = frame.select(
        *dimensions,
        *(_as_integer(measure.name) for measure in dataset.measures),
    )
    clamped = 0
    if dataset.measures:
        clamped = int(
            contacts.select(
                pl.sum_horizontal(
                    ((pl.col(m.name) < m.lower) | (pl.col(m.name) > m.upper)).sum()
                    for m in dataset.measures
                )
            ).item()
        )
    persons: int | None = None
    person_contacts: pl.DataFrame | None = None
    if has_person:
        # Surrounding blanks are not part of a pseudonym, so "p1" and "p1 " cannot pass as
        # two people.
        person_contacts = contacts.select(
            frame.get_column(PERSON_COLUMN).str.strip_chars().alias(PERSON_COLUMN),
            *dimensions,
            *(measure.name for measure in dataset.measures),
        )
        # Within this batch a 64-bit hash stands for the pseudonym. Two persons whose hashes
        # collide are truncated as one: that can only drop contacts. The privacy unit is the
        # person: truncation makes the declared contribution bounds true of the cells, so the
        # sensitivity derived from them holds. Kept contacts are the first in file order.
        keyed = contacts.with_columns(
            person_contacts.get_column(PERSON_COLUMN).hash(seed=0).alias(_PERSON_KEY)
        )
        persons = keyed.get_column(_PERSON_KEY).n_unique()
        contacts, _ = bound_contacts(keyed, dataset, key=_PERSON_KEY, prior=None)
    cells = contact_cells(contacts, dataset)
    total = int(cells.get_column(CONTACTS_COLUMN).sum())
    return Aggregated(
        cells=cells,
        rows=frame.height,
        contacts=total,
        truncated=frame.height - total,
        clamped=clamped,
        persons=persons,
        person_contacts=person_contacts,
    )


def _aggregate_cells(frame: pl.DataFrame, dataset: DatasetPolicy) -> Aggregated:
    contacts = _as_integer(CONTACTS_COLUMN)
    contacts_ok = contacts.is_not_null() & (contacts >= 0)
    checks = _dimension_checks(dataset)
    checks.append(
        _Check(
            CONTACTS_COLUMN,
            ~contacts_ok,
            _integer_reason(CONTACTS_COLUMN, "a non-negative integer"),
        )
    )
    for measure in dataset.measures:
        # A cell's sum must be one that that many clamped contacts could produce. Int128
        # keeps bound * contacts exact for any Int64 count.
        total = _as_integer(measure.name).cast(pl.Int128)
        count = contacts.cast(pl.Int128)
        outside = (total < count * pl.lit(measure.lower, pl.Int128)) | (
            total > count * pl.lit(measure.upper, pl.Int128)
        )
        checks.append(
            _Check(
                measure.name,
                total.is_null() | (contacts_ok & outside).fill_null(False),
                _sum_reason(measure),
            )
        )
    _reject_bad_rows(
        frame.with_columns(
            contacts.alias(f"{_ROW}_contacts"),
            *(_as_integer(m.name).alias(f"{_ROW}_sum_{m.name}") for m in dataset.measures),
        ),
        checks,
    )

    dimensions = [dimension.name for dimension in dataset.dimensions]
    # Rows naming the same cell are added up; cells with no contacts carry nothing (their
    # sums are 0 by the bound check) and are dropped, as they are in the contacts form.
    grouped = (
        frame.lazy()
        .select(
            *dimensions,
            contacts.cast(pl.Int128),
            *(_as_integer(m.name).cast(pl.Int128) for m in dataset.measures),
        )
        .group_by(dimensions)
        .agg(pl.col(CONTACTS_COLUMN).sum(), *(pl.col(m.name).sum() for m in dataset.measures))
        .filter(pl.col(CONTACTS_COLUMN) > 0)
    )
    cells = _finish_cells(grouped, dataset)
    return Aggregated(
        cells=cells,
        rows=frame.height,
        contacts=int(cells.get_column(CONTACTS_COLUMN).sum()),
        truncated=0,
        clamped=0,
        persons=None,
    )
