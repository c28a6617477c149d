"""A release's rows as a table, the one shape shared by every download and frame.

The columns are the query's group-by dimensions in its order, then ``value``, ``ci_low``
and ``ci_high``; the CSV download (``GET /v1/releases/{id}`` with ``Accept: text/csv``,
rendered by the service with :func:`release_csv`) adds ``release_id``, so rows of several
downloads can be put together and still be traced to their signed release.

A dimension whose every value is a calendar month ``YYYY-MM`` is a month: frames hold it
as a date (the first day of the month); CSV and HTML keep the text the release carries.
"""

from __future__ import annotations

import csv
import html
import io
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
MEASURE_COLUMNS = ("value", "ci_low", "ci_high")
CSV_MEDIA_TYPE = "text/csv"


def group_by(document: Mapping[str, Any]) -> list[str]:
    """The release's group-by dimensions, in the query's order."""
    query = document.get("query") or {}
    return [str(name) for name in query.get("group_by") or []]


def rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The release's rows: the group-by values, ``value`` and ``ci`` [low, high]."""
    found: list[dict[str, Any]] = document.get("rows") or []
    return found


def month_dimensions(document: Mapping[str, Any]) -> list[str]:
    """The group-by dimensions whose every value is a month ``YYYY-MM``."""
    return [
        name
        for name in group_by(document)
        if rows(document) and all(MONTH.fullmatch(str(row.get(name, ""))) for row in rows(document))
    ]


def month_start(month: str) -> date:
    """``"2024-03"`` as ``date(2024, 3, 1)``."""
    matched = MONTH.fullmatch(month)
    if matched is None:
        raise ValueError(f"{month!r} is not a month YYYY-MM")
    return date(int(matched.group(1)), int(matched.group(2)), 1)


def release_columns(document: Mapping[str, Any], *, months_as_dates: bool) -> dict[str, list[Any]]:
    """The table column by column: dimensions, ``value``, ``ci_low``, ``ci_high``.

    With ``months_as_dates``, month dimensions hold :class:`datetime.date` values.
    """
    dimensions = group_by(document)
    months = set(month_dimensions(document)) if months_as_dates else set()
    columns: dict[str, list[Any]] = {name: [] for name in (*dimensions, *MEASURE_COLUMNS)}
    for row in rows(document):
        for name in dimensions:
            columns[name].append(month_start(row[name]) if name in months else row[name])
        low, high = row["ci"]
        columns["value"].append(row["value"])
        columns["ci_low"].append(low)
        columns["ci_high"].append(high)
    return columns


def release_csv(document: Mapping[str, Any]) -> str:
    """The release as CSV (RFC 4180: a header row, CRLF line ends): dimensions, ``value``,
    ``ci_low``, ``ci_high`` and ``release_id``, one line per row of the release."""
    columns = release_columns(document, months_as_dates=False)
    release_id = str(document.get("release_id", ""))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow([*columns, "release_id"])
    for line in zip(*columns.values(), strict=True):
        writer.writerow([*line, release_id])
    return text.getvalue()


def release_html(document: Mapping[str, Any]) -> str:
    """The release as an HTML table for notebooks, every text escaped.

    The caption names the release, its dataset and its question; the interval column is
    headed with its confidence level.
    """
    query = document.get("query") or {}
    accuracy = document.get("accuracy") or {}
    alpha = float(accuracy.get("alpha", query.get("alpha", 0.05)))
    question = str(query.get("statistic", ""))
    if query.get("measure"):
        question += f" of {query['measure']}"
    if group_by(document):
        question += " by " + ", ".join(group_by(document))
    caption = " · ".join(
        part for part in (document.get("release_id"), document.get("dataset"), question) if part
    )
    head = "".join(f"<th>{html.escape(name)}</th>" for name in group_by(document))
    head += f"<th>value</th><th>{1 - alpha:.0%} interval</th>"
    body = []
    for row in rows(document):
        low, high = row["ci"]
        cells = "".join(f"<td>{html.escape(str(row[name]))}</td>" for name in group_by(document))
        cells += f"<td>{html.escape(str(row['value']))}</td>"
        cells += f"<td>{html.escape(str(low))} … {html.escape(str(high))}</td>"
        body.append(f"<tr>{cells}</tr>")
    return (
        f"<table><caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
