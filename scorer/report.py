"""Leaderboard reports: a Markdown table for PRs and chat, and one self-contained HTML page.

Operators decide promotions from these reports, so both say what the leaderboard says, in
its order (champion first), with every money figure in USD and every paired difference
shown with its always-valid interval (see :mod:`scorer.sequential`). The HTML page is one
file that renders offline and the same everywhere: inline CSS and hand-drawn inline SVG,
no scripts, no external resources, so it can be attached to a ticket or mailed as is.
Every piece of text that comes from data (version ids, labels, status details, reaction
names) is escaped, because labels come from spec files anyone can write.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

from scorer.board import EvidencePoint, Interval, Leaderboard, Status, VariantRow

DASH = "–"

# ── numbers ──────────────────────────────────────────────────────────────────────────────


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _decimals(magnitude: float, digits: int = 2) -> int:
    """Decimals that show `digits` significant digits of `magnitude`: at least 2 (cents), at most 6."""
    if not magnitude or not math.isfinite(magnitude):
        return 2
    return min(6, max(2, digits - 1 - math.floor(math.log10(magnitude))))


def _infinity(value: float) -> str:
    return "-∞" if value < 0 else "+∞"


def usd(value: float | None, *, signed: bool = False, decimals: int | None = None) -> str:
    """USD with enough digits for sub-cent amounts: `$1,234.56`, `$0.42`, `+$0.0012`, `-$0.00031`.

    Per-request costs and differences are fractions of a cent, so a fixed two decimals
    would print most of them as `$0.00`; two significant digits (never fewer than two
    decimals) keep them readable without false precision.
    """
    if value is None:
        return DASH
    if math.isinf(value):
        return _infinity(value)
    places = _decimals(abs(value)) if decimals is None else decimals
    if round(value, places) == 0:
        return f"${0:.{places}f}"
    sign = "-" if value < 0 else ("+" if signed else "")
    return f"{sign}${abs(value):,.{places}f}"


def _signed(value: float | None, places: int) -> str:
    """A bare signed number (no `$`), for interval bounds next to a formatted mean."""
    if value is None:
        return DASH
    if math.isinf(value):
        return _infinity(value)
    return f"{value:+.{places}f}"


def format_interval(interval: Interval | None) -> str:
    """A mean difference with its interval, all at one precision: `+$0.0012 [+0.0004, +0.0021]`.

    Infinite bounds (fewer than two pairs) print as ∞, missing ones as –.
    """
    if interval is None or interval.mean is None:
        return DASH
    mean, bounds = _interval_parts(interval)
    return f"{mean} {bounds}"


def _interval_parts(interval: Interval) -> tuple[str, str]:
    """The mean (`+$0.0012`) and its bounds (`[+0.0004, +0.0021]`), both at the precision the mean needs."""
    assert interval.mean is not None
    values = [abs(v) for v in (interval.mean, interval.lower, interval.upper) if _finite(v)] or [0.0]
    places = max(_decimals(max(values)), _decimals(abs(interval.mean)))
    mean = usd(interval.mean, signed=True, decimals=places)
    return mean, f"[{_signed(interval.lower, places)}, {_signed(interval.upper, places)}]"


def _percent(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value * 100:.1f}%" if value == 0 or abs(value) >= 0.01 else f"{value * 100:.2f}%"


def _quality(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def _latency(p50: float | None, p95: float | None) -> str:
    if p50 is None and p95 is None:
        return DASH
    return f"{_ms(p50)} / {_ms(p95)} ms"


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def _pairs(count: int) -> str:
    return f"{count:,} pair" + ("" if count == 1 else "s")


def _time(moment: datetime | None) -> str:
    """Minutes are enough for a report; aware times are shown in UTC, naive ones as given."""
    if moment is None:
        return DASH
    if moment.tzinfo is None:
        return moment.strftime("%Y-%m-%d %H:%M")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ── what the board says ──────────────────────────────────────────────────────────────────


def ordered_rows(board: Leaderboard) -> list[VariantRow]:
    """The champion first, then the challengers in the board's own order."""
    return sorted(board.rows, key=lambda row: row.role != "champion")


def challengers(board: Leaderboard) -> list[VariantRow]:
    return [row for row in board.rows if row.role != "champion"]


def short_names(rows: Iterable[VariantRow]) -> dict[str, str]:
    """A chart label per version id: the variant's label, or its version id when two rows share a label."""
    rows = list(rows)
    counts = Counter(row.label for row in rows)
    return {row.version_id: row.label if counts[row.label] == 1 else row.version_id for row in rows}


