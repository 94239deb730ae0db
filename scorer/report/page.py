"""The self-contained HTML report: inline CSS, the table, the recommendation and the charts."""

from __future__ import annotations

from html import escape

from scorer.leaderboard_model import EvidencePoint, Interval, Leaderboard, Status, VariantRow
from scorer.report.text import (
    DASH, challengers, fmt_latency, fmt_percent, fmt_quality, fmt_time, guardrail_facts, interval_parts,
    latency_caveat, no_recommendation_headline, not_ready_reason, notes, ordered_rows, recommendation_evidence,
    recommended_row, usd,
)
from scorer.report.svg import STATUS_COLOURS
from scorer.report.charts import empty_note, evidence_chart, net_difference_chart, quality_cost_chart

STATUS_MEANINGS: dict[Status, str] = {
    Status.CHAMPION: "serves real users; every challenger is compared with it.",
    Status.READY: "enough pairs, the interval's lower bound is above min_effect and the guardrails hold; "
                  "`ready (shadow only)`: a python variant, which answers captured traffic only and cannot be "
                  "promoted.",
    Status.COLLECTING: "not enough evidence for a verdict either way yet.",
    Status.WORSE: "the interval's upper bound is below zero: the champion is better net of cost.",
    Status.GUARDRAIL: "a guardrail (error rate, latency) failed, whatever the net value says.",
    Status.PRICE_UNKNOWN: "the variant's model has no price; its cost cannot be scored.",
    Status.PAUSED: "shadow calls are paused for this variant.",
    Status.NO_DATA: "no scored requests yet.",
}

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
     "difference vs the champion in percentage points, and p95 latency as a multiple of the p95 of the "
     "champion's control replays (only when the slot replays the champion as a control; the notes say)."),
    ("n", True, "Requests the variant answered and that were scored, in the descriptive window."),
    ("quality", True, "Mean quality in [0, 1] over those requests; an upstream error scores 0."),
    ("cost / 1k req", True, "Model cost of 1,000 requests in USD, from token counts and prices."),
    ("latency p50 / p95", True, "Median and 95th-percentile latency. Challengers answer under replay load."),
    ("errors", True, "Share of calls whose upstream failed or timed out."),
    ("net / 1k req", True, "Net value of 1,000 requests: value_per_point × quality − cost − latency cost."),
    ("net Δ / req", True,
     "Mean of (challenger − champion) net value per request on the same requests, with its always-valid "
     "interval: it stays valid however often the board is re-scored. From min_samples pairs on it is the "
     "running intersection of the period's intervals, so it only narrows and a verdict on it stays."),
    ("pairs", True, "Requests both answered with labels joined, in this period; αᵢ is the challenger's share of α."),
]


def _pill(status: Status, text: str) -> str:
    return f'<span class="pill" style="background:{STATUS_COLOURS[status]}">{escape(text)}</span>'


def _html_interval(interval: Interval) -> str:
    """The mean on its line and the bounds under it, to keep the table narrow."""
    if interval.mean is None:
        return DASH
    mean, bounds = interval_parts(interval)
    return f"{escape(mean)}<span class='sub'>{escape(bounds)}</span>"


def _html_status(row: VariantRow) -> str:
    """The status pill, with the guardrail measurements under it (they explain a guardrail status)."""
    facts = "".join(f"<span class='sub'>{escape(fact)}</span>" for fact in guardrail_facts(row))
    return _pill(row.status, row.display_status) + facts


def _html_row(row: VariantRow) -> str:
    comparison = row.comparison
    pairs = f"{comparison.pairs:,}<span class='sub'>αᵢ {comparison.alpha:.3g}</span>" if comparison else DASH
    cells = [
        f"<td><strong>{escape(row.label)}</strong><span class='sub mono'>{escape(row.version_id)}</span></td>",
        f"<td>{_html_status(row)}</td>",
        f"<td class='num'>{row.n:,}</td>",
        f"<td class='num'>{fmt_quality(row.mean_quality)}</td>",
        f"<td class='num'>{usd(row.cost_per_1k_usd)}</td>",
        f"<td class='num'>{fmt_latency(row.p50_latency_ms, row.p95_latency_ms)}</td>",
        f"<td class='num'>{fmt_percent(row.error_rate)}</td>",
        f"<td class='num'>{usd(row.net_per_1k_usd)}</td>",
        f"<td class='num'>{_html_interval(comparison.net) if comparison else DASH}</td>",
        f"<td class='num'>{pairs}</td>",
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _html_table(board: Leaderboard) -> str:
    if not board.rows:
        return empty_note("The slot has no variants yet, so there is no leaderboard.")
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
        caveat = latency_caveat(board)
        return (
            f'<section class="advice ready"><h2>Ready to promote: {escape(row.label)}</h2>'
            f'<code class="command">{escape(board.recommendation or "")}</code>'
            f"<p>{escape(recommendation_evidence(row, board))}</p>"
            + (f"<p><strong>Not checked:</strong> {escape(caveat)}</p>" if caveat else "")
            + "</section>"
        )
    reasons = "".join(
        f"<li><strong>{escape(r.label)}</strong> <span class='mono'>{escape(r.version_id)}</span>: "
        f"{escape(not_ready_reason(r, board))}</li>"
        for r in challengers(board)
    )
    headline = no_recommendation_headline(board)
    listing = f"<ul>{reasons}</ul>" if reasons else f"<p>{escape(headline)}</p>"
    title = headline.rstrip(".") if reasons else "No challenger is ready"
    return f'<section class="advice none"><h2>{escape(title)}</h2>{listing}</section>'


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
            "clipped at the panel edge; no verdict is given before min_samples pairs (dotted line), and from "
            "there on the band is the running intersection of the intervals, so it never widens again.",
            evidence_chart(board, history),
        ),
    ])


def leaderboard_sections(board: Leaderboard, history: list[EvidencePoint]) -> str:
    """Everything under the page title: meta line, advice, table, three charts, notes.

    The report wraps it in a standalone page; the daemon's web console in its own layout.
    """
    champion = board.champion or "none"
    notes_html = "".join(f"<li>{escape(note)}</li>" for note in notes(board))
    return (
        f'<p class="meta">Generated {escape(fmt_time(board.generated_at))} · champion '
        f'<span class="mono">{escape(champion)}</span> · evaluation period started '
        f"{escape(fmt_time(board.period_started_at))}</p>"
        f"{_html_recommendation(board)}"
        f"<h2>Leaderboard</h2>{_html_table(board)}{_html_help()}"
        f"{_html_charts(board, history)}"
        f'<h2>Notes</h2><ul class="notes">{notes_html}</ul>'
    )


def render_html(board: Leaderboard, history: list[EvidencePoint]) -> str:
    """The leaderboard as one self-contained HTML page: advice, table, three charts, notes."""
    title = f"shadowzoo · {board.slot} leaderboard"
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>{escape(board.slot)} · shadowzoo leaderboard</h1>"
        f"{leaderboard_sections(board, history)}"
        "</main></body></html>\n"
    )
