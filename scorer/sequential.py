"""Paired sequential statistics: an always-valid interval on the mean net-value difference.

For each challenger the scorer keeps the paired differences
``d_r = net(r, challenger) - net(r, champion)`` (USD) of the current evaluation period. The
daemon re-scores every few minutes and acts on what it sees, so a fixed-n interval would be
checked hundreds of times and its error rate would grow with every look. This module
provides instead a *confidence sequence*: a sequence of intervals that covers the true mean
at all n simultaneously with probability ≥ 1 − α, so looking after every batch, and
stopping on what one sees, is allowed.

The boundary
------------
Robbins' normal mixture, in the form of Howard, Ramdas, McAuliffe & Sekhon (2021),
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of Statistics
49(2), 1055–1080. For a sum ``S_n`` of centred σ²-sub-Gaussian increments with intrinsic
time ``V = n·σ²``, mixing ``exp(λS − λ²V/2)`` over ``λ ~ N(0, 1/ρ)`` gives the nonnegative
supermartingale ``sqrt(ρ/(V+ρ))·exp(S²/(2(V+ρ)))``; Ville's inequality bounds the chance
that it ever reaches 1/α by α, which is the two-sided time-uniform boundary

    |S_n| < u(V) = sqrt((V + ρ) · log((V + ρ) / (ρ · α²)))      for all n, w.p. ≥ 1 − α.

(The same closed form is ``TwoSidedNormalMixture::bound`` in confseq, the paper's
reference implementation.) Dividing by n gives the radius on the mean.

The mixing parameter ρ sets where the boundary is tightest. ``u(V)²`` at ``V = m`` is
``m·x/(x−1)·log(x/α²)`` with ``x = (m+ρ)/ρ``; setting its derivative in x to zero gives
``log(x/α²) = x − 1``, i.e. ``x = −W₋₁(−α²/e)`` (the lower branch of Lambert's W), so

    ρ* = m / (−W₋₁(−α²/e) − 1)          (≈ m / 8.21 for α = 0.05).

confseq's ``best_rho`` uses the asymptotic expansion of the same optimum,
``m / (2·log(1/α) + log(1 + 2·log(1/α)))`` (≈ m / 7.94 for α = 0.05); we use the exact
minimiser, which scipy's ``lambertw`` gives directly. We tune it for
``V = min_samples · σ²``: the boundary is tightest at ``n = min_samples``, the first n
at which a verdict is allowed.

Estimated variance
------------------
σ² is unknown, so the interval plugs in the sample variance σ̂²: ``V = n·σ̂²`` and
``ρ = σ̂²·ρ*`` with ρ* in units of pairs. Then ``(V+ρ)/ρ = (n+ρ*)/ρ*`` and the radius on the
mean is ``σ̂ · sqrt((n+ρ*)·log((n+ρ*)/(ρ*α²))) / n``: the CLT-scaled (studentised) normal
mixture, which is the asymptotic confidence sequence of Waudby-Smith, Arbour, Sinha,
Kennedy & Ramdas (2024), "Time-uniform central limit theory and asymptotic confidence
sequences", Annals of Statistics 52(6). Its guarantee is asymptotic: early on, σ̂² can be
far too small (a handful of pairs in which champion and challenger happened to agree), and
the interval would then be overconfident. Three guards:

* fewer than two pairs give the interval (−∞, +∞): there is no variance estimate;
* **no verdict of any kind (neither ready nor worse) before n ≥ min_samples.** This is
  the "delayed start" of the normal-mixture test, whose type-I error tends to α as the
  burn-in grows (Bibaut, Kallus & Lindon, "Near-optimal, near-calibrated, non-parametric
  sequential tests and confidence sequences with possibly dependent observations",
  arXiv:2212.14411). It needs no scale (min_samples is already a slot setting, and is
  where ρ makes the boundary tightest), which is why it is the default guard. The A/A
  simulations (``bench/aa_simulation.py``) check the resulting error at realistic n,
  with discrete, skewed net values;
* an optional ``variance_floor`` (USD²), for the one case the burn-in does not cover: a
  skewed difference whose mean is set by rare events, e.g. a cheaper challenger that
  loses a point on 1% of requests. Before enough of those events are seen, the sample
  variance holds only the small cost differences and the interval excludes a mean that
  the rare losses cancel (the benchmark's ``skewed_null``: 18% false "ready" at a 1%
  loss rate with min_samples 200, 62% at 0.25%). ``value_per_point² · p`` assumes that a
  fraction p of pairs may differ by a whole quality point; with p = 0.01 those rates
  fall to 0.13% and 0%, and to 4.6% at a 2% loss rate. It costs samples only when the
  true variance is below it. The scorer passes ``scoring.variance_floor_fraction``
  (default 0.01) × value_per_point²; the functions here default to 0, which disables it.

Running intersection
--------------------
Each look gives an interval centred on the current mean, so consecutive looks can
disagree: ready at 265 pairs, not at 310, ready again at 337. A confidence sequence covers
the mean at all n at once, so the intersection of its intervals covers it too (Howard et
al. 2021): the scorer reports, per challenger and evaluation period, the running
intersection of the intervals from min_samples pairs on (:func:`running_intersection`),
and gives its verdict on that (:func:`verdict` with ``running``). A verdict on the
interval, once reached in a period, then stays; the guardrails (error rate, latency) are
checked afresh at every look. "Ever ready" is the same with or without it (a look that is
ready makes the intersection ready from then on), so the A/A figures of the benchmark
hold for it.

α-spending across challengers
-----------------------------
See :func:`alpha_share`: the k-th challenger whose evaluation period starts in a slot's
period gets α·6/(π²k²), fixed when its period starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
# scipy.special, not scipy.stats: the t quantile is `stdtrit` itself, and scipy.stats costs every
# process that scores (each daemon) about a second of CPU to import
from scipy.special import lambertw, stdtrit

Number = float | NDArray[np.float64]


class Verdict(StrEnum):
    """What the sequential interval says about a challenger (guardrails are checked elsewhere)."""

    READY = "ready"
    WORSE = "worse"
    COLLECTING = "collecting"


def _plain(value: Any) -> Any:
    """A 0-d numpy value as a Python scalar, anything else unchanged."""
    return value.item() if isinstance(value, np.ndarray | np.generic) and np.ndim(value) == 0 else value


@dataclass(frozen=True)
class PairedMoments:
    """Count, mean and sum of squared deviations (M2) of the paired differences seen so far.

    Mergeable (Chan, Golub & LeVeque's pairwise update), so the daemon appends each new
    batch of differences, or combines partial results, without rescanning old pairs; the
    update subtracts means before squaring, so it stays accurate for tiny USD differences
    whose mean is large relative to their spread. Immutable: ``add_many`` and ``merge``
    return a new value.

    Fields are Python numbers for one challenger. They may also be numpy arrays of one
    shape, and then every operation here and in this module works elementwise: the A/A
    simulations track thousands of runs at once that way.
    """

    n: int | NDArray[np.int64] = 0
    mean: Number = 0.0
    m2: Number = 0.0

    @classmethod
    def of(cls, values: ArrayLike, axis: int = -1) -> PairedMoments:
        """The moments of ``values`` along ``axis`` (two-pass within the batch, for accuracy)."""
        x = np.asarray(values, dtype=np.float64)
        n = x.shape[axis]
        if n == 0:
            zeros = np.zeros(np.delete(x.shape, axis))
            return cls(n=0, mean=_plain(zeros), m2=_plain(zeros))
        mean = x.mean(axis=axis, keepdims=True)
        m2 = ((x - mean) ** 2).sum(axis=axis)
        return cls(n=n, mean=_plain(np.squeeze(mean, axis=axis)), m2=_plain(m2))

    def add_many(self, values: ArrayLike) -> PairedMoments:
        """These moments with a batch of new differences appended (along the last axis)."""
        return self.merge(PairedMoments.of(values))

    def merge(self, other: PairedMoments) -> PairedMoments:
        """The moments of the union of both samples; merging an empty sample is a no-op."""
        n = self.n + other.n
        safe_n = np.maximum(n, 1)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / safe_n)
        m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / safe_n)
        return PairedMoments(n=_plain(n), mean=_plain(mean), m2=_plain(m2))

    @property
    def variance(self) -> Number:
        """Unbiased sample variance M2/(n−1); NaN below two pairs, where it is undefined."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(np.asarray(self.n) >= 2, self.m2 / np.maximum(np.asarray(self.n) - 1, 1), np.nan)
        return _plain(var)

    def to_dict(self) -> dict[str, int | float]:
        """A plain, JSON-ready dict (for a DuckDB row); only for scalar moments."""
        if any(np.ndim(v) for v in (self.n, self.mean, self.m2)):
            raise TypeError("only scalar PairedMoments can be serialised; these hold arrays")
        return {"n": int(self.n), "mean": float(self.mean), "m2": float(self.m2)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairedMoments:
        """Inverse of :meth:`to_dict`; rejects missing keys and impossible values."""
        try:
            n, mean, m2 = int(data["n"]), float(data["mean"]), float(data["m2"])
        except KeyError as missing:
            raise ValueError(f"paired moments need keys n, mean and m2; {missing} is missing") from None
        if n < 0 or m2 < 0 or not (math.isfinite(mean) and math.isfinite(m2)):
            raise ValueError(f"impossible paired moments: n={n}, mean={mean}, m2={m2}")
        return cls(n=n, mean=mean, m2=m2)


def _check_alpha(alpha: ArrayLike) -> NDArray[np.float64]:
    a = np.asarray(alpha, dtype=np.float64)
    if not np.all((a > 0) & (a < 1)):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return a


def mixing_parameter(alpha: ArrayLike, min_samples: int) -> Number:
    """ρ*, in units of pairs, that makes the normal-mixture boundary tightest at n = min_samples.

    ``ρ* = min_samples / (−W₋₁(−α²/e) − 1)``: the exact minimiser over ρ of the boundary
    ``u`` at intrinsic time ``min_samples`` (derivation in the module docstring).
    """
    if min_samples < 1:
        raise ValueError(f"min_samples must be at least 1, got {min_samples}")
    a = _check_alpha(alpha)
    x = -lambertw(-(a**2) / math.e, k=-1).real
    return _plain(min_samples / (x - 1.0))


def mixture_boundary(v: ArrayLike, rho: ArrayLike, alpha: ArrayLike) -> Number:
    """Two-sided normal-mixture boundary on a sum: ``sqrt((v+ρ)·log((v+ρ)/(ρ·α²)))``.

    With ``v`` the intrinsic time (n·σ² for σ²-sub-Gaussian increments), the centred sum
    stays inside ±u(v) at every n with probability ≥ 1 − α (Howard et al. 2021).
    """
    a = _check_alpha(alpha)
    vr = np.asarray(v, dtype=np.float64) + rho
    return _plain(np.sqrt(vr * np.log(vr / (np.asarray(rho) * a**2))))


def confidence_interval(
    moments: PairedMoments, alpha: ArrayLike, min_samples: int, variance_floor: float = 0.0
) -> tuple[Number, Number]:
    """The always-valid ``(lower, upper)`` bounds on the mean difference after ``moments.n`` pairs.

    ``mean ± σ̂·u_std(n)/n`` where ``u_std`` is :func:`mixture_boundary` at ``v = n`` with
    ``ρ = mixing_parameter(alpha, min_samples)``; equivalently the boundary with
    ``V = n·σ̂²`` and ``ρ = σ̂²·ρ*`` on the sum. σ̂² is raised to ``variance_floor`` (USD²)
    when below it. ``(−∞, +∞)`` below two pairs.
    """
    rho = mixing_parameter(alpha, min_samples)
    n = np.asarray(moments.n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.maximum(moments.variance, variance_floor))
        radius = sd * mixture_boundary(n, rho, alpha) / n
    radius = np.where(n >= 2, radius, np.inf)
    return _plain(moments.mean - radius), _plain(moments.mean + radius)


def verdict(
    moments: PairedMoments,
    alpha: ArrayLike,
    min_samples: int,
    min_effect: float = 0.0,
    variance_floor: float = 0.0,
    *,
    running: bool = False,
) -> Verdict | NDArray[np.str_]:
    """``ready`` / ``worse`` / ``collecting`` for a challenger with its own share of α.

    On the interval of each look alone (:func:`confidence_interval`, with ``variance_floor``),
    or with ``running`` on the running intersection of the looks along the last axis
    (:func:`running_intersection`), as the scorer gives it: then ready or worse, once
    reached, stays. :func:`bounds_verdict` says what an interval means.
    """
    lower, upper = confidence_interval(moments, alpha, min_samples, variance_floor)
    if running:
        lower, upper = running_intersection(moments.n, lower, upper, min_samples)
    return bounds_verdict(moments.n, lower, upper, min_samples, min_effect)


def bounds_verdict(
    n: ArrayLike, lower: ArrayLike, upper: ArrayLike, min_samples: int, min_effect: float = 0.0
) -> Verdict | NDArray[np.str_]:
    """What an interval on the mean difference says after ``n`` pairs.

    * ready: n ≥ min_samples and the lower bound exceeds ``min_effect`` (USD per request);
    * worse: n ≥ min_samples and the upper bound is below zero;
    * collecting: otherwise. Ready is tested first, so a negative ``min_effect``
      (non-inferiority) wins over worse when both hold.

    Both verdicts wait for min_samples because the variance estimate behind the interval
    is unreliable before (see the module docstring). Arrays give an array of the verdicts'
    string values.
    """
    enough = np.asarray(n) >= min_samples
    codes = np.where(
        enough & (np.asarray(lower) > min_effect),
        Verdict.READY.value,
        np.where(enough & (np.asarray(upper) < 0), Verdict.WORSE.value, Verdict.COLLECTING.value),
    )
    return Verdict(codes.item()) if codes.ndim == 0 else codes


def running_intersection(
    n: ArrayLike, lower: ArrayLike, upper: ArrayLike, min_samples: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The running intersection of the intervals of successive looks (the last axis), from min_samples on.

    Each bound is the tightest so far: the highest lower bound, the lowest upper bound.
    When a confidence sequence covers the mean at every n at once, it covers it at their
    intersection too, so the intersection is still valid and only ever narrows: a bound
    that once cleared min_effect (or zero) keeps clearing it, and its verdict stays.
    Crossed bounds (lower above upper) mean the sequence missed, which it does at most α
    of the time; they are kept as they are, not hidden.

    Looks before min_samples keep their own bounds: the variance estimate behind them may be
    far too small (see the module docstring), and one overconfident early look would then
    pin the intersection for the rest of the period. ``n`` must not decrease along the axis.
    """
    enough = np.asarray(n) >= min_samples
    lo, hi = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    running_lo = np.maximum.accumulate(np.where(enough, lo, -np.inf), axis=-1)
    running_hi = np.minimum.accumulate(np.where(enough, hi, np.inf), axis=-1)
    return np.where(enough, running_lo, lo), np.where(enough, running_hi, hi)


def alpha_share(k: int) -> float:
    """γ_k = 6/(π²k²): the share of the slot's α for the k-th challenger (1-based) to start.

    k counts the challengers whose evaluation period has started in the slot's current
    period, in start order; a challenger's α_i = α·γ_k is fixed when its period starts.
    Since Σ_{k≥1} 1/k² = π²/6 the shares sum to 1 however many challengers follow, so by a
    union bound the chance that *any* challenger's sequence ever errs is ≤ α, and adding a
    challenger never changes an earlier one's α. The rule is front-loaded (0.61, 0.15,
    0.068, 0.038, …) because the boundary depends on α only through log(1/α): the 4th
    challenger, at α·0.038, needs an interval only ~1.3× as wide as at full α, whereas an
    even split would have to know the number of challengers in advance.
    """
    if k < 1:
        raise ValueError(f"challengers are numbered from 1, got {k}")
    return 6.0 / (math.pi**2 * k * k)


def naive_interval(moments: PairedMoments, alpha: float = 0.05) -> tuple[Number, Number]:
    """The fixed-n Student-t interval ``mean ± t_{1−α/2, n−1}·σ̂/√n`` — for comparison only.

    Valid when n is fixed in advance and the data are looked at once; re-checked after
    every batch, its chance of ever excluding the true mean grows with the number of
    looks. The benchmark uses it to show that failure. ``(−∞, +∞)`` below two pairs.
    """
    n = np.asarray(moments.n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        radius = stdtrit(n - 1, 1 - alpha / 2) * np.sqrt(moments.variance / n)
    radius = np.where(n >= 2, radius, np.inf)
    return _plain(moments.mean - radius), _plain(moments.mean + radius)