def recommended_row(board: Leaderboard) -> VariantRow | None:
    """The row behind `board.recommendation` (the command ends with its version id)."""
    command = board.recommendation
    if command is None:
        return None
    version_id = command.rsplit(" ", 1)[-1]
    return next(row for row in board.rows if row.version_id == version_id)


def _guardrail_facts(row: VariantRow) -> list[str]:
    """The guardrail measurements a comparison carries, e.g. `errors +6.1 pts`, `p95 0.24×`.

    The p95 ratio is against the champion unless the slot replays a control, which is then named.
    """
    comparison = row.comparison
    if comparison is None:
        return []
    facts = []
    if comparison.error_rate_delta is not None:
        facts.append(f"errors {comparison.error_rate_delta * 100:+.1f} pts")
    if comparison.p95_latency_ratio is not None:
        baseline = "" if comparison.latency_baseline == "champion" else f" {comparison.latency_baseline}"
        facts.append(f"p95 {comparison.p95_latency_ratio:.2f}×{baseline}")
    return facts


def not_ready_reason(row: VariantRow, board: Leaderboard) -> str:
    """Why a challenger is not the recommendation, in words an operator can act on."""
    net = row.comparison.net if row.comparison else Interval()
    pairs = row.comparison.pairs if row.comparison else 0
    match row.status:
        case Status.COLLECTING if pairs < board.min_samples:
            why = f"needs {_pairs(board.min_samples - pairs)} more before any verdict"
        case Status.COLLECTING if _finite(net.lower):
            why = f"lower bound {usd(net.lower, signed=True)} is not above min_effect {usd(board.min_effect_usd)} yet"
        case Status.COLLECTING:
            why = "no interval yet"
        case Status.WORSE:
            bound = f" (upper bound {usd(net.upper, signed=True)})" if _finite(net.upper) else ""
            why = f"the champion earns more per request{bound}"
        case Status.GUARDRAIL:
            facts = _guardrail_facts(row)
            why = f"vs the champion: {' · '.join(facts)}" if facts else "a guardrail failed"
        case Status.PRICE_UNKNOWN:
            why = "its model has no price, so cost and net value cannot be scored"
        case Status.PAUSED:
            why = "no new shadow calls are made"
        case Status.NO_DATA:
            why = "no scored requests yet"
        case Status.READY:
            why = "its interval has no lower bound yet"
        case _:
            why = ""
    return f"{row.display_status} — {why}" if why else row.display_status


def recommendation_evidence(row: VariantRow, board: Leaderboard) -> str:
    """One sentence on why the recommended challenger is ready."""
    assert row.comparison is not None  # a ready row has one (board.recommendation checks)
    return (
        f"{row.label} earns {format_interval(row.comparison.net)} per request more than the champion "
        f"over {row.comparison.pairs:,} paired requests; the lower bound clears min_effect "
        f"{usd(board.min_effect_usd)}."
    )


def no_recommendation_headline(board: Leaderboard) -> str:
    """Why there is no promote command, before any per-challenger reasons."""
    if not board.rows:
        return "The slot has no variants yet."
    if not challengers(board):
        return "No challengers are being evaluated yet; `shadowzoo zoo register` adds one from a spec."
    return "No challenger is ready."


def _alpha_shares(board: Leaderboard) -> str:
    shares = [f"{r.label} {r.comparison.alpha:.3g}" for r in challengers(board) if r.comparison]
    return ", ".join(shares) or "none yet"


def notes(board: Leaderboard) -> list[str]:
    """The settings and side facts behind the numbers, one plain-text sentence each."""
    lines = [
        f"Evaluation period {board.period_id if board.period_id is not None else DASH} "
        f"started {_time(board.period_started_at)}; paired columns cover this period only.",
        f"α = {board.alpha:g} for the slot, shared among challengers ({_alpha_shares(board)}); "
        f"min_samples = {board.min_samples:,} pairs; min_effect = {usd(board.min_effect_usd)} per request.",
        f"value_per_point = {usd(board.value_per_point)}: the value of one request answered at quality 1.0; "
        "net value = value_per_point × quality − cost − latency cost.",
        f"Evaluation (judge) spend: {usd(board.eval_spend_usd)}, never charged to a variant.",
    ]
    if board.since is not None:
        lines.append(f"Descriptive columns cover traffic since {_time(board.since)}.")
    if board.reactions:
        shown = ", ".join(f"{name} {value:g}" for name, value in board.reactions.items())
        lines.append(f"Reactions to the champion's answers (shown, never paired): {shown}.")
    for row in board.rows:
        if row.not_run:
            lines.append(f"{row.label}: {row.not_run:,} calls not run (budget, rate limit or pause), not scored.")
        if row.metric_errors:
            lines.append(f"{row.label}: {row.metric_errors:,} rows a metric could not score.")
    return lines


