"""The leaderboard as a Markdown table with its recommendation, for PRs and chat."""

from __future__ import annotations

from scorer.leaderboard_model import Leaderboard, VariantRow
from scorer.report.text import (
    DASH, challengers, fmt_latency, fmt_percent, fmt_quality, fmt_time, format_interval, no_recommendation_headline,
    latency_caveat, not_ready_reason, notes, ordered_rows, recommendation_evidence, recommended_row, usd,
)

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
        fmt_quality(row.mean_quality),
        usd(row.cost_per_1k_usd),
        fmt_latency(row.p50_latency_ms, row.p95_latency_ms),
        fmt_percent(row.error_rate),
        usd(row.net_per_1k_usd),
        format_interval(comparison.net) if comparison else DASH,
        f"{comparison.pairs:,}" if comparison else DASH,
    ]
    return "| " + " | ".join(cells) + " |"


def _md_recommendation(board: Leaderboard) -> list[str]:
    row = recommended_row(board)
    if row is not None:
        lines = [f"**Recommendation:** `{board.recommendation}`", "", _md(recommendation_evidence(row, board))]
        return lines + (["", f"**Not checked:** {_md(caveat)}"] if (caveat := latency_caveat(board)) else [])
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
        f"Generated {fmt_time(board.generated_at)} · champion {champion}",
        "",
    ]
    if board.rows:
        lines += [_MD_HEADER, *(_md_row(row) for row in ordered_rows(board)), ""]
    lines += [*_md_recommendation(board), "", "Notes:", ""]
    lines += [f"- {_md(note)}" for note in notes(board)]
    return "\n".join(lines) + "\n"
