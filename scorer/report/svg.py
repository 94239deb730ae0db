"""Hand-drawn SVG: scales, axes, text and legends shared by the report's charts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from html import escape

from scorer.leaderboard_model import Status
from scorer.report.text import usd

STATUS_COLOURS: dict[Status, str] = {
    Status.CHAMPION: "#24292f",
    Status.READY: "#1a7f37",
    Status.COLLECTING: "#0969da",
    Status.WORSE: "#cf222e",
    Status.GUARDRAIL: "#bc4c00",
    Status.PRICE_UNKNOWN: "#8250df",
    Status.PAUSED: "#6e7781",
    Status.NO_DATA: "#8c959f",
}

CHAR_WIDTH = 6.8  # average advance of a 12px sans-serif character, for label layout


@dataclass(frozen=True)
class Scale:
    """A linear map from the data interval [lo, hi] onto the pixel interval [start, end].

    Values outside [lo, hi] are clamped to its ends, so an infinite bound lands on the edge.
    """

    lo: float
    hi: float
    start: float
    end: float
    whole: bool = False  # ticks at whole numbers only (counts)

    def __call__(self, value: float) -> float:
        clamped = min(max(value, self.lo), self.hi)
        return self.start + (clamped - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    @property
    def step(self) -> float:
        return _nice_step(self.hi - self.lo, whole=self.whole)

    def ticks(self) -> list[float]:
        """Round values inside [lo, hi], about five of them."""
        step = self.step
        first = math.ceil(self.lo / step - 1e-9)
        last = math.floor(self.hi / step + 1e-9)
        return [i * step for i in range(first, last + 1)]


def _nice_step(span: float, count: int = 5, whole: bool = False) -> float:
    """A 1, 2, 2.5 or 5 × 10ᵏ step that cuts `span` into about `count` pieces; `whole`: no 2.5, none below 1."""
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multiples if raw <= m * magnitude * (1 + 1e-9))
    return max(step, 1.0) if whole else step


def nice_domain(values: Iterable[float], pad: float = 0.06) -> tuple[float, float]:
    """A padded [lo, hi] around the finite `values`, widened to round tick values.

    A single value (or none) still gets a usable, non-empty domain around it.
    """
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi == lo:
        half = abs(lo) * 0.5 or 1.0
        lo, hi = lo - half, hi + half
    margin = (hi - lo) * pad
    lo, hi = lo - margin, hi + margin
    step = _nice_step(hi - lo)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def _step_decimals(step: float) -> int:
    """Decimals a tick label needs so that neighbouring ticks differ (2.5 steps need one more)."""
    places = max(0, -math.floor(math.log10(step)))
    return places + (1 if round(step / 10 ** -places, 6) % 1 else 0)


def money_tick(value: float, step: float, signed: bool = False) -> str:
    """A money axis label: whole dollars for steps of a dollar or more, else as many decimals as the step needs."""
    return usd(value, signed=signed, decimals=_step_decimals(step) if step >= 1 else max(2, _step_decimals(step)))


def number_tick(value: float, step: float) -> str:
    return f"{value:.{_step_decimals(step)}f}"


def svg_text(x: float, y: float, content: str, cls: str = "", anchor: str = "start") -> str:
    """An SVG text element; `content` is escaped here, so callers pass raw data."""
    css = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{css}>{escape(content)}</text>'


def fit_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with an ellipsis, for a fixed chart margin (the table has it in full)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def svg_line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="{cls}"/>'


def x_axis(
    scale: Scale, y: float, top: float, title: str, label: Callable[[float], str], axis_from: float | None = None
) -> list[str]:
    """Grid lines, tick labels under `y`, and the axis title (which carries the unit).

    The axis line runs from `axis_from` (default: the scale's start), so that it still meets
    the other axis when the plotted range is inset from it.
    """
    parts = [svg_line(scale.start if axis_from is None else axis_from, y, scale.end, y, "axis")]
    for tick in scale.ticks():
        x = scale(tick)
        parts += [svg_line(x, top, x, y, "grid"), svg_text(x, y + 16, label(tick), "tick", "middle")]
    parts.append(svg_text((scale.start + scale.end) / 2, y + 38, title, "axis-title", "middle"))
    return parts


def y_axis(
    scale: Scale, x: float, right: float, title: str, label: Callable[[float], str], gap: float = 52,
    axis_from: float | None = None,
) -> list[str]:
    """Grid lines, tick labels left of `x`, and the rotated axis title (which carries the unit).

    The axis line runs from `axis_from` (default: the scale's start), as in `x_axis`.
    """
    parts = [svg_line(x, scale.start if axis_from is None else axis_from, x, scale.end, "axis")]
    for tick in scale.ticks():
        y = scale(tick)
        parts += [svg_line(x, y, right, y, "grid"), svg_text(x - 6, y + 4, label(tick), "tick", "end")]
    middle = (scale.start + scale.end) / 2
    parts.append(
        f'<text transform="translate({x - gap:.1f},{middle:.1f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-title">{escape(title)}</text>'
    )
    return parts


def svg_document(width: float, height: float, label: str, parts: Iterable[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" role="img" '
        f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>"
    )


def _swatch(x: float, y: float, colour: str, text: str) -> tuple[list[str], float]:
    """A coloured dot with its legend text; returns the parts and the x where the next one may start."""
    parts = [f'<circle cx="{x + 5:.1f}" cy="{y - 4:.1f}" r="5" fill="{colour}"/>', svg_text(x + 14, y, text, "legend")]
    return parts, x + 14 + len(text) * CHAR_WIDTH + 18


def status_legend(statuses: Iterable[Status], x: float, y: float) -> list[str]:
    """One swatch per status present, so colours never stand without words."""
    parts: list[str] = []
    for status in dict.fromkeys(statuses):
        swatch, x = _swatch(x, y, STATUS_COLOURS[status], status.value)
        parts += swatch
    return parts
