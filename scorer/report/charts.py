"""The report's three charts: quality vs cost with the Pareto frontier, net difference vs
the champion with interval bars, and cumulative evidence inside its confidence band.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from scorer.leaderboard_model import EvidencePoint, Interval, Leaderboard, Status, VariantRow
from scorer.report.text import (
    challengers, fmt_pairs, fmt_quality, fmt_time, format_interval, is_finite, ordered_rows, short_names, usd,
)
from scorer.report.svg import (
    CHAR_WIDTH, STATUS_COLOURS, Scale, fit_text, money_tick, nice_domain, number_tick, status_legend, svg_document,
    svg_line, svg_text, x_axis, y_axis,
)

# ── chart 1: quality vs cost, with the Pareto frontier ───────────────────────────────────


def pareto_frontier(rows: Iterable[VariantRow]) -> list[VariantRow]:
    """The variants no other variant dominates on cost per 1k requests and mean quality, cheapest first.

    One variant dominates another when it is no more expensive and no worse, and strictly
    better on one of the two; equal variants do not dominate each other. Rows without a
    cost or a quality have no place on the chart and are left out.
    """
    placed = [r for r in rows if is_finite(r.cost_per_1k_usd) and is_finite(r.mean_quality)]

    def dominates(a: VariantRow, b: VariantRow) -> bool:
        no_worse = a.cost_per_1k_usd <= b.cost_per_1k_usd and a.mean_quality >= b.mean_quality
        better = a.cost_per_1k_usd < b.cost_per_1k_usd or a.mean_quality > b.mean_quality
        return no_worse and better

    frontier = [r for r in placed if not any(dominates(other, r) for other in placed)]
    return sorted(frontier, key=lambda r: (r.cost_per_1k_usd, -r.mean_quality))


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle in pixels, for keeping chart labels apart."""

    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def inside(self, other: Box) -> bool:
        return other.x0 <= self.x0 and self.x1 <= other.x1 and other.y0 <= self.y0 and self.y1 <= other.y1


def _label_box(x: float, y: float, anchor: str, text: str) -> Box:
    width = len(text) * CHAR_WIDTH
    left = {"start": x, "middle": x - width / 2, "end": x - width}[anchor]
    return Box(left - 2, y - 12, left + width + 2, y + 4)


def place_labels(
    points: Sequence[tuple[float, float, str]], area: Box, obstacles: Sequence[Box] = ()
) -> list[tuple[float, float, str]]:
    """Where to write each point's label: (x, y, text-anchor), greedily, so labels don't collide.

    Each label takes the first of eight positions around its point whose box stays inside
    `area` and overlaps no marker, no obstacle (e.g. a line) and no label placed before
    it; when none is free, the position to the right is used anyway.
    """
    taken = [Box(x - 8, y - 8, x + 8, y + 8) for x, y, _ in points] + list(obstacles)
    offsets = [
        (10, 4, "start"), (-10, 4, "end"), (0, -12, "middle"), (0, 21, "middle"),
        (8, -10, "start"), (8, 19, "start"), (-8, -10, "end"), (-8, 19, "end"),
    ]
    placed = []
    for x, y, text in points:

        def free(candidate: tuple[float, float, str]) -> bool:
            box = _label_box(*candidate, text=text)
            return box.inside(area) and not any(box.overlaps(other) for other in taken)

        candidates = [(x + dx, y + dy, anchor) for dx, dy, anchor in offsets]
        choice = next(filter(free, candidates), candidates[0])
        taken.append(_label_box(*choice, text=text))
        placed.append(choice)
    return placed


def _polyline_boxes(points: Sequence[tuple[float, float]], spacing: float = 6) -> list[Box]:
    """Small boxes along a polyline, so that labels can keep off it."""
    boxes = []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / spacing))
        for i in range(steps + 1):
            x, y = x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps
            boxes.append(Box(x - 2, y - 2, x + 2, y + 2))
    return boxes


