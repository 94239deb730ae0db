"""The leaderboard reports: Markdown for PRs and chat, one self-contained HTML page."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from hashlib import sha256
from html.parser import HTMLParser

import pytest

from scorer.leaderboard_model import Comparison, EvidencePoint, Interval, Leaderboard, Status, VariantRow
from scorer.report import Box, format_interval, pareto_frontier, place_labels, render_html, render_markdown, usd
from scorer.sequential import PairedMoments, alpha_share, confidence_interval

SLOT = "support-triage"
PERIOD_START = datetime(2025, 3, 3, 9, 0, tzinfo=timezone.utc)
ALPHA, MIN_SAMPLES, MIN_EFFECT, VALUE_PER_POINT = 0.05, 400, 0.0005, 0.05
SD = 0.019  # USD: a 15% disagreement rate on quality, at $0.05 a point


def net_interval(mean: float, pairs: int, k: int) -> Interval:
    """The always-valid interval the scorer would report for `pairs` differences with this mean."""
    moments = PairedMoments(n=pairs, mean=mean, m2=SD**2 * max(pairs - 1, 0))
    lower, upper = confidence_interval(moments, ALPHA * alpha_share(k), MIN_SAMPLES)
    return Interval(mean=mean, lower=float(lower), upper=float(upper))


def row(
    label: str,
    status: Status,
    quality: float,
    cost_1k: float,
    latency: tuple[float, float],
    errors: float,
    *,
    k: int = 0,
    mean: float = 0.0,
    pairs: int = 0,
    **extra,
) -> VariantRow:
    """One variant; a challenger (k ≥ 1, its start order in the period) gets a comparison with the champion."""
    comparison = None
    if k:
        comparison = Comparison(
            pairs=pairs,
            alpha=ALPHA * alpha_share(k),
            net=net_interval(mean, pairs, k),
            quality=Interval(mean=quality - 0.86),
            cost=Interval(mean=(cost_1k - 1.80) / 1000),
            error_rate_delta=errors - 0.004,
            p95_latency_ratio=latency[1] / 1900,
        )
    return VariantRow(
        version_id=f"{label}-20250301-{sha256(label.encode()).hexdigest()[:8]}",
        label=label,
        role="challenger" if k else "champion",
        status=status,
        n=max(pairs, 2100),
        mean_quality=quality,
        cost_per_1k_usd=cost_1k,
        p50_latency_ms=latency[0],
        p95_latency_ms=latency[1],
        error_rate=errors,
        net_per_1k_usd=1000 * VALUE_PER_POINT * quality - cost_1k,
        comparison=comparison,
        **extra,
    )


def demo_board(**changes) -> Leaderboard:
    """A realistic slot: a champion and four challengers, one of each kind an operator meets.

    cheap-mini is cheaper but loses more in quality than it saves (worse); careful-large
    costs more and earns more (ready); flash is fast and cheap but errs (guardrail);
    careful-mini has just started (collecting). Intervals come from the real sequential code.
    """
    rows = [
        row("baseline", Status.CHAMPION, 0.86, 1.80, (820, 1900), 0.004),
        row("careful-large", Status.READY, 0.93, 2.60, (1050, 2400), 0.005, k=1, mean=0.0027, pairs=1620),
        row("cheap-mini", Status.WORSE, 0.74, 0.30, (380, 900), 0.006, k=2, mean=-0.0045, pairs=1840),
        row("flash", Status.GUARDRAIL, 0.84, 0.12, (180, 450), 0.065, k=3, mean=0.0007, pairs=1500,
            status_detail="guardrail: error rate", not_run=120),
        row("careful-mini", Status.COLLECTING, 0.85, 0.55, (430, 1000), 0.003, k=4, mean=0.004, pairs=140,
            status_detail="collecting (140/400)"),
    ]
    settings = {
        "slot": SLOT,
        "generated_at": PERIOD_START + timedelta(days=2, hours=5),
        "period_id": 3,
        "period_started_at": PERIOD_START,
        "champion": rows[0].version_id,
        "value_per_point": VALUE_PER_POINT,
        "min_samples": MIN_SAMPLES,
        "min_effect_usd": MIN_EFFECT,
        "alpha": ALPHA,
        "rows": rows,
        "eval_spend_usd": 3.42,
        "reactions": {"thumbs_up": 412, "thumbs_down": 37},
    }
    return Leaderboard(**(settings | changes))


def demo_history(board: Leaderboard, snapshots: int = 10) -> list[EvidencePoint]:
    """Each challenger's evidence at `snapshots` evenly spaced scoring runs, reaching today's pairs.

    The running mean wanders towards the final one, as a real running mean does.
    """
    history = []
    for k, challenger in enumerate((r for r in board.rows if r.comparison), start=1):
        final = challenger.comparison
        for i in range(1, snapshots + 1):
            pairs = max(2, final.pairs * i // snapshots)
            wobble = SD * 1.5 * math.sin(1.7 * i + k) / pairs**0.5
            mean = final.net.mean + wobble * (i < snapshots)
            taken_at = board.period_started_at + timedelta(hours=5 * i)
            history.append(EvidencePoint(taken_at=taken_at, version_id=challenger.version_id, pairs=pairs,
                                         net=net_interval(mean, pairs, k)))
    return history


def bare_row(version_id: str, cost: float | None, quality: float | None) -> VariantRow:
    return VariantRow(
        version_id=version_id,
        label=version_id,
        role="challenger",
        status=Status.COLLECTING,
        cost_per_1k_usd=cost,
        mean_quality=quality,
    )


class ResourceFinder(HTMLParser):
    """Collects every attribute that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.references += [v or "" for k, v in attrs if k in {"src", "href", "xlink:href", "srcset", "data"}]