# ── Markdown ─────────────────────────────────────────────────────────────────────────────

_MD_HEADER = (
    "| version | status | n | quality | cost / 1k req | latency p50 / p95 | errors | net / 1k req "
    "| net Δ / req vs champion [interval] | pairs |\n"
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
)


def _md(text: str) -> str:
    """Text safe inside a Markdown table cell: no pipes breaking columns, no line breaks."""
    return text.replace("|", "\\|").replace("\n", " ")


def _md_row(row: VariantRow) -> str:
    comparison = row.comparison
    cells = [
        f"`{_md(row.version_id)}`",
        _md(row.display_status),
        f"{row.n:,}",
        _quality(row.mean_quality),
        usd(row.cost_per_1k_usd),
        _latency(row.p50_latency_ms, row.p95_latency_ms),
        _percent(row.error_rate),
        usd(row.net_per_1k_usd),
        format_interval(comparison.net) if comparison else DASH,
        f"{comparison.pairs:,}" if comparison else DASH,
    ]
    return "| " + " | ".join(cells) + " |"


def _md_recommendation(board: Leaderboard) -> list[str]:
    row = recommended_row(board)
    if row is not None:
        return [f"**Recommendation:** `{board.recommendation}`", "", _md(recommendation_evidence(row, board))]
    lines = [f"**No recommendation.** {no_recommendation_headline(board)}"]
    if challengers(board):
        lines.append("")
        lines += [f"- `{r.version_id}`: {_md(not_ready_reason(r, board))}" for r in challengers(board)]
    return lines


def render_markdown(board: Leaderboard) -> str:
    """The leaderboard as GitHub-flavoured Markdown: table, recommendation, notes."""
    champion = f"`{board.champion}`" if board.champion else "none"
    lines = [
        f"### shadowzoo leaderboard: `{board.slot}`",
        "",
        f"Generated {_time(board.generated_at)} · champion {champion}",
        "",
    ]
    if board.rows:
        lines += [_MD_HEADER, *(_md_row(row) for row in ordered_rows(board)), ""]
    lines += [*_md_recommendation(board), "", "Notes:", ""]
    lines += [f"- {_md(note)}" for note in notes(board)]
    return "\n".join(lines) + "\n"


# ── SVG primitives ───────────────────────────────────────────────────────────────────────

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