def _marker(x: float, y: float, row: VariantRow, on_frontier: bool, tooltip: str) -> str:
    """A diamond for the champion, a circle otherwise; hollow when another variant dominates it."""
    colour = STATUS_COLOURS[row.status]
    fill = colour if on_frontier else "#ffffff"
    paint = f'fill="{fill}" stroke="{colour}" stroke-width="2.5"'
    title = f"<title>{escape(tooltip)}</title>"
    if row.role == "champion":
        d = f"M{x:.1f},{y - 8:.1f} L{x + 8:.1f},{y:.1f} L{x:.1f},{y + 8:.1f} L{x - 8:.1f},{y:.1f} Z"
        return f'<path d="{d}" {paint}>{title}</path>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6.5" {paint}>{title}</circle>'


def _quality_scale(qualities: Sequence[float], top: float, bottom: float) -> Scale:
    """A y scale around the qualities, kept inside [0, 1] where quality lives."""
    lo, hi = nice_domain(qualities, pad=0.15)
    clamped_lo, clamped_hi = max(0.0, lo), min(1.0, hi)
    return Scale(clamped_lo, clamped_hi, bottom, top) if clamped_lo < clamped_hi else Scale(lo, hi, bottom, top)


PLOT_INSET = 14
"""Pixels between the axes and the nearest point a scatter plots, so no marker sits on an
axis or its corner (a free variant of quality 0 would otherwise)."""


def quality_cost_chart(board: Leaderboard) -> str:
    """Scatter of mean quality against cost per 1k requests, with the Pareto frontier dashed."""
    rows = [r for r in ordered_rows(board) if is_finite(r.cost_per_1k_usd) and is_finite(r.mean_quality)]
    if not rows:
        return empty_note("No variant has both a cost and a quality yet, so there is nothing to plot.")
    width, height, left, right, top, bottom = 960, 450, 90, 930, 60, 390
    x_lo, x_hi = nice_domain([0.0] + [r.cost_per_1k_usd for r in rows], pad=0.1)
    x = Scale(max(0.0, x_lo), x_hi, left + PLOT_INSET, right)  # costs are never negative
    y = _quality_scale([r.mean_quality for r in rows], top, bottom - PLOT_INSET)
    frontier = {r.version_id for r in pareto_frontier(rows)}
    names = short_names(board.rows)
    parts = x_axis(x, bottom, top, "cost per 1,000 requests (USD) →", lambda v: money_tick(v, x.step), axis_from=left)
    parts += y_axis(y, left, right, "mean quality (0–1) →", lambda v: number_tick(v, y.step), axis_from=bottom)
    line = [(x(r.cost_per_1k_usd), y(r.mean_quality)) for r in pareto_frontier(rows)]
    parts.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in line)}" class="frontier"/>')
    points = [(x(r.cost_per_1k_usd), y(r.mean_quality), r) for r in rows]
    for px, py, row in points:
        tip = f"{row.version_id}: quality {fmt_quality(row.mean_quality)}, {usd(row.cost_per_1k_usd)} per 1k requests"
        parts.append(_marker(px, py, row, row.version_id in frontier, tip))
    named = [(px, py, names[row.version_id]) for px, py, row in points]
    area = Box(left, top - 8, right, bottom)
    for (lx, ly, anchor), (_, _, name) in zip(place_labels(named, area, _polyline_boxes(line)), named):
        parts.append(svg_text(lx, ly, name, "label", anchor))
    parts += status_legend((r.status for r in rows), left, 18)
    parts += _frontier_legend(left, 40)
    chart = svg_document(width, height, "mean quality against cost per 1,000 requests", parts)
    plotted = {r.version_id for r in rows}
    missing = [names[r.version_id] for r in board.rows if r.version_id not in plotted]
    return chart + (small_note(f"Not plotted (no cost or quality yet): {', '.join(missing)}.") if missing else "")


def _frontier_legend(x: float, y: float) -> list[str]:
    return [
        svg_line(x, y - 4, x + 28, y - 4, "frontier"),
        svg_text(x + 34, y, "Pareto frontier · filled = on it, hollow = beaten · ◆ = champion", "legend"),
    ]


# ── chart 2: net difference vs the champion ──────────────────────────────────────────────


