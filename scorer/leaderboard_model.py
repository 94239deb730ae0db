"""The leaderboard as data: what the CLI prints, the reports draw, and snapshots store.

One row per variant of a slot, champion first. Descriptive columns (quality, cost,
latency, errors, net value) describe each variant on its own scored requests; the paired
columns compare each challenger with the champion on the requests both answered, with
always-valid intervals, within the current evaluation period.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, computed_field

from registry.records import UtcDatetime


class Status(StrEnum):
    """A variant's standing; `ready` is advice, a human (or auto_promote) decides."""

    CHAMPION = "champion"
    READY = "ready"
    COLLECTING = "collecting"
    WORSE = "worse"
    GUARDRAIL = "guardrail"
    PRICE_UNKNOWN = "price unknown"
    PAUSED = "paused"
    NO_DATA = "no data"


class Interval(BaseModel):
    """A mean with its always-valid interval (bounds are None until there is a variance)."""

    mean: float | None = None
    lower: float | None = None
    upper: float | None = None


class Comparison(BaseModel):
    """A challenger against the champion on paired requests of the current period."""

    pairs: int = Field(0, description="Complete pairs in the evidence.")
    alpha: float = Field(description="This challenger's share of the slot's α.")
    net: Interval = Field(description="Mean net-value difference per request, USD (challenger − champion); the "
                                      "bounds are the running intersection of the period's intervals.")
    quality: Interval = Field(description="Mean quality difference per request.")
    cost: Interval = Field(description="Mean cost difference per request, USD.")
    error_rate_delta: float | None = Field(None, description="Challenger error rate − champion error rate.")
    p95_latency_ratio: float | None = Field(None, description="Challenger p95 ÷ the p95 of the champion's control "
                                                              "replays.")
    latency_baseline: str = Field("none", description="`control` when the champion's control replays gave the "
                                                      "baseline; `none` when there were none (older snapshots "
                                                      "may say `champion`: its live latencies).")


class VariantRow(BaseModel):
    """One line of the leaderboard."""

    version_id: str
    label: str
    role: str = Field(description="champion or challenger.")
    kind: str = Field("chat", description="chat, or python: challenger-only, it answers captured traffic, never users.")
    status: Status
    status_detail: str = Field("", description="e.g. `collecting (120/200)`, `guardrail: p95 latency`.")
    n: int = Field(0, description="Scored requests.")
    mean_quality: float | None = None
    cost_per_1k_usd: float | None = None
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    error_rate: float | None = None
    net_per_1k_usd: float | None = None
    not_run: int = Field(0, description="Calls shadowzoo never made (budget, pause).")
    metric_errors: int = Field(0, description="Answers a metric could not score: a label of the wrong type, a python "
                                              "metric that raised, a judge reply that never parsed.")
    comparison: Comparison | None = None

    @property
    def display_status(self) -> str:
        return self.status_detail or self.status.value

    @property
    def promotable(self) -> bool:
        """Whether `promote` can make it the champion: only chat variants answer users."""
        return self.kind == "chat"


class JudgeState(BaseModel):
    """Where a judge metric stands today: its spend against its budget, and what waits for it."""

    metric_key: str
    spent_today_usd: float = Field(description="Grader spend since midnight UTC.")
    daily_budget_usd: float
    unjudged: int = Field(0, description="Sampled answers of the current evidence still without a verdict.")

    @property
    def budget_reached(self) -> bool:
        return self.spent_today_usd >= self.daily_budget_usd


class Slice(BaseModel):
    """The tags a slice view selects, and the α share its comparisons use."""

    where: dict[str, str] = Field(description="Tag conditions: a request is in the slice when it carries them all.")
    position: int = Field(description="The slice's order among the slices looked at in the period.")
    alpha: float = Field(description="The slice's own share of the slot's α, split among its challengers.")
    note: str = Field(description="What the slice's numbers are, in one paragraph, for the board.")


class Leaderboard(BaseModel):
    """A slot's leaderboard at one moment."""

    slot: str
    generated_at: UtcDatetime
    period_id: int | None
    period_started_at: UtcDatetime | None
    champion: str | None
    value_per_point: float
    min_samples: int
    min_effect_usd: float
    alpha: float
    rows: list[VariantRow]
    eval_spend_usd: float = Field(0.0, description="Judge spend: evaluation cost, never charged to a variant.")
    reactions: dict[str, float] = Field(
        default_factory=dict, description="Reactions to the champion's answers (shown, never paired)."
    )
    since: UtcDatetime | None = Field(None, description="Descriptive columns cover traffic from this time on.")
    judges: list[JudgeState] = Field(default_factory=list, description="Each judge metric's budget and backlog.")
    latency_guardrail: str = Field("", description="Whether the p95 latency guardrail was applied, and against what "
                                                   "or why not, in one sentence.")
    latency_guardrail_applied: bool = Field(False, description="Whether challengers' p95 latency was checked at all.")
    slice: Slice | None = Field(None, description="Set on a slice view (`--where`): every number covers the slice "
                                                  "only; never stored, never a recommendation.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def recommendation(self) -> str | None:
        """The promote command the evidence supports: the promotable ready challenger with the best lower bound
        (none on a slice view: promotion acts on the whole period's evidence)."""
        if self.slice is not None:
            return None
        ready = [r for r in self.rows if r.status == Status.READY and r.promotable and r.comparison
                 and r.comparison.net.lower is not None]
        if not ready:
            return None
        best = max(ready, key=lambda r: r.comparison.net.lower)  # type: ignore[union-attr]
        return f"shadowzoo promote {self.slot} {best.version_id}"


class EvidencePoint(BaseModel):
    """How one challenger's evidence stood at one snapshot: for the cumulative chart."""

    taken_at: UtcDatetime
    version_id: str
    pairs: int
    net: Interval
