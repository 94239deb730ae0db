"""Leaderboard reports: a Markdown table for PRs and chat, and one self-contained HTML page.

Operators decide promotions from these reports, so both say what the leaderboard says, in
its order (champion first), with every money figure in USD and every paired difference
shown with its always-valid interval (see :mod:`scorer.sequential`). The HTML page is one
file that renders offline and the same everywhere: inline CSS and hand-drawn inline SVG,
no scripts, no external resources, so it can be attached to a ticket or mailed as is.
Every piece of text that comes from data (version ids, labels, status details, reaction
names) is escaped, because labels come from spec files anyone can write.
"""

from scorer.report.charts import Box, pareto_frontier, place_labels
from scorer.report.markdown import render_markdown
from scorer.report.page import render_html
from scorer.report.text import format_interval, judge_note, usd

__all__ = ["Box", "format_interval", "judge_note", "pareto_frontier", "place_labels", "render_html", "render_markdown", "usd"]