def _interval_bar(scale: Scale, y: float, mean: float, interval: Interval, colour: str, tooltip: str) -> list[str]:
    """A thick bar from lower to upper with a dot at the mean; arrowheads where a bound is off-scale.

    A missing bound is drawn as unbounded, which is what it means.
    """
    lower = interval.lower if interval.lower is not None else -math.inf
    upper = interval.upper if interval.upper is not None else math.inf
    x0, x1, xm = scale(lower), scale(upper), scale(mean)
    parts = [
        f'<line x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="{colour}" class="bar">'
        f"<title>{escape(tooltip)}</title></line>",
        f'<circle cx="{xm:.1f}" cy="{y:.1f}" r="5.5" fill="#ffffff" stroke="{colour}" stroke-width="2.5"/>',
    ]
    for bound, edge, direction in ((lower, scale.lo, -1), (upper, scale.hi, 1)):
        if bound < scale.lo or bound > scale.hi or math.isinf(bound):
            tip = scale(edge) + 8 * direction
            parts.append(f'<path d="M{tip:.1f},{y:.1f} l{-9 * direction},-7 v14 Z" fill="{colour}"/>')
    return parts


def net_difference_chart(board: Leaderboard) -> str:
    """Horizontal interval bars, one per challenger, against the zero and min_effect lines."""
    rows = [r for r in challengers(board) if r.comparison is not None]
    if not rows:
        return empty_note("No challenger has paired evidence yet: nothing is compared with the champion.")
    names = short_names(board.rows)
    width, left, right, top, row_height = 960, 190, 690, 46, 48
    bottom = top + row_height * len(rows)
    nets = [r.comparison.net for r in rows if r.comparison]
    finite = [v for net in nets for v in (net.mean, net.lower, net.upper) if is_finite(v)]
    x = Scale(*nice_domain([0.0, board.min_effect_usd, *finite], pad=0.05), left, right)
    title = "net value difference per request vs the champion (USD) →  right of 0: challenger earns more"
    parts = x_axis(x, bottom, top - 10, title, lambda v: money_tick(v, x.step, signed=True))
    parts += [svg_line(x(0), top - 10, x(0), bottom, "zero"), svg_text(x(0), top - 16, "0", "tick", "middle")]
    effect_x = x(board.min_effect_usd)
    effect_text = f"min effect {usd(board.min_effect_usd, signed=True)}"
    parts += [
        f'<line x1="{effect_x:.1f}" y1="{top - 10}" x2="{effect_x:.1f}" y2="{bottom}" class="effect"/>',
        svg_text(*_effect_label_at(x(0), effect_x, top - 16), effect_text, "effect-label", _effect_anchor(board)),
    ]
    for index, row in enumerate(rows):
        parts += _net_row(board, row, names[row.version_id], x, top + row_height * (index + 0.5), right)
    parts += status_legend((r.status for r in rows), left, 18)
    chart = svg_document(width, bottom + 52, "net value difference per request against the champion", parts)
    missing = [names[r.version_id] for r in challengers(board) if r.comparison is None]
    return chart + (small_note(f"Not shown (no comparison yet): {', '.join(missing)}.") if missing else "")


def _effect_anchor(board: Leaderboard) -> str:
    """The min-effect label reads away from zero: to the right of a positive one, the left of a negative one."""
    return "end" if board.min_effect_usd < 0 else "start"


def _effect_label_at(zero_x: float, effect_x: float, y: float) -> tuple[float, float]:
    """Where the min-effect label starts (or ends, left of zero): beside its line, but clear of the `0` label.

    With a min effect close to zero the two lines nearly coincide, and the label beside
    its line would sit on the `0`; it is moved out along the same line of text instead.
    """
    clear = CHAR_WIDTH / 2 + 6  # half the "0", and a gap
    if effect_x >= zero_x:
        return max(effect_x + 4, zero_x + clear), y
    return min(effect_x - 4, zero_x - clear), y


