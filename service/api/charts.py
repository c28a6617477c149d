"""Charts of the dashboard as inline SVG, drawn on the server.

Pure functions from series to an SVG string: no JavaScript, no chart library, no network,
so the dashboard works on an air-gapped deployment and under a strict Content-Security-
Policy (colours are presentation attributes, never ``style``). Every piece of text that
reaches the SVG is XML-escaped here, because the templates insert the result unescaped.

Three kinds of chart:

* ``band_chart`` — one value per category (a release grouped by month) drawn as a line,
  with its confidence interval as a shaded polygon around it;
* ``bar_chart`` — one value per category of any other grouping, a bar (or, on an axis that
  does not start at zero, a dot) with its confidence interval as a whisker; panels of a
  two-dimensional release share one value range (``value_range``) so they compare;
* ``burndown_chart`` — budget remaining over time, one step line per account, falling at
  each charge and moving at each change of the grant (or the dataset's global cap).

The value axis starts at zero unless that would squeeze the data into a sliver of the plot
(large counts with narrow intervals): then it spans the data alone and says so in its label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

WIDTH = 720
HEIGHT = 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 40, 28, 48
_LEGEND_ROW = 18
_LEGEND_PER_ROW = 3
_MAX_X_LABELS = 12
# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


@dataclass(frozen=True)
class Line:
    """A series over categories: one value per category, optionally a (low, high) band."""

    label: str
    values: Sequence[float]
    band: Sequence[tuple[float, float]] | None = None


@dataclass(frozen=True)
class Bar:
    """One category's released value and its (low, high) interval."""

    category: str
    value: float
    interval: tuple[float, float]


@dataclass(frozen=True)
class ValueRange:
    """The span of a value axis; ``zero_based`` is False when it was cut above zero."""

    low: float
    high: float
    zero_based: bool


@dataclass(frozen=True)
class StepLine:
    """Budget remaining over time: ``start`` until the first step, then each step's value."""

    label: str
    start: float
    steps: Sequence[tuple[datetime, float]]


@dataclass(frozen=True)
class _Frame:
    """The plot area and the mapping from data to pixels."""

    x0: float
    x1: float
    y0: float
    y1: float
    low: float
    high: float

    @property
    def bottom(self) -> float:
        return HEIGHT - _BOTTOM

    def y(self, value: float) -> float:
        span = self.high - self.low
        return self.bottom - (value - self.low) / span * (self.bottom - _TOP)

    def x(self, fraction: float) -> float:
        return _LEFT + fraction * (WIDTH - _LEFT - _RIGHT)


def band_chart(
    categories: Sequence[str], lines: Sequence[Line], *, title: str, y_label: str = ""
) -> str:
    """An SVG line chart over ``categories`` with a confidence band per line.

    Each line becomes one ``<polyline>`` with exactly ``len(categories)`` points, a circle
    per point whose tooltip gives the value and interval, and, when it has a band, one
    ``<polygon>`` spanning the band. Raises ``ValueError`` when a line's length differs from
    the categories or a value is not finite.
    """
    for line in lines:
        if len(line.values) != len(categories):
            raise ValueError(
                f"line {line.label!r} has {len(line.values)} values for "
                f"{len(categories)} categories"
            )
        if line.band is not None and len(line.band) != len(categories):
            raise ValueError(
                f"line {line.label!r} has {len(line.band)} intervals for "
                f"{len(categories)} categories"
            )
    numbers = [v for line in lines for v in line.values]
    numbers += [v for line in lines for pair in (line.band or ()) for v in pair]
    _check_finite(numbers)
    if not categories or not lines:
        return _empty(title, "nothing to draw")
    axis = value_range(numbers)
    frame = _frame_of(axis)
    count = len(categories)

    def x_of(index: int) -> float:
        return frame.x(0.5 if count == 1 else index / (count - 1))

    parts = [_axes(frame, title, _axis_label(y_label, axis))]
    every = max(1, math.ceil(count / _MAX_X_LABELS))
    for index, category in enumerate(categories):
        if index % every == 0:
            parts.append(_text(x_of(index), frame.bottom + 16, category, anchor="middle"))
    for number, line in enumerate(lines):
        colour = PALETTE[number % len(PALETTE)]
        if line.band is not None:
            upper = [(x_of(i), frame.y(high)) for i, (_low, high) in enumerate(line.band)]
            lower = [(x_of(i), frame.y(low)) for i, (low, _high) in enumerate(line.band)]
            parts.append(
                f'<polygon class="band" points="{_points(upper + lower[::-1])}" '
                f'fill="{colour}" fill-opacity="0.18" stroke="none"/>'
            )
        points = [(x_of(i), frame.y(v)) for i, v in enumerate(line.values)]
        parts.append(
            f'<polyline class="series" points="{_points(points)}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        for index, (px, py) in enumerate(points):
            tip = f"{categories[index]}: {_number(line.values[index])}"
            if line.band is not None:
                low, high = line.band[index]
                tip += f" ({_number(low)} to {_number(high)})"
            if len(lines) > 1:
                tip = f"{line.label}, {tip}"
            parts.append(
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}">'
                f"<title>{escape(tip)}</title></circle>"
            )
    parts.append(_legend([line.label for line in lines]) if len(lines) > 1 else "")
    return _svg(title, parts, legend_rows=_legend_rows(len(lines)) if len(lines) > 1 else 0)


