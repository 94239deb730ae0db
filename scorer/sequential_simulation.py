"""Monte-Carlo checks of the sequential scorer under continuous monitoring.

Shared by ``bench/aa_simulation.py`` (the published figures) and the tests (a smaller,
fixed-seed run), so both exercise the same code. Everything is vectorised over runs and
challengers: one numpy array holds every run's running moments, and the daemon's "look"
(re-score every few minutes) becomes one look every ``look_every`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import beta

from scorer.sequential import PairedMoments

NetSampler = Callable[[np.random.Generator, tuple[int, ...]], NDArray[np.float64]]
"""Draws per-request net values (USD) of one variant, independently, in the given shape."""

DiffSampler = Callable[[np.random.Generator, tuple[int, int, int]], NDArray[np.float64]]
"""Draws paired differences ``net(challenger) − net(champion)`` of shape (runs, arms, pairs)."""


@dataclass(frozen=True)
class DemoNetModel:
    """Parameters of :func:`demo_like_net`, in USD: a support-triage task with cheap calls.

    ``net = value_per_point·quality − cost − latency_cost`` with quality ∈ {0, 1}, cost
    lognormal around its median with a long right tail (p99 ≈ 18× the median for
    ``cost_sigma`` 1.25), and a latency cost only on the requests that overrun the SLO.
    """

    value_per_point: float = 0.01
    p_correct: float = 0.8
    cost_median: float = 0.0005
    cost_sigma: float = 1.25
    p_slow: float = 0.05
    mean_overrun_s: float = 2.0
    latency_cost_per_s: float = 0.0005


def demo_like_net(
    rng: np.random.Generator, shape: tuple[int, ...], model: DemoNetModel = DemoNetModel()
) -> NDArray[np.float64]:
    """Per-request net values resembling the demo task: discrete quality, skewed cost.

    This is the one stand-in for real demo data: replace it with a resampler of the demo's
    recorded per-request net values to run the same checks on them.
    """
    quality = rng.random(shape) < model.p_correct
    cost = model.cost_median * np.exp(model.cost_sigma * rng.standard_normal(shape))
    overrun = np.where(rng.random(shape) < model.p_slow, rng.exponential(model.mean_overrun_s, shape), 0.0)
    return model.value_per_point * quality - cost - model.latency_cost_per_s * overrun


def gaussian_net(rng: np.random.Generator, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Net values N(0, 1/2), so that a difference of two independent ones is N(0, 1)."""
    return rng.normal(0.0, math.sqrt(0.5), shape)


def difference_sd(net: NetSampler, rng: np.random.Generator, draws: int = 1_000_000) -> float:
    """Standard deviation of ``net(A) − net(B)`` for A, B independent draws, by Monte Carlo."""
    return float(np.sqrt(2.0) * net(rng, (draws,)).std())


def independent_variants(net: NetSampler, shift: ArrayLike = 0.0) -> DiffSampler:
    """Champion and challengers drawn independently from ``net``; challenger j's net is moved by ``shift[j]``.

    All arms of a run share the champion's draw, as challengers share the champion in
    production, so their differences are correlated. With ``shift`` 0 this is an A/A test.
    """

    def draw(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float64]:
        runs, arms, pairs = shape
        champion = net(rng, (runs, 1, pairs))
        moved = np.broadcast_to(np.asarray(shift, dtype=np.float64), (arms,))[None, :, None]
        return net(rng, shape) - champion + moved

    return draw


def cheaper_but_sometimes_wrong(loss_rate: float, model: DemoNetModel = DemoNetModel()) -> DiffSampler:
    """A challenger no better than the champion on average, with skewed differences: a hard null.

    On a fraction ``loss_rate`` of requests it gets wrong what the champion got right
    (−value_per_point); on every request it saves the same fraction of the champion's
    cost, chosen so that the mean difference is exactly 0. Most differences are small
    savings and a few are large losses, so unlike an A/A difference, which is symmetric,
    this one is strongly skewed, and a short sample that misses the rare losses looks
    like a clear win.
    """
    mean_cost = model.cost_median * math.exp(model.cost_sigma**2 / 2)
    saved_fraction = loss_rate * model.value_per_point / mean_cost
    if not 0 < saved_fraction <= 1:
        raise ValueError(f"loss_rate {loss_rate} would need saving {saved_fraction:.2f}× the cost to break even")

    def draw(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float64]:
        cost = model.cost_median * np.exp(model.cost_sigma * rng.standard_normal(shape))
        return saved_fraction * cost - model.value_per_point * (rng.random(shape) < loss_rate)

    return draw