def parsed(page: str) -> ResourceFinder:
    finder = ResourceFinder()
    finder.feed(page)
    return finder


# ── Markdown ────────────────────────────────────────────────────────────────────────────


def test_markdown_has_one_row_per_variant_with_the_champion_first():
    board = demo_board(rows=list(reversed(demo_board().rows)))  # the champion arrives last
    table = [line for line in render_markdown(board).splitlines() if line.startswith("| `")]
    assert len(table) == len(board.rows)
    assert board.champion in table[0] and "| champion |" in table[0]


def test_markdown_gives_the_exact_promote_command():
    board = demo_board()
    careful = board.rows[1]
    assert board.recommendation == f"shadowzoo promote {SLOT} {careful.version_id}"
    assert f"**Recommendation:** `{board.recommendation}`" in render_markdown(board)


def test_markdown_row_shows_status_money_latency_and_the_paired_interval():
    board = demo_board()
    flash = next(line for line in render_markdown(board).splitlines() if "`flash-" in line)
    assert "guardrail: error rate" in flash
    assert "$0.12" in flash and "180 / 450 ms" in flash and "6.5%" in flash
    assert format_interval(board.rows[3].comparison.net) in flash and "1,500" in flash


def test_markdown_says_why_there_is_no_recommendation_for_each_challenger():
    board = demo_board(rows=[r for r in demo_board().rows if r.status != Status.READY])
    markdown = render_markdown(board)
    assert "**No recommendation.** No challenger is ready." in markdown
    assert "the champion earns more per request (upper bound -$0.0028)" in markdown  # cheap-mini: worse
    assert "guardrail: error rate — vs the champion: errors +6.1 pts · p95 0.24×" in markdown  # flash
    assert "needs 260 pairs more before any verdict" in markdown  # careful-mini: collecting


def test_markdown_notes_carry_the_settings_spend_and_reactions():
    markdown = render_markdown(demo_board())
    facts = ["2025-03-03 09:00 UTC", "α = 0.05", "min_samples = 400", "min_effect = $0.00050",
             "value_per_point = $0.050", "$3.42", "thumbs_up 412", "flash: 120 calls not run"]
    assert [fact for fact in facts if fact not in markdown] == []


def test_markdown_keeps_a_pipe_in_a_label_inside_its_cell():
    board = demo_board()
    board.rows[3].status_detail = "guardrail: a|b"
    flash = next(line for line in render_markdown(board).splitlines() if "`flash-" in line)
    assert flash.count(" | ") == 9 and "a\\|b" in flash


# ── formatting ──────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("value", "signed", "shown"),
    [
        (1234.5, False, "$1,234.50"),
        (0.42, False, "$0.42"),
        (0.0012, True, "+$0.0012"),
        (-0.00031, True, "-$0.00031"),
        (0.0, True, "$0.00"),
        (None, False, "–"),
    ],
)
def test_usd_keeps_two_significant_digits_of_sub_cent_amounts(value, signed, shown):
    assert usd(value, signed=signed) == shown


def test_an_interval_prints_its_bounds_at_the_precision_of_its_mean():
    assert format_interval(Interval(mean=0.0012, lower=0.0004, upper=0.0021)) == "+$0.0012 [+0.0004, +0.0021]"
    assert format_interval(Interval(mean=0.5, lower=float("-inf"), upper=float("inf"))) == "+$0.50 [-∞, +∞]"
    assert format_interval(Interval(mean=0.001)) == "+$0.0010 [–, –]"
    assert format_interval(Interval()) == "–"


