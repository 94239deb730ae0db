"""Numbers and sentences of the leaderboard: money, intervals and times formatted once, and
what the board says about each row (why it is or is not ready) in plain words.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone

from scorer.leaderboard_model import Interval, JudgeState, Leaderboard, Status, VariantRow

DASH = "–"

# ── numbers ──────────────────────────────────────────────────────────────────────────────


def is_finite(value: float | None) -> bool:
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
    mean, bounds = interval_parts(interval)
    return f"{mean} {bounds}"


def interval_parts(interval: Interval) -> tuple[str, str]:
    """The mean (`+$0.0012`) and its bounds (`[+0.0004, +0.0021]`), both at the precision the mean needs."""
    assert interval.mean is not None
    values = [abs(v) for v in (interval.mean, interval.lower, interval.upper) if is_finite(v)] or [0.0]
    places = max(_decimals(max(values)), _decimals(abs(interval.mean)))
    mean = usd(interval.mean, signed=True, decimals=places)
    return mean, f"[{_signed(interval.lower, places)}, {_signed(interval.upper, places)}]"


def fmt_percent(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value * 100:.1f}%" if value == 0 or abs(value) >= 0.01 else f"{value * 100:.2f}%"


def fmt_quality(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def fmt_latency(p50: float | None, p95: float | None) -> str:
    if p50 is None and p95 is None:
        return DASH
    return f"{_ms(p50)} / {_ms(p95)} ms"


def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:,.0f}"


def fmt_pairs(count: int) -> str:
    return f"{count:,} pair" + ("" if count == 1 else "s")


def fmt_time(moment: datetime | None) -> str:
    """Minutes are enough for a report, in UTC; naive times are UTC already, as the database stores them."""
    if moment is None:
        return DASH
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


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


def guardrail_facts(row: VariantRow) -> list[str]:
    """The guardrail measurements a comparison carries, e.g. `errors +6.1 pts`, `p95 0.24×`.

    The p95 ratio is against the champion's control replays (older snapshots: its live answers).
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
            why = f"needs {fmt_pairs(board.min_samples - pairs)} more before any verdict"
        case Status.COLLECTING if is_finite(net.lower):
            why = f"lower bound {usd(net.lower, signed=True)} is not above min_effect {usd(board.min_effect_usd)} yet"
        case Status.COLLECTING:
            why = "no interval yet"
        case Status.WORSE:
            bound = f" (upper bound {usd(net.upper, signed=True)})" if is_finite(net.upper) else ""
            why = f"the champion earns more per request{bound}"
        case Status.GUARDRAIL:
            facts = guardrail_facts(row)
            why = f"vs the champion: {' · '.join(facts)}" if facts else "a guardrail failed"
        case Status.PRICE_UNKNOWN:
            why = "its model has no price, so cost and net value cannot be scored"
        case Status.PAUSED:
            why = "no new shadow calls are made"
        case Status.NO_DATA:
            why = "no scored requests yet"
        case Status.READY if not row.promotable:
            why = f"a {row.kind} variant answers captured traffic only, never users, so it cannot be promoted"
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


def latency_caveat(board: Leaderboard) -> str:
    """The board's latency-guardrail sentence when the guardrail was not applied, else nothing."""
    return "" if board.latency_guardrail_applied else board.latency_guardrail


def no_recommendation_headline(board: Leaderboard) -> str:
    """Why there is no promote command, before any per-challenger reasons."""
    if board.slice is not None:
        return "A slice view recommends nothing: promotion acts on the whole period's evidence."
    if not board.rows:
        return "The slot has no variants yet."
    if not challengers(board):
        return "No challengers are being evaluated yet; `shadowzoo zoo register` adds one from a spec."
    if any(r.status == Status.READY for r in challengers(board)):
        return "No promotable challenger is ready."
    return "No challenger is ready."


def _alpha_shares(board: Leaderboard) -> str:
    shares = [f"{r.label} {r.comparison.alpha:.3g}" for r in challengers(board) if r.comparison]
    return ", ".join(shares) or "none yet"


def notes(board: Leaderboard) -> list[str]:
    """The settings and side facts behind the numbers, one plain-text sentence each."""
    lines = [
        f"Evaluation period {board.period_id if board.period_id is not None else DASH} "
        f"started {fmt_time(board.period_started_at)}; paired columns cover this period only.",
        f"α = {board.alpha:g} for the slot, shared among challengers ({_alpha_shares(board)}); "
        f"min_samples = {board.min_samples:,} pairs; min_effect = {usd(board.min_effect_usd)} per request.",
        f"value_per_point = {usd(board.value_per_point)}: the value of one request answered at quality 1.0; "
        "net value = value_per_point × quality − cost − latency cost.",
        f"Evaluation (judge) spend: {usd(board.eval_spend_usd)}, never charged to a variant.",
    ]
    if board.slice is not None:
        lines.insert(0, board.slice.note)
    if board.latency_guardrail:
        lines.append(board.latency_guardrail)
    lines += [judge_note(judge) for judge in board.judges]
    if board.since is not None:
        lines.append(f"Descriptive columns cover traffic since {fmt_time(board.since)}.")
    if board.reactions:
        shown = ", ".join(f"{name} {value:g}" for name, value in board.reactions.items())
        lines.append(f"Reactions to the champion's answers (shown, never paired): {shown}.")
    for row in board.rows:
        if row.not_run:
            lines.append(f"{row.label}: {row.not_run:,} calls not run (budget, rate limit or pause), not scored.")
        if row.metric_errors:
            lines.append(f"{row.label}: {row.metric_errors:,} rows a metric could not score.")
    return lines


def judge_note(judge: JudgeState) -> str:
    """A judge's spend today against its budget, and the answers still waiting for a verdict."""
    reached = "; its daily budget is reached" if judge.budget_reached else ""
    waiting = f"; {judge.unjudged:,} sampled answers wait for a verdict" if judge.unjudged else ""
    return (f"Judge {judge.metric_key}: {usd(judge.spent_today_usd)} of {usd(judge.daily_budget_usd)} "
            f"spent today{reached}{waiting}.")