def bar_chart(
    bars: Sequence[Bar],
    *,
    title: str,
    y_label: str = "",
    axis: ValueRange | None = None,
) -> str:
    """An SVG chart of one value per category with its interval as a whisker.

    On a zero-based axis each value is a ``rect.bar`` from zero; on an axis cut above zero
    (see :func:`value_range`) a bar's length would mislead, so each value is a dot. Every
    category has one ``line.whisker`` from its interval's low to its high end, and a
    tooltip with value and interval. ``axis`` shares one range across small multiples.
    Raises ``ValueError`` when a number is not finite or an interval does not hold its value.
    """
    numbers = [v for bar in bars for v in (bar.value, *bar.interval)]
    _check_finite(numbers)
    for bar in bars:
        if not bar.interval[0] <= bar.interval[1]:
            raise ValueError(f"the interval of {bar.category!r} ends before it starts")
    if not bars:
        return _empty(title, "nothing to draw")
    axis = axis or value_range(numbers)
    frame = _frame_of(axis)
    slot = (frame.x1 - frame.x0) / len(bars)
    width = max(2.0, min(slot * 0.6, 60.0))
    parts = [_axes(frame, title, _axis_label(y_label, axis))]
    every = max(1, math.ceil(len(bars) / _MAX_X_LABELS))
    base = frame.y(max(axis.low, min(0.0, axis.high)))
    for index, bar in enumerate(bars):
        centre = frame.x0 + slot * (index + 0.5)
        if index % every == 0:
            parts.append(_text(centre, frame.bottom + 16, bar.category, anchor="middle"))
        top = frame.y(bar.value)
        tip = escape(
            f"{bar.category}: {_number(bar.value)} "
            f"({_number(bar.interval[0])} to {_number(bar.interval[1])})"
        )
        if axis.zero_based:
            parts.append(
                f'<rect class="bar" x="{centre - width / 2:.1f}" y="{min(top, base):.1f}" '
                f'width="{width:.1f}" height="{abs(base - top):.1f}" fill="{PALETTE[0]}" '
                f'fill-opacity="0.55"><title>{tip}</title></rect>'
            )
        else:
            parts.append(
                f'<circle class="dot" cx="{centre:.1f}" cy="{top:.1f}" r="4" '
                f'fill="{PALETTE[0]}"><title>{tip}</title></circle>'
            )
        low, high = frame.y(bar.interval[0]), frame.y(bar.interval[1])
        cap = min(width / 2, 8.0)
        parts.append(
            f'<line class="whisker" x1="{centre:.1f}" x2="{centre:.1f}" y1="{low:.1f}" '
            f'y2="{high:.1f}" stroke="#000000" stroke-width="1.5"/>'
            f'<line x1="{centre - cap:.1f}" x2="{centre + cap:.1f}" y1="{low:.1f}" '
            f'y2="{low:.1f}" stroke="#000000" stroke-width="1.5"/>'
            f'<line x1="{centre - cap:.1f}" x2="{centre + cap:.1f}" y1="{high:.1f}" '
            f'y2="{high:.1f}" stroke="#000000" stroke-width="1.5"/>'
        )
    return _svg(title, parts, legend_rows=0)


