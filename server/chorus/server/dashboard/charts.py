"""Server-rendered SVG charts: no JavaScript, no external fonts or images.

Every chart is an `<svg role="img">` labelled by its own `<title>` and `<desc>`, sized by a
viewBox so it scales to the page width; colours and type come from the dashboard's CSS classes
(so the Content-Security-Policy can forbid inline styles). Charts are a view of numbers the page
also shows as a table; they never carry information the table lacks.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from chorus.server.front.numbers import format_compact

Formatter = Callable[[float], str]

# A narrow canvas keeps text legible when a phone shrinks the chart; a wide one fills a desktop page.
# `responsive` draws a chart at both and CSS shows the one that suits the screen.
WIDTH = 440
WIDE = 1000
_LABEL_RIGHT = 112  # team or bucket labels end here
_PLOT_LEFT = 120
_ROW = 30
_AXIS = 28
_MAX_LABEL = 14  # 14px text: 14 characters fit the 112 pixels left of the bars
_MAX_NOTE = 42


@dataclass(frozen=True, slots=True)
class Interval:
    """A released value and its 95% interval, cut to the range [0, ceiling] the value can take.

    Every statistic here is at least 0 (and adoption at most 1, a mean at most the metric's
    bound), so cutting the interval there still covers the true value whenever the uncut one
    does: it is post-processing, and it keeps a wide interval from dwarfing the chart.
    """

    value: float
    ci95: float
    ceiling: float = math.inf

    @property
    def low(self) -> float:
        return max(self.value - self.ci95, 0.0)

    @property
    def high(self) -> float:
        return min(self.value + self.ci95, self.ceiling)


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of a bar chart: an interval, or a note (e.g. why the team is suppressed)."""

    label: str
    interval: Interval | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class BudgetBar:
    """One team-window's budget: the cap, what is spent, and the caption shown beside the bar."""

    label: str
    cap: float
    spent: float
    caption: str


def format_number(value: float) -> str:
    """Integers with thousands separators; fractions to a precision that suits their size."""
    if not math.isfinite(value):
        return "n/a"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if abs(value) >= 1:
        return f"{value:,.2f}"
    return f"{value:.3g}"


def format_percent(value: float) -> str:
    """A ratio as a percentage with one decimal, e.g. 0.4231 -> "42.3%"."""
    return f"{value * 100:.1f}%" if math.isfinite(value) else "n/a"