def rare_disagreements(rate: float, model: DemoNetModel = DemoNetModel(), cost_spread: float = 0.1) -> DiffSampler:
    """Identical variants that disagree on quality only on a fraction ``rate`` of requests: an A/A
    test whose differences are rare jumps of a whole point.

    Both answer alike on most requests; on a fraction ``rate`` one of the two (either, equally
    likely) is wrong where the other is right, ±value_per_point. Both see the same request,
    so their costs differ only by a little (the challenger's is the champion's times
    ``exp(cost_spread·Z)``, its answer a bit longer or shorter). Before the first few
    disagreements the sample variance holds only those small cost differences, which is
    what makes rare jumps hard for a CLT-based interval.
    """

    def draw(rng: np.random.Generator, shape: tuple[int, int, int]) -> NDArray[np.float64]:
        runs, arms, pairs = shape
        champion_cost = model.cost_median * np.exp(model.cost_sigma * rng.standard_normal((runs, 1, pairs)))
        challenger_cost = champion_cost * np.exp(cost_spread * rng.standard_normal(shape))
        jump = np.where(rng.random(shape) < rate, rng.choice([-1.0, 1.0], size=shape), 0.0)
        return model.value_per_point * jump - (challenger_cost - champion_cost)

    return draw


def monitor(
    diffs: DiffSampler,
    rng: np.random.Generator,
    *,
    runs: int,
    arms: int = 1,
    look_every: int = 50,
    max_pairs: int = 5000,
    start_pair: Sequence[int] | None = None,
    chunk_looks: int = 10,
) -> PairedMoments:
    """Running moments of paired differences at every look, for ``runs`` independent runs.

    ``diffs`` draws each run's differences for ``arms`` challengers of one champion.
    Challenger j only counts pairs from ``start_pair[j]`` on (a challenger registered
    later; a multiple of ``look_every``). Returns :class:`PairedMoments` whose fields
    have shape ``(runs, arms, looks)``: the moments after each look, ready for
    :func:`scorer.sequential.verdict`. Data are drawn ``chunk_looks`` looks at a time to
    bound memory.
    """
    if max_pairs % look_every:
        raise ValueError("max_pairs must be a multiple of look_every")
    looks = max_pairs // look_every
    starts = np.zeros(arms, dtype=np.int64) if start_pair is None else np.asarray(start_pair, dtype=np.int64)
    if starts.shape != (arms,) or np.any(starts % look_every) or np.any(starts < 0):
        raise ValueError("start_pair needs one non-negative multiple of look_every per arm")

    current = PairedMoments(
        n=np.zeros((runs, arms), dtype=np.int64), mean=np.zeros((runs, arms)), m2=np.zeros((runs, arms))
    )
    snapshots: list[PairedMoments] = []
    for first in range(0, looks, chunk_looks):
        count = min(chunk_looks, looks - first)
        drawn = diffs(rng, (runs, arms, count * look_every))
        blocks = PairedMoments.of(drawn.reshape(runs, arms, count, look_every))
        for i in range(count):
            active = (first + i) * look_every >= starts  # (arms,)
            block = PairedMoments(
                n=np.where(active, look_every, 0)[None, :].repeat(runs, axis=0),
                mean=np.where(active, blocks.mean[:, :, i], 0.0),
                m2=np.where(active, blocks.m2[:, :, i], 0.0),
            )
            current = current.merge(block)
            snapshots.append(current)
    return PairedMoments(
        n=np.stack([s.n for s in snapshots], axis=-1),
        mean=np.stack([s.mean for s in snapshots], axis=-1),
        m2=np.stack([s.m2 for s in snapshots], axis=-1),
    )


def first_look(flags: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Index of the first True along the last axis (the first look that fired), or −1."""
    return np.where(flags.any(axis=-1), flags.argmax(axis=-1), -1)


def flipped_back(flags: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Whether a flag set at one look is unset at a later one (along the last axis): a verdict that flipped."""
    set_for_good = np.logical_and.accumulate(flags[..., ::-1], axis=-1)[..., ::-1]
    return (flags & ~set_for_good).any(axis=-1)


def binomial_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper–Pearson (exact) two-sided interval for a binomial proportion."""
    tail = (1 - confidence) / 2
    lower = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
    return lower, upper