def value_range(numbers: Sequence[float]) -> ValueRange:
    """The value axis for ``numbers``: from zero, unless zero lies further below the data
    than the data spans (then an interval of 150 on a count of 50,000 would be a hairline)."""
    _check_finite(numbers)
    if not numbers:
        return ValueRange(0.0, 1.0, True)
    low, high = min(numbers), max(numbers)
    if low <= 0 <= high or (low > 0 and low <= high - low) or (high < 0 and -high <= high - low):
        ticks = _nice_ticks(min(low, 0.0), max(high, 0.0))
        return ValueRange(ticks[0], ticks[-1], True)
    ticks = _nice_ticks(low, high)
    return ValueRange(ticks[0], ticks[-1], False)


def _axis_label(label: str, axis: ValueRange) -> str:
    if axis.zero_based:
        return label
    cut = f"axis from {_number(axis.low)}, not 0"
    return f"{label} ({cut})" if label else cut


def burndown_chart(
    lines: Sequence[StepLine], *, start: datetime, end: datetime, title: str, unit: str
) -> str:
    """An SVG step chart of budget remaining from ``start`` to ``end``, one line per account.

    Each line is flat at ``start`` value until its first step, drops at each step's time and
    stays at its last value until ``end``; steps outside the window are clamped to it.
    Raises ``ValueError`` when ``end`` is before ``start`` or a value is not finite.
    """
    if end < start:
        raise ValueError("the chart ends before it starts")
    numbers = [line.start for line in lines] + [v for line in lines for _t, v in line.steps]
    _check_finite(numbers)
    if not lines:
        return _empty(title, "no budgets")
    frame = _frame(numbers, include_zero=True)
    span = (end - start).total_seconds() or 1.0

    def x_at(at: datetime) -> float:
        seconds = (min(max(at, start), end) - start).total_seconds()
        return frame.x(seconds / span)

    parts = [_axes(frame, title, unit)]
    shown_date = ""
    for tick in _time_ticks(start, end):
        # A tick shows its date where the date changes (the first tick always), and within
        # two days its time too (UTC, as stored; with seconds within an hour).
        day = tick.strftime("%Y-%m-%d")
        clock = _clock(tick, end - start)
        rows = ([day] if day != shown_date else []) + ([clock] if clock else [])
        shown_date = day
        for row, text in enumerate(rows):
            parts.append(_text(x_at(tick), frame.bottom + 14 + 13 * row, text, anchor="middle"))
    for number, line in enumerate(lines):
        colour = PALETTE[number % len(PALETTE)]
        value = line.start
        points = [(x_at(start), frame.y(value))]
        for at, after in sorted(line.steps, key=lambda step: step[0]):
            points.append((x_at(at), frame.y(value)))
            points.append((x_at(at), frame.y(after)))
            value = after
        points.append((x_at(end), frame.y(value)))
        parts.append(
            f'<polyline class="series" points="{_points(points)}" fill="none" '
            f'stroke="{colour}" stroke-width="2"/>'
        )
        parts.append(
            f'<circle cx="{points[-1][0]:.1f}" cy="{points[-1][1]:.1f}" r="3" '
            f'fill="{colour}"><title>{escape(line.label)}: {_number(value)} {escape(unit)}'
            " remaining</title></circle>"
        )
    parts.append(_legend([line.label for line in lines]))
    return _svg(title, parts, legend_rows=_legend_rows(len(lines)))


def _check_finite(numbers: Sequence[float]) -> None:
    if not all(math.isfinite(v) for v in numbers):
        raise ValueError("chart values must be finite numbers")