STATUS_MEANINGS: dict[Status, str] = {
    Status.CHAMPION: "serves real users; every challenger is compared with it.",
    Status.READY: "enough pairs, the interval's lower bound is above min_effect and the guardrails hold.",
    Status.COLLECTING: "not enough evidence for a verdict either way yet.",
    Status.WORSE: "the interval's upper bound is below zero: the champion is better net of cost.",
    Status.GUARDRAIL: "a guardrail (error rate, latency) failed, whatever the net value says.",
    Status.PRICE_UNKNOWN: "the variant's model has no price; its cost cannot be scored.",
    Status.PAUSED: "shadow calls are paused for this variant.",
    Status.NO_DATA: "no scored requests yet.",
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


def _money_tick(value: float, step: float, signed: bool = False) -> str:
    """A money axis label: whole dollars for steps of a dollar or more, else as many decimals as the step needs."""
    return usd(value, signed=signed, decimals=_step_decimals(step) if step >= 1 else max(2, _step_decimals(step)))


def _number_tick(value: float, step: float) -> str:
    return f"{value:.{_step_decimals(step)}f}"


def _text(x: float, y: float, content: str, cls: str = "", anchor: str = "start") -> str:
    """An SVG text element; `content` is escaped here, so callers pass raw data."""
    css = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{css}>{escape(content)}</text>'


def _fit(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with an ellipsis, for a fixed chart margin (the table has it in full)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="{cls}"/>'


def _x_axis(scale: Scale, y: float, top: float, title: str, label: Callable[[float], str]) -> list[str]:
    """Grid lines, tick labels under `y`, and the axis title (which carries the unit)."""
    parts = [_line(scale.start, y, scale.end, y, "axis")]
    for tick in scale.ticks():
        x = scale(tick)
        parts += [_line(x, top, x, y, "grid"), _text(x, y + 16, label(tick), "tick", "middle")]
    parts.append(_text((scale.start + scale.end) / 2, y + 38, title, "axis-title", "middle"))
    return parts


def _y_axis(
    scale: Scale, x: float, right: float, title: str, label: Callable[[float], str], gap: float = 52
) -> list[str]:
    """Grid lines, tick labels left of `x`, and the rotated axis title (which carries the unit)."""
    parts = [_line(x, scale.start, x, scale.end, "axis")]
    for tick in scale.ticks():
        y = scale(tick)
        parts += [_line(x, y, right, y, "grid"), _text(x - 6, y + 4, label(tick), "tick", "end")]
    middle = (scale.start + scale.end) / 2
    parts.append(
        f'<text transform="translate({x - gap:.1f},{middle:.1f}) rotate(-90)" text-anchor="middle" '
        f'class="axis-title">{escape(title)}</text>'
    )
    return parts


def _svg(width: float, height: float, label: str, parts: Iterable[str]) -> str:
    return (
        f'<svg viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" role="img" '
        f'aria-label="{escape(label)}">' + "".join(parts) + "</svg>"
    )


def _swatch(x: float, y: float, colour: str, text: str) -> tuple[list[str], float]:
    """A coloured dot with its legend text; returns the parts and the x where the next one may start."""
    parts = [f'<circle cx="{x + 5:.1f}" cy="{y - 4:.1f}" r="5" fill="{colour}"/>', _text(x + 14, y, text, "legend")]
    return parts, x + 14 + len(text) * CHAR_WIDTH + 18


def _status_legend(statuses: Iterable[Status], x: float, y: float) -> list[str]:
    """One swatch per status present, so colours never stand without words."""
    parts: list[str] = []
    for status in dict.fromkeys(statuses):
        swatch, x = _swatch(x, y, STATUS_COLOURS[status], status.value)
        parts += swatch
    return parts


# ── chart 1: quality vs cost, with the Pareto frontier ───────────────────────────────────


def pareto_frontier(rows: Iterable[VariantRow]) -> list[VariantRow]:
    """The variants no other variant dominates on cost per 1k requests and mean quality, cheapest first.

    One variant dominates another when it is no more expensive and no worse, and strictly
    better on one of the two; equal variants do not dominate each other. Rows without a
    cost or a quality have no place on the chart and are left out.
    """
    placed = [r for r in rows if _finite(r.cost_per_1k_usd) and _finite(r.mean_quality)]

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


def quality_cost_chart(board: Leaderboard) -> str:
    """Scatter of mean quality against cost per 1k requests, with the Pareto frontier dashed."""
    rows = [r for r in ordered_rows(board) if _finite(r.cost_per_1k_usd) and _finite(r.mean_quality)]
    if not rows:
        return _empty("No variant has both a cost and a quality yet, so there is nothing to plot.")
    width, height, left, right, top, bottom = 960, 450, 90, 930, 60, 390
    x_lo, x_hi = nice_domain([0.0] + [r.cost_per_1k_usd for r in rows], pad=0.1)
    x = Scale(max(0.0, x_lo), x_hi, left, right)  # costs are never negative
    y = _quality_scale([r.mean_quality for r in rows], top, bottom)
    frontier = {r.version_id for r in pareto_frontier(rows)}
    names = short_names(board.rows)
    parts = _x_axis(x, bottom, top, "cost per 1,000 requests (USD) →", lambda v: _money_tick(v, x.step))
    parts += _y_axis(y, left, right, "mean quality (0–1) →", lambda v: _number_tick(v, y.step))
    line = [(x(r.cost_per_1k_usd), y(r.mean_quality)) for r in pareto_frontier(rows)]
    parts.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in line)}" class="frontier"/>')
    points = [(x(r.cost_per_1k_usd), y(r.mean_quality), r) for r in rows]
    for px, py, row in points:
        tip = f"{row.version_id}: quality {_quality(row.mean_quality)}, {usd(row.cost_per_1k_usd)} per 1k requests"
        parts.append(_marker(px, py, row, row.version_id in frontier, tip))
    named = [(px, py, names[row.version_id]) for px, py, row in points]
    area = Box(left, top - 8, right, bottom)
    for (lx, ly, anchor), (_, _, name) in zip(place_labels(named, area, _polyline_boxes(line)), named):
        parts.append(_text(lx, ly, name, "label", anchor))
    parts += _status_legend((r.status for r in rows), left, 18)
    parts += _frontier_legend(left, 40)
    chart = _svg(width, height, "mean quality against cost per 1,000 requests", parts)
    plotted = {r.version_id for r in rows}
    missing = [names[r.version_id] for r in board.rows if r.version_id not in plotted]
    return chart + (_note(f"Not plotted (no cost or quality yet): {', '.join(missing)}.") if missing else "")