def _net_row(board: Leaderboard, row: VariantRow, name: str, x: Scale, y: float, right: float) -> list[str]:
    """One challenger's name and status, its bar, and its interval written out on the right."""
    assert row.comparison is not None
    net = row.comparison.net
    colour = STATUS_COLOURS[row.status]
    parts = [
        svg_text(x.start - 12, y - 2, fit_text(name, 22), "row-name", "end"),
        svg_text(x.start - 12, y + 13, fit_text(row.display_status, 28), "row-status", "end"),
        svg_text(right + 20, y - 2, format_interval(net), "row-value"),
        svg_text(right + 20, y + 13, f"{fmt_pairs(row.comparison.pairs)} · α {row.comparison.alpha:.3g}", "row-status"),
    ]
    if net.mean is None:
        return parts + [svg_text((x.start + x.end) / 2, y + 4, "no estimate yet", "row-status", "middle")]
    tip = f"{row.version_id}: {format_interval(net)} per request"
    return parts + _interval_bar(x, y, net.mean, net, colour, tip)


# ── chart 3: cumulative evidence ─────────────────────────────────────────────────────────


def evidence_series(board: Leaderboard, history: Iterable[EvidencePoint]) -> dict[str, list[EvidencePoint]]:
    """Each challenger's snapshots of the current period, oldest first, in the board's row order.

    Evidence points carry no period id, so points taken before the period started (which
    compared with another champion, or under other settings) are dropped by time.
    """
    start = board.period_started_at
    series: dict[str, list[EvidencePoint]] = {r.version_id: [] for r in challengers(board)}
    for point in sorted(history, key=lambda p: p.taken_at):
        if start is None or point.taken_at >= start:
            series.setdefault(point.version_id, []).append(point)
    return {version: points for version, points in series.items() if points}