class _Scale:
    """Linear map from a data domain, widened to round tick steps, onto a pixel range."""

    def __init__(self, values: Sequence[float], start: float, end: float,
                 include: Sequence[float] = (0.0,), ticks: int = 5) -> None:
        low = min([*values, *include])
        high = max([*values, *include])
        if high - low < 1e-12:
            high = low + 1.0
        raw = (high - low) / ticks
        magnitude = 10 ** math.floor(math.log10(raw))
        self.step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
        self.low = math.floor(low / self.step + 1e-9) * self.step
        self.high = math.ceil(high / self.step - 1e-9) * self.step
        self._start = start
        self._end = end

    def __call__(self, value: float) -> float:
        return self._start + (value - self.low) / (self.high - self.low) * (self._end - self._start)

    def ticks(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [self.low + i * self.step for i in range(count + 1)]


def _label(x: float, y: float, text: str, cls: str, anchor: str = "start", limit: int = _MAX_LABEL) -> str:
    """A text element; a shortened label keeps the full text as its tooltip title."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    tip = f"<title>{escape(text)}</title>" if shown != text else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">'
            f"{tip}{escape(shown)}</text>")


def _svg(chart_id: str, title: str, desc: str, height: float, body: list[str], width: int = WIDTH) -> Markup:
    size = "chart-wide" if width > WIDTH else "chart-narrow"
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {size}" viewBox="0 0 {width} {height:.0f}" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" focusable="false">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(desc)}</desc>' + "".join(body) + "</svg>")


def _whisker_h(scale: _Scale, interval: Interval, y: float) -> str:
    x0, x1 = scale(interval.low), scale(interval.high)
    return (f'<path class="ci" d="M{x0:.1f},{y:.1f}H{x1:.1f}M{x0:.1f},{y - 6:.1f}v12'
            f'M{x1:.1f},{y - 6:.1f}v12"/>')


def _x_axis(scale: _Scale, top: float, bottom: float, fmt: Formatter) -> list[str]:
    parts = []
    for tick in scale.ticks():
        x = scale(tick)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>')
        parts.append(_label(x, bottom + 16, fmt(tick), "tick", "middle"))
    zero = scale(0.0)
    if scale.low <= 0 <= scale.high:
        parts.append(f'<line class="zero" x1="{zero:.1f}" y1="{top:.1f}" x2="{zero:.1f}" y2="{bottom:.1f}"/>')
    return parts


def responsive(draw: Callable[..., Markup], chart_id: str, *args: object, **kwargs: object) -> Markup:
    """The chart drawn for a phone and for a desktop page; CSS shows one of them."""
    return Markup(draw(chart_id, *args, **kwargs) + draw(f"{chart_id}-wide", *args, width=WIDE, **kwargs))


def interval_bars(chart_id: str, title: str, desc: str, rows: Sequence[Bar], *,
                  fmt: Formatter = format_compact, include: Sequence[float] = (0.0,), width: int = WIDTH) -> Markup:
    """Horizontal bars, one per row, each with its 95% interval as a whisker and its value."""
    intervals = [r.interval for r in rows if r.interval is not None]
    plot_right = width - 72
    scale = _Scale([v for i in intervals for v in (i.low, i.high)], _PLOT_LEFT, plot_right, include)
    top = 8.0
    bottom = top + _ROW * max(len(rows), 1)
    body = _x_axis(scale, top, bottom, fmt)
    for index, row in enumerate(rows):
        mid = top + _ROW * index + _ROW / 2
        body.append(_label(_LABEL_RIGHT, mid + 4, row.label, "label", "end"))
        if row.interval is None:
            body.append(_label(_PLOT_LEFT + 6, mid + 4, row.note or "no value", "note", limit=_MAX_NOTE))
            continue
        zero, end = scale(0.0), scale(row.interval.value)
        body.append(f'<rect class="bar" x="{min(zero, end):.1f}" y="{mid - 8:.1f}" '
                    f'width="{abs(end - zero):.1f}" height="16"/>')
        body.append(_whisker_h(scale, row.interval, mid))
        body.append(_label(plot_right + 8, mid + 4, fmt(row.interval.value), "value"))
    return _svg(chart_id, title, desc, bottom + _AXIS, body, width)


def bucket_labels(edges: Sequence[int]) -> list[str]:
    """Buckets (-inf, e0), [e0, e1), ..., [en, +inf) as ranges: "under 25K", "25K-100K", ..., "400K+"."""
    if not edges:
        return ["all"]
    return ([f"under {format_compact(edges[0])}"]
            + [f"{format_compact(a)}-{format_compact(b)}" for a, b in itertools.pairwise(edges)]
            + [f"{format_compact(edges[-1])}+"])


def histogram_bars(chart_id: str, title: str, desc: str, buckets: Sequence[Interval], edges: Sequence[int], *,
                   fmt: Formatter = format_compact, width: int = WIDTH) -> Markup:
    """Vertical bars per bucket (people per usage range) with 95% interval whiskers, each bar
    labelled with its range ("25K-100K")."""
    top, bottom, left, right = 12.0, 180.0, 52.0, width - 10.0
    scale = _Scale([v for i in buckets for v in (i.low, i.high)], bottom, top)
    body = []
    for tick in scale.ticks():
        y = scale(tick)
        body.append(f'<line class="grid" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}"/>')
        body.append(_label(left - 6, y + 4, fmt(tick), "tick", "end"))
    slot = (right - left) / max(len(buckets), 1)
    labels = bucket_labels(edges)
    for index, label in enumerate(labels[:len(buckets)]):
        # A narrow canvas alternates two rows of labels so that neighbours never collide.
        row = index % 2 if slot < 80 else 0
        body.append(_label(left + slot * (index + 0.5), bottom + 18 + 14 * row, label, "tick", "middle"))
    zero = scale(0.0)
    for index, interval in enumerate(buckets):
        cx = left + slot * (index + 0.5)
        y = scale(interval.value)
        body.append(f'<rect class="bar" x="{cx - slot * 0.3:.1f}" y="{min(y, zero):.1f}" '
                    f'width="{slot * 0.6:.1f}" height="{abs(zero - y):.1f}"/>')
        y0, y1 = scale(interval.low), scale(interval.high)
        body.append(f'<path class="ci" d="M{cx:.1f},{y0:.1f}V{y1:.1f}M{cx - 6:.1f},{y0:.1f}h12'
                    f'M{cx - 6:.1f},{y1:.1f}h12"/>')
    body.append(f'<line class="zero" x1="{left:.1f}" y1="{zero:.1f}" x2="{right:.1f}" y2="{zero:.1f}"/>')
    return _svg(chart_id, title, desc, bottom + _AXIS + 20, body, width)


def trend_panel(chart_id: str, title: str, desc: str, windows: Sequence[str],
                points: Sequence[Interval | None], domain: Sequence[float], *,
                fmt: Formatter = format_compact, width: int = WIDTH,
                empty: str = "nothing released in these windows") -> Markup:
    """Value per window as a line inside its 95% interval band; a gap where nothing was released.
    A window standing alone (one window, or neighbours without values) has no band to draw: its
    interval is a whisker, so it never disappears.

    `domain` holds values the y-axis must cover, so small multiples can share one scale.
    """
    top, bottom, left, right = 10.0, 140.0, 60.0, width - 36.0
    scale = _Scale(list(domain), bottom, top)
    step = (right - left) / max(len(windows) - 1, 1)

    def x(index: int) -> float:
        return left + step * index if len(windows) > 1 else (left + right) / 2

    body = []
    for tick in scale.ticks():
        y = scale(tick)
        body.append(f'<line class="grid" x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}"/>')
        body.append(_label(left - 6, y + 4, fmt(tick), "tick", "end"))
    every = max(1, math.ceil(len(windows) / 3))  # about three window ids fit across
    last = len(windows) - 1
    for index, window in enumerate(windows):
        # The last window is always labelled, so a regular label too close before it is dropped.
        if (index % every == 0 and last - index >= every) or index == last:
            # The outermost labels align inward so that they stay inside the canvas.
            anchor = "start" if index == 0 and last else "end" if index == last and last else "middle"
            body.append(_label(x(index), bottom + 18, window, "tick", anchor))
    for run in _runs(points):
        if len(run) == 1:
            (i, p), = run
            y0, y1 = scale(p.low), scale(p.high)
            body.append(f'<path class="ci" d="M{x(i):.1f},{y0:.1f}V{y1:.1f}M{x(i) - 6:.1f},{y0:.1f}h12'
                        f'M{x(i) - 6:.1f},{y1:.1f}h12"/>')
            body.append(f'<circle class="point" cx="{x(i):.1f}" cy="{scale(p.value):.1f}" r="3.5"/>')
            continue
        upper = " ".join(f"{x(i):.1f},{scale(p.high):.1f}" for i, p in run)
        lower = " ".join(f"{x(i):.1f},{scale(p.low):.1f}" for i, p in reversed(run))
        body.append(f'<polygon class="band" points="{upper} {lower}"/>')
        line = " ".join(f"{x(i):.1f},{scale(p.value):.1f}" for i, p in run)
        body.append(f'<polyline class="line" points="{line}"/>')
        body.extend(f'<circle class="point" cx="{x(i):.1f}" cy="{scale(p.value):.1f}" r="3.5"/>'
                    for i, p in run)
    if all(p is None for p in points):
        body.append(_label((left + right) / 2, (top + bottom) / 2, empty, "note", "middle", limit=_MAX_NOTE))
    return _svg(chart_id, title, desc, bottom + _AXIS + 4, body, width)


def _runs(points: Sequence[Interval | None]) -> list[list[tuple[int, Interval]]]:
    """Consecutive released points, split where a window has no value."""
    runs: list[list[tuple[int, Interval]]] = [[]]
    for index, point in enumerate(points):
        if point is None:
            runs.append([])
        else:
            runs[-1].append((index, point))
    return [run for run in runs if run]


def budget_bars(chart_id: str, title: str, desc: str, rows: Sequence[BudgetBar], *, width: int = WIDTH) -> Markup:
    """Per row, the spent part of the cap filled and the remainder outlined."""
    plot_right = width - 130
    top = 8.0
    body = []
    for index, row in enumerate(rows):
        mid = top + _ROW * index + _ROW / 2
        full = plot_right - _PLOT_LEFT
        spent = full * min(max(row.spent / row.cap, 0.0), 1.0) if row.cap > 0 else 0.0
        body.append(_label(_LABEL_RIGHT, mid + 4, row.label, "label", "end"))
        for cls, length in (("cap", full), ("spent", spent)):
            body.append(f'<rect class="{cls}" x="{_PLOT_LEFT}" y="{mid - 8:.1f}" '
                        f'width="{length:.1f}" height="16"/>')
        body.append(_label(plot_right + 8, mid + 4, row.caption, "value"))
    return _svg(chart_id, title, desc, top + _ROW * max(len(rows), 1) + 8, body, width)
