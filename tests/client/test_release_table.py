"""A release as a table, with no service needed: Polars and pandas frames whose months are
dates, the CSV a partner downloads, and the HTML a notebook shows, every text escaped."""

from __future__ import annotations

import csv
import io
import sys
from datetime import date
from html.parser import HTMLParser
from typing import Any

import pandas as pd
import polars as pl
import pytest
from dpx_client import Release

DOCUMENT: dict[str, Any] = {
    "release_id": "rel_0001",
    "dataset": "uk-helpline-2024",
    "query": {"statistic": "count", "group_by": ["month", "channel"], "alpha": 0.1},
    "rows": [
        {"month": "2024-01", "channel": "chat", "value": 412, "ci": [352, 472]},
        {"month": "2024-01", "channel": "phone", "value": -3, "ci": [0, 57]},
        {"month": "2024-12", "channel": "chat", "value": 17, "ci": [0, 77]},
    ],
    "accuracy": {"alpha": 0.1, "max_error": 60},
}


def test_polars_frame_has_months_as_dates_and_one_row_per_cell() -> None:
    frame = Release(DOCUMENT).to_polars()

    assert frame.columns == ["month", "channel", "value", "ci_low", "ci_high"]
    assert frame.schema["month"] == pl.Date
    assert frame.schema["channel"] == pl.String
    assert frame["month"].to_list() == [date(2024, 1, 1), date(2024, 1, 1), date(2024, 12, 1)]
    assert frame["value"].to_list() == [412, -3, 17]
    assert frame["ci_low"].to_list() == [352, 0, 0]
    assert frame["ci_high"].to_list() == [472, 57, 77]


def test_pandas_frame_has_months_as_datetimes() -> None:
    frame = Release(DOCUMENT).to_pandas()

    assert list(frame.columns) == ["month", "channel", "value", "ci_low", "ci_high"]
    assert frame["month"].dtype.kind == "M"
    assert list(frame["month"]) == [
        pd.Timestamp("2024-01-01"),
        pd.Timestamp("2024-01-01"),
        pd.Timestamp("2024-12-01"),
    ]
    assert list(frame["channel"]) == ["chat", "phone", "chat"]
    assert list(frame["value"]) == [412, -3, 17]


def test_a_dimension_is_a_month_only_if_every_value_is_one() -> None:
    document = {
        "query": {"group_by": ["period"]},
        "rows": [
            {"period": "2024-01", "value": 1, "ci": [0, 2]},
            {"period": "2024-13", "value": 1, "ci": [0, 2]},
        ],
    }

    assert Release(document).to_polars().schema["period"] == pl.String


def test_a_release_without_groups_is_one_row() -> None:
    release = Release({"query": {"group_by": []}, "rows": [{"value": 3, "ci": [1, 5]}]})

    assert release.to_polars().rows() == [(3, 1, 5)]
    assert release.to_pandas().shape == (1, 3)


@pytest.mark.parametrize(("method", "extra"), [("to_pandas", "pandas"), ("to_polars", "polars")])
def test_a_missing_frame_library_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, method: str, extra: str
) -> None:
    # None in sys.modules makes the import fail as if the library were not installed.
    monkeypatch.setitem(sys.modules, extra, None)

    with pytest.raises(ImportError, match=rf"pip install 'dpx-client\[{extra}\]'"):
        getattr(Release(DOCUMENT), method)()


def test_csv_has_the_dimensions_interval_and_release_id_of_every_row() -> None:
    text = Release(DOCUMENT).to_csv()

    assert list(csv.reader(io.StringIO(text))) == [
        ["month", "channel", "value", "ci_low", "ci_high", "release_id"],
        ["2024-01", "chat", "412", "352", "472", "rel_0001"],
        ["2024-01", "phone", "-3", "0", "57", "rel_0001"],
        ["2024-12", "chat", "17", "0", "77", "rel_0001"],
    ]
    assert text.count("\r\n") == 4


def test_csv_quotes_what_needs_quoting() -> None:
    document = {
        "release_id": "rel_2",
        "query": {"group_by": ["source"]},
        "rows": [{"source": 'a, "b"', "value": 1.5, "ci": [0.25, 2.75]}],
    }

    text = Release(document).to_csv()

    assert text.splitlines()[1] == '"a, ""b""",1.5,0.25,2.75,rel_2'
    assert list(csv.reader(io.StringIO(text)))[1][0] == 'a, "b"'


class _Cells(HTMLParser):
    """The text of every th and td, and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.caption = ""
        self._into: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("th", "td", "caption"):
            self._into = tag
            if tag != "caption":
                self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        self._into = None

    def handle_data(self, data: str) -> None:
        if self._into == "caption":
            self.caption += data
        elif self._into:
            self.cells[-1] += data


def test_a_notebook_shows_the_release_as_a_table() -> None:
    page = _Cells()
    page.feed(Release(DOCUMENT)._repr_html_())

    assert page.tags.count("tr") == 1 + len(DOCUMENT["rows"])
    assert page.cells[:4] == ["month", "channel", "value", "90% interval"]
    assert page.cells[4:8] == ["2024-01", "chat", "412", "352 … 472"]
    assert page.caption == "rel_0001 · uk-helpline-2024 · count by month, channel"


def test_the_notebook_table_escapes_every_text() -> None:
    hostile = "<script>alert(1)</script>"
    document = {
        "release_id": "rel_<b>",
        "dataset": "a&b",
        "query": {"statistic": "count", "group_by": ["<i>dim</i>"]},
        "rows": [{"<i>dim</i>": hostile, "value": 1, "ci": [0, 2]}],
    }

    markup = Release(document)._repr_html_()
    page = _Cells()
    page.feed(markup)

    assert "<script>" not in markup and "<b>" not in markup and "<i>" not in markup
    assert set(page.tags) == {"table", "caption", "thead", "tbody", "tr", "th", "td"}
    assert hostile in page.cells
    assert page.caption.startswith("rel_<b> · a&b")