def _evidence_domain(points: Sequence[EvidencePoint], min_effect: float) -> tuple[float, float]:
    """The y range of a panel: every mean, zero, min_effect and the band over the later half.

    Early bands are many times wider than late ones; fitting them would flatten the part
    of the chart that matters, so they run off the panel (clipped) instead.
    """
    banded = [p for p in points if is_finite(p.net.lower) and is_finite(p.net.upper)]
    later = banded[len(banded) // 2 :] if len(banded) >= 2 else []  # a lone bound draws no band
    values = [p.net.mean for p in points if is_finite(p.net.mean)] + [0.0, min_effect]
    values += [v for p in later for v in (p.net.lower, p.net.upper)]
    return nice_domain(values, pad=0.08)


def _band(points: Sequence[EvidencePoint], x: Scale, y: Scale) -> str:
    """The polygon between the lower and upper bounds, over the snapshots that have both."""
    banded = [p for p in points if is_finite(p.net.lower) and is_finite(p.net.upper)]
    if len(banded) < 2:
        return ""
    edge = [(x(p.pairs), y(p.net.upper)) for p in banded] + [(x(p.pairs), y(p.net.lower)) for p in reversed(banded)]
    return '<polygon points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in edge) + '" class="band"/>'


@dataclass(frozen=True)
class Panel:
    """Where one small-multiple panel sits in the evidence chart."""

    left: float
    top: float
    width: float = 400
    height: float = 190


def _evidence_panel(
    board: Leaderboard, row: VariantRow | None, name: str, points: Sequence[EvidencePoint], panel: Panel, clip_id: str
) -> list[str]:
    """One challenger: title and axes, then its band and mean over pairs (see :func:`_evidence_marks`)."""
    right, bottom = panel.left + panel.width, panel.top + panel.height
    x_lo, x_hi = nice_domain([0.0, 10.0] + [p.pairs for p in points], pad=0.02)
    x = Scale(max(0.0, x_lo), x_hi, panel.left, right, whole=True)
    y = Scale(*_evidence_domain(points, board.min_effect_usd), bottom, panel.top)
    status = row.display_status if row else "not on the current board"
    parts = [svg_text(panel.left, panel.top - 12, fit_text(f"{name} · {status}", 52), "panel-title")]
    parts += x_axis(x, bottom, panel.top, "paired requests", lambda v: f"{v:,.0f}")
    money = lambda v: money_tick(v, y.step, signed=True)  # noqa: E731
    parts += y_axis(y, panel.left, right, "net Δ / request (USD)", money, gap=66)
    colour = STATUS_COLOURS[row.status] if row else STATUS_COLOURS[Status.PAUSED]
    return parts + _evidence_marks(board, points, x, y, colour, clip_id)


def _evidence_marks(
    board: Leaderboard, points: Sequence[EvidencePoint], x: Scale, y: Scale, colour: str, clip_id: str
) -> list[str]:
    """Band, mean line, zero, min_effect and min_samples lines, clipped to the panel; dots with tooltips."""
    left, right, top, bottom = x.start, x.end, y.end, y.start
    rect = f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>'
    clip = f'<clipPath id="{clip_id}">{rect}</clipPath>'
    line = " ".join(f"{x(p.pairs):.1f},{y(p.net.mean):.1f}" for p in points if is_finite(p.net.mean))
    effect_y = y(board.min_effect_usd)
    inner = [
        f'<g fill="{colour}">{_band(points, x, y)}</g>',
        svg_line(left, y(0), right, y(0), "zero"),
        svg_line(left, effect_y, right, effect_y, "effect"),
        f'<polyline points="{line}" stroke="{colour}" class="mean"/>',
    ]
    if x.lo < board.min_samples <= x.hi:
        inner.append(svg_line(x(board.min_samples), top, x(board.min_samples), bottom, "min-samples"))
    dots = [
        f'<circle cx="{x(p.pairs):.1f}" cy="{y(p.net.mean):.1f}" r="2.5" fill="{colour}">'
        f"<title>{escape(_evidence_tip(p))}</title></circle>"
        for p in points
        if is_finite(p.net.mean) and y.lo <= p.net.mean <= y.hi
    ]
    return [clip, f'<g clip-path="url(#{clip_id})">' + "".join(inner) + "</g>", *dots]


def _evidence_tip(point: EvidencePoint) -> str:
    return f"{point.version_id} at {fmt_time(point.taken_at)}: {fmt_pairs(point.pairs)}, {format_interval(point.net)}"


def _evidence_legend(x: float, y: float) -> list[str]:
    return [
        f'<rect x="{x}" y="{y - 10}" width="24" height="10" fill="#57606a" class="band"/>',
        svg_text(x + 30, y, "interval (always valid)", "legend"),
        svg_line(x + 200, y - 5, x + 224, y - 5, "mean-legend"),
        svg_text(x + 230, y, "mean net Δ", "legend"),
        svg_line(x + 330, y - 5, x + 354, y - 5, "zero"),
        svg_text(x + 360, y, "zero", "legend"),
        svg_line(x + 410, y - 5, x + 434, y - 5, "effect"),
        svg_text(x + 440, y, "min effect", "legend"),
        svg_line(x + 530, y - 12, x + 530, y + 2, "min-samples"),
        svg_text(x + 538, y, "min_samples: verdicts allowed from here", "legend"),
        svg_text(x, y + 20, "Band and line take the colour of the challenger's status.", "legend"),
    ]


def evidence_chart(board: Leaderboard, history: Iterable[EvidencePoint]) -> str:
    """Small multiples, two per line: each challenger's mean net difference inside its band, over pairs."""
    series = evidence_series(board, history)
    if not series:
        return empty_note("No evidence snapshots for this evaluation period yet: the chart appears after scoring runs.")
    rows = {r.version_id: r for r in board.rows}
    names = short_names(board.rows)
    parts = _evidence_legend(20, 20)
    for index, (version, points) in enumerate(series.items()):
        panel = Panel(left=100 + (index % 2) * 480, top=95 + (index // 2) * 290)
        name = names.get(version, version)
        parts += _evidence_panel(board, rows.get(version), name, points, panel, f"evidence-clip-{index}")
    height = 95 + math.ceil(len(series) / 2) * 290 - 40
    return svg_document(960, height, "cumulative evidence per challenger", parts)


def empty_note(sentence: str) -> str:
    return f'<p class="empty">{escape(sentence)}</p>'


def small_note(sentence: str) -> str:
    return f'<p class="note">{escape(sentence)}</p>'