def _frontier_legend(x: float, y: float) -> list[str]:
    return [
        _line(x, y - 4, x + 28, y - 4, "frontier"),
        _text(x + 34, y, "Pareto frontier · filled = on it, hollow = beaten · ◆ = champion", "legend"),
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
        return _empty("No challenger has paired evidence yet: nothing is compared with the champion.")
    names = short_names(board.rows)
    width, left, right, top, row_height = 960, 190, 690, 46, 48
    bottom = top + row_height * len(rows)
    nets = [r.comparison.net for r in rows if r.comparison]
    finite = [v for net in nets for v in (net.mean, net.lower, net.upper) if _finite(v)]
    x = Scale(*nice_domain([0.0, board.min_effect_usd, *finite], pad=0.05), left, right)
    title = "net value difference per request vs the champion (USD) →  right of 0: challenger earns more"
    parts = _x_axis(x, bottom, top - 10, title, lambda v: _money_tick(v, x.step, signed=True))
    parts += [_line(x(0), top - 10, x(0), bottom, "zero"), _text(x(0), top - 16, "0", "tick", "middle")]
    effect_x = x(board.min_effect_usd)
    parts += [
        f'<line x1="{effect_x:.1f}" y1="{top - 10}" x2="{effect_x:.1f}" y2="{bottom}" class="effect"/>',
        _text(effect_x + 4, top - 16, f"min effect {usd(board.min_effect_usd, signed=True)}", "effect-label"),
    ]
    for index, row in enumerate(rows):
        parts += _net_row(board, row, names[row.version_id], x, top + row_height * (index + 0.5), right)
    parts += _status_legend((r.status for r in rows), left, 18)
    chart = _svg(width, bottom + 52, "net value difference per request against the champion", parts)
    missing = [names[r.version_id] for r in challengers(board) if r.comparison is None]
    return chart + (_note(f"Not shown (no comparison yet): {', '.join(missing)}.") if missing else "")


def _net_row(board: Leaderboard, row: VariantRow, name: str, x: Scale, y: float, right: float) -> list[str]:
    """One challenger's name and status, its bar, and its interval written out on the right."""
    assert row.comparison is not None
    net = row.comparison.net
    colour = STATUS_COLOURS[row.status]
    parts = [
        _text(x.start - 12, y - 2, _fit(name, 22), "row-name", "end"),
        _text(x.start - 12, y + 13, _fit(row.display_status, 28), "row-status", "end"),
        _text(right + 20, y - 2, format_interval(net), "row-value"),
        _text(right + 20, y + 13, f"{_pairs(row.comparison.pairs)} · α {row.comparison.alpha:.3g}", "row-status"),
    ]
    if net.mean is None:
        return parts + [_text((x.start + x.end) / 2, y + 4, "no estimate yet", "row-status", "middle")]
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
    banded = [p for p in points if _finite(p.net.lower) and _finite(p.net.upper)]
    later = banded[len(banded) // 2 :] if len(banded) >= 2 else []  # a lone bound draws no band
    values = [p.net.mean for p in points if _finite(p.net.mean)] + [0.0, min_effect]
    values += [v for p in later for v in (p.net.lower, p.net.upper)]
    return nice_domain(values, pad=0.08)


def _band(points: Sequence[EvidencePoint], x: Scale, y: Scale) -> str:
    """The polygon between the lower and upper bounds, over the snapshots that have both."""
    banded = [p for p in points if _finite(p.net.lower) and _finite(p.net.upper)]
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
    parts = [_text(panel.left, panel.top - 12, _fit(f"{name} · {status}", 52), "panel-title")]
    parts += _x_axis(x, bottom, panel.top, "paired requests", lambda v: f"{v:,.0f}")
    money = lambda v: _money_tick(v, y.step, signed=True)  # noqa: E731
    parts += _y_axis(y, panel.left, right, "net Δ / request (USD)", money, gap=66)
    colour = STATUS_COLOURS[row.status] if row else STATUS_COLOURS[Status.PAUSED]
    return parts + _evidence_marks(board, points, x, y, colour, clip_id)


def _evidence_marks(
    board: Leaderboard, points: Sequence[EvidencePoint], x: Scale, y: Scale, colour: str, clip_id: str
) -> list[str]:
    """Band, mean line, zero, min_effect and min_samples lines, clipped to the panel; dots with tooltips."""
    left, right, top, bottom = x.start, x.end, y.end, y.start
    rect = f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/>'
    clip = f'<clipPath id="{clip_id}">{rect}</clipPath>'
    line = " ".join(f"{x(p.pairs):.1f},{y(p.net.mean):.1f}" for p in points if _finite(p.net.mean))
    effect_y = y(board.min_effect_usd)
    inner = [
        f'<g fill="{colour}">{_band(points, x, y)}</g>',
        _line(left, y(0), right, y(0), "zero"),
        _line(left, effect_y, right, effect_y, "effect"),
        f'<polyline points="{line}" stroke="{colour}" class="mean"/>',
    ]
    if x.lo < board.min_samples <= x.hi:
        inner.append(_line(x(board.min_samples), top, x(board.min_samples), bottom, "min-samples"))
    dots = [
        f'<circle cx="{x(p.pairs):.1f}" cy="{y(p.net.mean):.1f}" r="2.5" fill="{colour}">'
        f"<title>{escape(_evidence_tip(p))}</title></circle>"
        for p in points
        if _finite(p.net.mean) and y.lo <= p.net.mean <= y.hi
    ]
    return [clip, f'<g clip-path="url(#{clip_id})">' + "".join(inner) + "</g>", *dots]


def _evidence_tip(point: EvidencePoint) -> str:
    return f"{point.version_id} at {_time(point.taken_at)}: {_pairs(point.pairs)}, {format_interval(point.net)}"


def _evidence_legend(x: float, y: float) -> list[str]:
    return [
        f'<rect x="{x}" y="{y - 10}" width="24" height="10" fill="#57606a" class="band"/>',
        _text(x + 30, y, "interval (always valid)", "legend"),
        _line(x + 200, y - 5, x + 224, y - 5, "mean-legend"),
        _text(x + 230, y, "mean net Δ", "legend"),
        _line(x + 330, y - 5, x + 354, y - 5, "zero"),
        _text(x + 360, y, "zero", "legend"),
        _line(x + 410, y - 5, x + 434, y - 5, "effect"),
        _text(x + 440, y, "min effect", "legend"),
        _line(x + 530, y - 12, x + 530, y + 2, "min-samples"),
        _text(x + 538, y, "min_samples: verdicts allowed from here", "legend"),
        _text(x, y + 20, "Band and line take the colour of the challenger's status.", "legend"),
    ]


def evidence_chart(board: Leaderboard, history: Iterable[EvidencePoint]) -> str:
    """Small multiples, two per line: each challenger's mean net difference inside its band, over pairs."""
    series = evidence_series(board, history)
    if not series:
        return _empty("No evidence snapshots for this evaluation period yet: the chart appears after scoring runs.")
    rows = {r.version_id: r for r in board.rows}
    names = short_names(board.rows)
    parts = _evidence_legend(20, 20)
    for index, (version, points) in enumerate(series.items()):
        panel = Panel(left=100 + (index % 2) * 480, top=95 + (index // 2) * 290)
        name = names.get(version, version)
        parts += _evidence_panel(board, rows.get(version), name, points, panel, f"evidence-clip-{index}")
    height = 95 + math.ceil(len(series) / 2) * 290 - 40
    return _svg(960, height, "cumulative evidence per challenger", parts)


# ── HTML page ────────────────────────────────────────────────────────────────────────────

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1f2328;background:#fff;margin:0;padding:24px}
main{max-width:1180px;margin:0 auto}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px}
.meta{color:#57606a;margin:0 0 20px}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
td .mono{font-size:11px;white-space:nowrap}td strong{white-space:nowrap}
.advice{border:2px solid;border-radius:8px;padding:14px 18px;margin:0 0 8px}
.advice h2{margin:0 0 8px}.advice p{margin:6px 0}.advice ul{margin:6px 0;padding-left:20px}
.advice.ready{border-color:#1a7f37;background:#dafbe1}.advice.none{border-color:#bf8700;background:#fff8c5}
.advice code.command{display:block;font-size:15px;background:#fff;border:1px solid #d0d7de;border-radius:6px;
 padding:8px 10px;margin:8px 0;user-select:all;overflow-x:auto}
.wide{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 7px;border-bottom:1px solid #d8dee4;vertical-align:top}
th{text-align:left;background:#f6f8fa;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td .sub{display:block;color:#57606a;font-size:11.5px}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;white-space:nowrap}
details{margin:10px 0;color:#424a53}summary{cursor:pointer;font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:8px 0}dt{font-weight:600}dd{margin:0}
figure{margin:8px 0 0}figcaption{color:#57606a;margin:4px 0 6px}
svg{max-width:100%;height:auto;display:block}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;fill:#1f2328}
svg .tick{font-size:11px;fill:#57606a}svg .axis-title{font-size:12px;fill:#424a53}
svg .legend,svg .label{font-size:12px}
svg .label{paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}
svg .row-name{font-size:13px;font-weight:600}
svg .row-status{font-size:11px;fill:#57606a}svg .row-value{font-size:12px;font-variant-numeric:tabular-nums}
svg .panel-title{font-size:13px;font-weight:600}svg .effect-label{font-size:11px;fill:#1a7f37}
svg .axis{stroke:#8c959f;stroke-width:1}svg .grid{stroke:#eaeef2;stroke-width:1}
svg .zero{stroke:#57606a;stroke-width:1.5}
svg .effect{stroke:#1a7f37;stroke-width:1.5;stroke-dasharray:6 4}
svg .min-samples{stroke:#8c959f;stroke-width:1.5;stroke-dasharray:2 3}
svg .frontier{fill:none;stroke:#57606a;stroke-width:1.5;stroke-dasharray:7 5}
svg .bar{stroke-width:8;stroke-linecap:butt;opacity:.55}
svg .band{fill-opacity:.18;stroke:none}svg .mean{fill:none;stroke-width:2}
svg .mean-legend{stroke:#57606a;stroke-width:2}
.empty{color:#57606a;font-style:italic}.note{color:#57606a;font-size:12.5px;margin:4px 0}
ul.notes{padding-left:20px;color:#424a53}
"""

COLUMNS: list[tuple[str, bool, str]] = [
    # (header, right-aligned number?, what it means), in table order
    ("version", False, "The variant's label and immutable version id (label-date-fingerprint)."),
    ("status", False,
     "The scorer's verdict (see the list below). Under it, the guardrail measurements: the error-rate "
     "difference vs the champion in percentage points, and p95 latency as a multiple of the champion's "
     "(or of its replayed control's, when the slot runs one)."),
    ("n", True, "Requests the variant answered and that were scored, in the descriptive window."),
    ("quality", True, "Mean quality in [0, 1] over those requests; an upstream error scores 0."),
    ("cost / 1k req", True, "Model cost of 1,000 requests in USD, from token counts and prices."),
    ("latency p50 / p95", True, "Median and 95th-percentile latency. Challengers answer under replay load."),
    ("errors", True, "Share of calls whose upstream failed or timed out."),
    ("net / 1k req", True, "Net value of 1,000 requests: value_per_point × quality − cost − latency cost."),
    ("net Δ / req", True,
     "Mean of (challenger − champion) net value per request on the same requests, with its always-valid "
     "interval: it stays valid however often the board is re-scored."),
    ("pairs", True, "Requests both answered with labels joined, in this period; αᵢ is the challenger's share of α."),
]


def _empty(sentence: str) -> str:
    return f'<p class="empty">{escape(sentence)}</p>'


def _note(sentence: str) -> str:
    return f'<p class="note">{escape(sentence)}</p>'


def _pill(status: Status, text: str) -> str:
    return f'<span class="pill" style="background:{STATUS_COLOURS[status]}">{escape(text)}</span>'


def _html_interval(interval: Interval) -> str:
    """The mean on its line and the bounds under it, to keep the table narrow."""
    if interval.mean is None:
        return DASH
    mean, bounds = _interval_parts(interval)
    return f"{escape(mean)}<span class='sub'>{escape(bounds)}</span>"


def _html_status(row: VariantRow) -> str:
    """The status pill, with the guardrail measurements under it (they explain a guardrail status)."""
    facts = "".join(f"<span class='sub'>{escape(fact)}</span>" for fact in _guardrail_facts(row))
    return _pill(row.status, row.display_status) + facts


def _html_row(row: VariantRow) -> str:
    comparison = row.comparison
    pairs = f"{comparison.pairs:,}<span class='sub'>αᵢ {comparison.alpha:.3g}</span>" if comparison else DASH
    cells = [
        f"<td><strong>{escape(row.label)}</strong><span class='sub mono'>{escape(row.version_id)}</span></td>",
        f"<td>{_html_status(row)}</td>",
        f"<td class='num'>{row.n:,}</td>",
        f"<td class='num'>{_quality(row.mean_quality)}</td>",
        f"<td class='num'>{usd(row.cost_per_1k_usd)}</td>",
        f"<td class='num'>{_latency(row.p50_latency_ms, row.p95_latency_ms)}</td>",
        f"<td class='num'>{_percent(row.error_rate)}</td>",
        f"<td class='num'>{usd(row.net_per_1k_usd)}</td>",
        f"<td class='num'>{_html_interval(comparison.net) if comparison else DASH}</td>",
        f"<td class='num'>{pairs}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _html_table(board: Leaderboard) -> str:
    if not board.rows:
        return _empty("The slot has no variants yet, so there is no leaderboard.")
    head = "".join(f"<th{' class=num' if numeric else ''}>{escape(name)}</th>" for name, numeric, _ in COLUMNS)
    body = "".join(_html_row(row) for row in ordered_rows(board))
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html_help() -> str:
    """Column and status explanations, folded away so that the table stays the first thing seen."""
    columns = "".join(f"<dt>{escape(name)}</dt><dd>{escape(text)}</dd>" for name, _, text in COLUMNS)
    statuses = "".join(
        f"<dt>{_pill(status, status.value)}</dt><dd>{escape(meaning)}</dd>"
        for status, meaning in STATUS_MEANINGS.items()
    )
    return (
        "<details><summary>What the columns and statuses mean</summary>"
        f"<dl>{columns}</dl><dl>{statuses}</dl></details>"
    )


def _html_recommendation(board: Leaderboard) -> str:
    row = recommended_row(board)
    if row is not None:
        return (
            f'<section class="advice ready"><h2>Ready to promote: {escape(row.label)}</h2>'
            f'<code class="command">{escape(board.recommendation or "")}</code>'
            f"<p>{escape(recommendation_evidence(row, board))}</p></section>"
        )
    reasons = "".join(
        f"<li><strong>{escape(r.label)}</strong> <span class='mono'>{escape(r.version_id)}</span>: "
        f"{escape(not_ready_reason(r, board))}</li>"
        for r in challengers(board)
    )
    listing = f"<ul>{reasons}</ul>" if reasons else f"<p>{escape(no_recommendation_headline(board))}</p>"
    return f'<section class="advice none"><h2>No challenger is ready</h2>{listing}</section>'


def _figure(title: str, caption: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2><figure><figcaption>{escape(caption)}</figcaption>{body}</figure>"


def _html_charts(board: Leaderboard, history: list[EvidencePoint]) -> str:
    return "".join([
        _figure(
            "Quality vs cost",
            "Each variant's mean quality against what 1,000 requests cost. Up and to the left is better. "
            "The dashed line joins the Pareto frontier: variants that no other variant beats on both cost "
            "and quality. Hover a marker for its version id.",
            quality_cost_chart(board),
        ),
        _figure(
            "Net difference vs the champion",
            "Mean net value gained per request by each challenger over the champion, on the same requests; "
            "the bar is the always-valid interval. Ready needs the whole bar right of the dashed min-effect "
            "line (and at least min_samples pairs); worse means the whole bar is left of zero. Arrowheads "
            "mark bounds beyond the axis.",
            net_difference_chart(board),
        ),
        _figure(
            "Cumulative evidence",
            "How each challenger's interval narrowed as pairs accumulated in this period. Early bands are "
            "clipped at the panel edge; no verdict is given before min_samples pairs (dotted line).",
            evidence_chart(board, history),
        ),
    ])


def render_html(board: Leaderboard, history: list[EvidencePoint]) -> str:
    """The leaderboard as one self-contained HTML page: advice, table, three charts, notes."""
    title = f"shadowzoo · {board.slot} leaderboard"
    champion = board.champion or "none"
    notes_html = "".join(f"<li>{escape(note)}</li>" for note in notes(board))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{escape(board.slot)} · shadowzoo leaderboard</h1>"
        f'<p class="meta">Generated {escape(_time(board.generated_at))} · champion '
        f'<span class="mono">{escape(champion)}</span> · evaluation period started '
        f"{escape(_time(board.period_started_at))}</p>"
        f"{_html_recommendation(board)}"
        f"<h2>Leaderboard</h2>{_html_table(board)}{_html_help()}"
        f"{_html_charts(board, history)}"
        f'<h2>Notes</h2><ul class="notes">{notes_html}</ul>'
        "</main></body></html>\n"
    )