def _frame_of(axis: ValueRange) -> _Frame:
    return _Frame(_LEFT, WIDTH - _RIGHT, _TOP, HEIGHT - _BOTTOM, axis.low, axis.high)


def _frame(numbers: Sequence[float], *, include_zero: bool) -> _Frame:
    low = min([*numbers, 0.0] if include_zero else numbers)
    high = max([*numbers, 0.0] if include_zero else numbers)
    ticks = _nice_ticks(low, high)
    return _Frame(_LEFT, WIDTH - _RIGHT, _TOP, HEIGHT - _BOTTOM, ticks[0], ticks[-1])


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    # A span too small to divide into ticks (a flat series, or subnormal values) is widened.
    if high - low <= 1e-9 * max(1.0, abs(high), abs(low)):
        high, low = (high + 1, low - 1) if abs(high) > 1e-9 else (1.0, 0.0)
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    last = math.ceil(high / step) * step
    return [first + i * step for i in range(round((last - first) / step) + 1)]


def _axes(frame: _Frame, title: str, y_label: str) -> str:
    parts = [_text(_LEFT, 16, title, anchor="start", size=13, weight="bold")]
    for tick in _nice_ticks(frame.low, frame.high):
        y = frame.y(tick)
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#d0d0d0" stroke-width="1"/>'
        )
        parts.append(_text(_LEFT - 6, y + 4, _number(tick), anchor="end"))
    parts.append(
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{frame.bottom}" '
        f'stroke="#606060" stroke-width="1"/>'
    )
    zero = frame.y(0.0) if frame.low <= 0 <= frame.high else frame.bottom
    parts.append(
        f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{zero:.1f}" y2="{zero:.1f}" '
        f'stroke="#606060" stroke-width="1"/>'
    )
    if y_label:
        parts.append(
            f'<text x="14" y="{(frame.bottom + _TOP) / 2:.1f}" font-size="11" '
            f'text-anchor="middle" fill="#333333" '
            f'transform="rotate(-90 14 {(frame.bottom + _TOP) / 2:.1f})">'
            f"{escape(y_label)}</text>"
        )
    return "".join(parts)


def _legend_rows(count: int) -> int:
    return math.ceil(count / _LEGEND_PER_ROW)


def _legend(labels: Sequence[str]) -> str:
    parts = []
    column_width = (WIDTH - _LEFT) / _LEGEND_PER_ROW
    for index, label in enumerate(labels):
        row, column = divmod(index, _LEGEND_PER_ROW)
        x = _LEFT + column * column_width
        y = HEIGHT + row * _LEGEND_ROW + 4
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="12" height="4" fill="{colour}"/>')
        parts.append(_text(x + 18, y, label, anchor="start"))
    return "".join(parts)


def _time_ticks(start: datetime, end: datetime, count: int = 4) -> list[datetime]:
    if end == start:
        return [start]
    step = (end - start) / count
    return [start + step * i for i in range(count + 1)]


def _clock(at: datetime, span: timedelta) -> str:
    if span >= timedelta(days=2):
        return ""
    return at.strftime("%H:%M:%S UTC" if span < timedelta(hours=1) else "%H:%M UTC")


def _svg(title: str, parts: Sequence[str], *, legend_rows: int) -> str:
    height = HEIGHT + legend_rows * _LEGEND_ROW
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{WIDTH}" '
        f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" font-family="sans-serif">'
        f"<title>{escape(title)}</title>"
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="#ffffff"/>'
        + "".join(parts)
        + "</svg>"
    )


def _empty(title: str, message: str) -> str:
    return _svg(
        title,
        [
            _text(_LEFT, 16, title, anchor="start", size=13, weight="bold"),
            _text(WIDTH / 2, HEIGHT / 2, message, anchor="middle"),
        ],
        legend_rows=0,
    )


def _text(
    x: float, y: float, content: str, *, anchor: str, size: int = 11, weight: str = "normal"
) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" '
        f'text-anchor="{anchor}" fill="#333333">{escape(content)}</text>'
    )


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.3g}"
