"""The dashboard's SVG charts: well-formed, faithful to the data, and escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api.charts import (
    HEIGHT,
    WIDTH,
    Bar,
    Line,
    StepLine,
    band_chart,
    bar_chart,
    burndown_chart,
    value_range,
)

SVG = "{http://www.w3.org/2000/svg}"
MONTHS = [f"2024-{m:02d}" for m in range(1, 13)]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - our own output, parsed to check its structure


def points(element: ET.Element) -> list[tuple[float, float]]:
    pairs = element.attrib["points"].split()
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in pairs)]


def test_band_chart_draws_one_point_per_month_and_a_band_around_the_line() -> None:
    values = [float(100 + 10 * i) for i in range(12)]
    band = [(v - 30, v + 30) for v in values]
    root = parse(band_chart(MONTHS, [Line("count", values, band)], title="count by month"))
    polyline = root.find(f"{SVG}polyline")
    polygon = root.find(f"{SVG}polygon")
    assert polyline is not None and polygon is not None
    line = points(polyline)
    outline = points(polygon)
    assert len(line) == 12
    assert len(outline) == 24
    # Rising values are drawn rising (SVG y grows downwards), left to right.
    assert [x for x, _ in line] == sorted(x for x, _ in line)
    assert line[0][1] > line[-1][1]
    # The band's upper edge lies above the line and its lower edge below, month by month.
    upper, lower = outline[:12], outline[12:][::-1]
    for (lx, ly), (ux, uy), (bx, by) in zip(line, upper, lower, strict=True):
        assert lx == ux == bx
        assert uy < ly < by


def test_band_chart_tooltips_give_value_and_interval() -> None:
    svg = band_chart(["2024-01"], [Line("count", [412], [(352, 472)])], title="t")
    titles = [t.text for t in parse(svg).iter(f"{SVG}title")]
    assert "2024-01: 412 (352 to 472)" in titles


def test_band_chart_shows_negative_noisy_values_and_intervals() -> None:
    svg = band_chart(["a", "b"], [Line("count", [-5, 3], [(-40, 30), (-32, 38)])], title="t")
    ys = [y for _, y in points(parse(svg).find(f"{SVG}polygon"))]  # type: ignore[arg-type]
    assert all(0 <= y <= HEIGHT for y in ys)


def test_several_lines_get_a_legend_and_distinct_colours() -> None:
    lines = [Line("chat", [1, 2]), Line("phone", [3, 4]), Line("email", [5, 6])]
    root = parse(band_chart(["2024-01", "2024-02"], lines, title="t"))
    strokes = {p.attrib["stroke"] for p in root.iter(f"{SVG}polyline")}
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert len(strokes) == 3
    assert {"chat", "phone", "email"} <= set(texts)


def test_text_is_escaped() -> None:
    hostile = '<script>alert("x")</script>&'
    svg = band_chart([hostile], [Line(hostile, [1])], title=hostile)
    assert "<script>" not in svg
    root = parse(svg)
    assert root.find(f"{SVG}title").text == hostile  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("categories", "lines", "message"),
    [
        (["a", "b"], [Line("x", [1.0])], "has 1 values for 2 categories"),
        (["a"], [Line("x", [1.0], [(0.0, 1.0), (0.0, 2.0)])], "has 2 intervals for 1 categories"),
        (["a"], [Line("x", [float("nan")])], "must be finite"),
    ],
)
def test_band_chart_rejects_inconsistent_series(
    categories: list[str], lines: list[Line], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        band_chart(categories, lines, title="t")


def test_empty_chart_says_so() -> None:
    root = parse(band_chart([], [], title="nothing"))
    assert root.find(f"{SVG}polyline") is None
    assert "nothing to draw" in [t.text for t in root.iter(f"{SVG}text")]


@given(
    st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=1, max_size=40),
    st.floats(min_value=0, max_value=1e6),
)
def test_band_chart_stays_inside_its_canvas(values: list[float], error: float) -> None:
    categories = [f"c{i}" for i in range(len(values))]
    band = [(v - error, v + error) for v in values]
    root = parse(band_chart(categories, [Line("v", values, band)], title="t"))
    line = points(root.find(f"{SVG}polyline"))  # type: ignore[arg-type]
    assert len(line) == len(values)
    outline = points(root.find(f"{SVG}polygon"))  # type: ignore[arg-type]
    for x, y in line + outline:
        assert 0 <= x <= WIDTH
        assert 0 <= y <= HEIGHT


def test_burndown_steps_down_at_each_charge_and_runs_to_the_end() -> None:
    steps = [(T0 + timedelta(hours=1), 1.5), (T0 + timedelta(hours=3), 1.0)]
    root = parse(
        burndown_chart(
            [StepLine("no-police", 2.0, steps)],
            start=T0,
            end=T0 + timedelta(hours=4),
            title="uk",
            unit="epsilon",
        )
    )
    line = points(root.find(f"{SVG}polyline"))  # type: ignore[arg-type]
    # start, (drop at each charge: before and after), end
    assert len(line) == 6
    ys = [y for _, y in line]
    assert ys == sorted(ys)  # remaining never rises: y only grows downwards
    assert line[1][0] == line[2][0] and line[3][0] == line[4][0]
    assert line[0][0] < line[1][0] < line[3][0] < line[5][0]


def test_burndown_of_an_untouched_grant_is_flat() -> None:
    root = parse(
        burndown_chart(
            [StepLine("g", 1.0, [])], start=T0, end=T0 + timedelta(days=1), title="t", unit="rho"
        )
    )
    line = points(root.find(f"{SVG}polyline"))  # type: ignore[arg-type]
    assert len(line) == 2 and line[0][1] == line[1][1]


def test_burndown_rejects_a_window_that_ends_before_it_starts() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        burndown_chart([], start=T0, end=T0 - timedelta(seconds=1), title="t", unit="epsilon")


def _y_of(svg: str, label: str) -> float:
    """The y of the grid line whose axis label reads ``label``."""
    root = parse(svg)
    for text in root.iter(f"{SVG}text"):
        if text.text == label and text.attrib["text-anchor"] == "end":
            return float(text.attrib["y"]) - 4
    raise AssertionError(f"no axis label {label!r}")


def test_bar_chart_draws_a_bar_and_a_whisker_per_category_from_zero() -> None:
    bars = [Bar("phone", 412, (352, 472)), Bar("chat", 120, (60, 180)), Bar("web", 0, (0, 60))]
    svg = bar_chart(bars, title="count by channel", y_label="count")
    root = parse(svg)
    rects = [r for r in root.iter(f"{SVG}rect") if r.attrib.get("class") == "bar"]
    whiskers = [w for w in root.iter(f"{SVG}line") if w.attrib.get("class") == "whisker"]
    assert len(rects) == len(whiskers) == 3
    zero = _y_of(svg, "0")
    for rect, whisker, bar in zip(rects, whiskers, bars, strict=True):
        # Each bar stands on zero; its whisker spans exactly its interval.
        assert float(rect.attrib["y"]) + float(rect.attrib["height"]) == pytest.approx(
            zero, abs=0.2
        )
        low, high = float(whisker.attrib["y1"]), float(whisker.attrib["y2"])
        assert high < float(rect.attrib["y"]) < low or bar.value == 0
        assert low - high > 0
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "phone: 412 (352 to 472)" in titles
    assert {"phone", "chat", "web"} <= {t.text for t in root.iter(f"{SVG}text")}


def test_large_counts_get_an_axis_cut_above_zero_that_says_so() -> None:
    # 50,000 +- 150: on a zero-based axis the whisker would be under 1% of the plot's height.
    bars = [Bar("phone", 50_210, (50_060, 50_360)), Bar("chat", 49_700, (49_550, 49_850))]
    svg = bar_chart(bars, title="t", y_label="count")
    root = parse(svg)
    assert value_range([49_550, 50_360]).zero_based is False
    assert not [r for r in root.iter(f"{SVG}rect") if r.attrib.get("class") == "bar"]
    assert len([c for c in root.iter(f"{SVG}circle") if c.attrib.get("class") == "dot"]) == 2
    whisker = next(w for w in root.iter(f"{SVG}line") if w.attrib.get("class") == "whisker")
    plot_height = HEIGHT - 48 - 28
    assert float(whisker.attrib["y1"]) - float(whisker.attrib["y2"]) > plot_height / 5
    labels = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert any("not 0" in label and label.startswith("count (axis from 49,") for label in labels)


@pytest.mark.parametrize(
    ("numbers", "zero_based"),
    [([352, 472, 60, 180], True), ([-40, 30], True), ([300, 700], True), ([900, 1000], False)],
)
def test_the_value_axis_starts_at_zero_unless_that_hides_the_data(
    numbers: list[float], zero_based: bool
) -> None:
    axis = value_range(numbers)
    assert axis.zero_based is zero_based
    assert axis.low <= min(numbers) and max(numbers) <= axis.high


def test_bar_chart_panels_share_one_axis() -> None:
    axis = value_range([0, 400])
    small = bar_chart([Bar("a", 10, (0, 40))], title="p1", axis=axis)
    large = bar_chart([Bar("a", 380, (340, 400))], title="p2", axis=axis)
    assert _y_of(small, "400") == _y_of(large, "400")


def test_bar_chart_rejects_an_interval_that_ends_before_it_starts() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        bar_chart([Bar("a", 1, (5, 2))], title="t")


@pytest.mark.parametrize(
    ("span", "labels"),
    [
        (timedelta(minutes=20), {"2026-03-01", "00:00:00 UTC", "00:20:00 UTC"}),
        (timedelta(hours=30), {"2026-03-01", "00:00 UTC", "2026-03-02", "06:00 UTC"}),
        (timedelta(days=10), {"2026-03-01", "2026-03-11"}),
    ],
)
def test_burndown_time_axis_carries_dates(span: timedelta, labels: set[str]) -> None:
    svg = burndown_chart(
        [StepLine("g", 1.0, [(T0 + span / 2, 0.5)])], start=T0, end=T0 + span, title="t", unit="rho"
    )
    texts = {t.text for t in parse(svg).iter(f"{SVG}text")}
    assert labels <= texts
