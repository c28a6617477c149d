"""The dashboard's SVG charts: well-formed, faithful to the data, and escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api.charts import HEIGHT, WIDTH, Line, StepLine, band_chart, burndown_chart

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