# ── Pareto frontier and labels ──────────────────────────────────────────────────────────


def test_the_pareto_frontier_holds_exactly_the_variants_nothing_beats_on_cost_and_quality():
    rows = [
        bare_row("cheapest", 0.10, 0.70),
        bare_row("dominated", 0.50, 0.65),  # cheapest is cheaper and better
        bare_row("middle", 0.60, 0.85),
        bare_row("same-cost-worse", 0.60, 0.80),  # as cheap as middle, worse
        bare_row("best", 2.00, 0.95),
        bare_row("costly-and-worse", 2.50, 0.90),
    ]
    assert [r.version_id for r in pareto_frontier(rows)] == ["cheapest", "middle", "best"]


def test_equal_variants_both_stay_on_the_frontier_and_unplaceable_ones_are_left_out():
    rows = [bare_row("a", 1.0, 0.8), bare_row("b", 1.0, 0.8), bare_row("no-price", None, 0.99)]
    assert [r.version_id for r in pareto_frontier(rows)] == ["a", "b"]
    assert pareto_frontier([]) == []


def test_the_demo_frontier_is_flash_careful_mini_baseline_careful_large():
    frontier = pareto_frontier(demo_board().rows)
    assert [r.label for r in frontier] == ["flash", "careful-mini", "baseline", "careful-large"]


def test_labels_of_nearby_points_do_not_overlap():
    points = [(100.0, 100.0, "careful-mini"), (104.0, 102.0, "cheap-mini"), (108.0, 98.0, "flash")]
    placed = place_labels(points, Box(0, 0, 400, 300))
    width = lambda text: len(text) * 6.8  # noqa: E731
    boxes = []
    for (x, y, anchor), (_, _, text) in zip(placed, points):
        left = {"start": x, "middle": x - width(text) / 2, "end": x - width(text)}[anchor]
        boxes.append(Box(left, y - 12, left + width(text), y + 4))
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


# ── HTML ────────────────────────────────────────────────────────────────────────────────


def test_html_is_self_contained():
    page = render_html(demo_board(), demo_history(demo_board()))
    found = parsed(page)
    assert "script" not in found.tags and "link" not in found.tags and "img" not in found.tags
    assert found.references == []
    assert not re.search(r"https?://|url\((?!#)|@import|<script", page)


def test_html_escapes_text_from_data():
    board = demo_board()
    board.rows[2].label = "<script>alert(1)</script>"
    board.rows[2].status_detail = 'worse "&" <b>'
    page = render_html(board, demo_history(board))
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "worse &quot;&amp;&quot; &lt;b&gt;" in page


def test_html_draws_the_three_charts():
    board = demo_board()
    page = render_html(board, demo_history(board))
    assert page.count("<svg") == 3
    for label in ("mean quality against cost", "net value difference per request", "cumulative evidence"):
        assert f'aria-label="{label}' in page
    assert 'class="frontier"' in page and page.count('class="band"') >= 4  # one band per challenger (+ legend)


def test_html_puts_the_promote_command_in_the_advice_box():
    board = demo_board()
    page = render_html(board, [])
    assert f'<code class="command">{board.recommendation}</code>' in page
    assert page.index("Ready to promote") < page.index("<table")


def test_html_drops_evidence_from_before_the_current_period():
    board = demo_board()
    stale = EvidencePoint(
        taken_at=PERIOD_START - timedelta(days=1),
        version_id=board.rows[1].version_id,
        pairs=99_999,
        net=Interval(mean=0.1, lower=0.0, upper=0.2),
    )
    assert "99,999" not in render_html(board, [stale, *demo_history(board)])


def with_net(variant: VariantRow, net: Interval, pairs: int | None = None) -> VariantRow:
    """`variant` with its comparison's net interval (and pairs) replaced."""
    assert variant.comparison is not None
    update = {"net": net} if pairs is None else {"net": net, "pairs": pairs}
    return variant.model_copy(update={"comparison": variant.comparison.model_copy(update=update)})


def edge_boards() -> dict[str, tuple[Leaderboard, list[EvidencePoint]]]:
    """Boards a report meets at the edges of a slot's life, each with its history."""
    full = demo_board()
    champion = full.rows[0]
    no_intervals = [with_net(r, Interval()) if r.comparison else r for r in full.rows]
    unbounded = Interval(mean=0.01, lower=-math.inf, upper=math.inf)
    one_pair = demo_board(rows=[champion, with_net(full.rows[4], unbounded, pairs=1)])
    unpriced = full.rows[3].model_copy(
        update={"status": Status.PRICE_UNKNOWN, "status_detail": "", "cost_per_1k_usd": None, "net_per_1k_usd": None}
    )
    naive = demo_board(generated_at=datetime(2025, 3, 5), period_started_at=None, period_id=None)
    return {
        "no variants": (demo_board(rows=[], champion=None), []),
        "a single variant": (demo_board(rows=[champion]), []),
        "no history": (full, []),
        "intervals None": (demo_board(rows=no_intervals), []),
        "one pair, infinite bounds": (one_pair, demo_history(one_pair, snapshots=1)),
        "no price": (demo_board(rows=[champion, unpriced]), []),
        "naive times, no period": (naive, demo_history(full)),
    }


@pytest.mark.parametrize("case", list(edge_boards()))
def test_edge_boards_render_with_a_sentence_instead_of_a_chart(case):
    board, history = edge_boards()[case]
    page, markdown = render_html(board, history), render_markdown(board)
    assert page.endswith("</html>\n") and markdown.strip()
    if board.rows and not any(r.role == "challenger" for r in board.rows):
        assert "No challenger is ready" in page and "No challengers are being evaluated" in markdown
    if not history:
        assert "No evidence snapshots for this evaluation period yet" in page


def test_an_unpriced_variant_is_named_under_the_scatter_and_explained():
    board, _ = edge_boards()["no price"]
    page = render_html(board, [])
    assert "Not plotted (no cost or quality yet): flash." in page
    assert "its model has no price" in page


def test_bounds_not_yet_known_are_shown_as_such():
    page = render_html(*edge_boards()["one pair, infinite bounds"])
    assert "+$0.010 [-∞, +∞]" in page and "1 pair ·" in page
    assert "no estimate yet" in render_html(*edge_boards()["intervals None"])


# ── chart geometry ──────────────────────────────────────────────────────────────────────

TEXT = re.compile(r'<text x="([-\d.]+)" y="([-\d.]+)" text-anchor="(\w+)" class="([\w-]+)">([^<]*)</text>')


def text_boxes(svg: str) -> dict[str, Box]:
    """Every text element's box, by its text, with the 2 px margin the report's label layout keeps."""
    boxes = {}
    for x, y, anchor, _, content in TEXT.findall(svg):
        width = len(content) * 6.8
        left = {"start": float(x), "middle": float(x) - width / 2, "end": float(x) - width}[anchor]
        boxes[content] = Box(left - 2, float(y) - 12, left + width + 2, float(y) + 4)
    return boxes


def chart(page: str, label: str) -> str:
    start = page.index(f'aria-label="{label}')
    return page[start: page.index("</svg>", start)]


@pytest.mark.parametrize("min_effect", [0.00001, 0.0, -0.02])
def test_the_min_effect_label_keeps_off_the_zero_label_near_it_or_left_of_it(min_effect):
    board = demo_board(min_effect_usd=min_effect)
    board.rows[1].comparison.net = Interval(mean=0.4, lower=0.2, upper=0.6)  # a wide axis: the lines nearly meet
    boxes = text_boxes(chart(render_html(board, []), "net value difference per request"))
    effect = next(box for text, box in boxes.items() if text.startswith("min effect"))
    assert not effect.overlaps(boxes["0"])


def test_a_free_variant_of_quality_zero_is_drawn_clear_of_the_axes_and_their_corner():
    board = demo_board()
    board.rows[2].cost_per_1k_usd, board.rows[2].mean_quality = 0.0, 0.0
    svg = chart(render_html(board, []), "mean quality against cost")
    axes = re.findall(r'<line x1="([-\d.]+)" y1="([-\d.]+)" x2="([-\d.]+)" y2="([-\d.]+)" class="axis"/>', svg)
    (x_axis_y,) = {float(y1) for _, y1, _, y2 in axes if y1 == y2}
    (y_axis_x,) = {float(x1) for x1, _, x2, _ in axes if x1 == x2}
    tip = re.escape(board.rows[2].version_id)
    cx, cy = map(float, re.search(rf'<circle cx="([-\d.]+)" cy="([-\d.]+)"[^>]*><title>{tip}', svg).groups())
    assert cx - y_axis_x >= 10 and x_axis_y - cy >= 10  # the marker (radius 6.5 + stroke) touches neither axis
    assert {(float(x1), float(y1)) for x1, y1, _, _ in axes} == {(y_axis_x, x_axis_y)}  # the axes still meet
