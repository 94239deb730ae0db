"""A/A, A/B, many-challenger, rare-disagreement and skewed-null simulations of the sequential scorer.

Prints one JSON object. Every run is monitored the way the daemon does it: a look every
``--look-every`` pairs up to ``--max-pairs``, a verdict at each look, and the run counts as
"ready" if any look said so. Each figure sits beside its baseline computed on the same
simulated data: the naive fixed-n t interval re-checked at every look (what a dashboard
that ignores peeking would do), and where it helps the naive interval looked at once.
"ours" is each look's own interval; "ours_as_scored" is what the scorer does by default:
the variance floor (``scoring.variance_floor_fraction`` × value_per_point²) and the
running intersection of the looks' intervals (``scorer.sequential.verdict`` with ``running``).

Sections: ``aa`` (identical variants), ``ab`` (true effects in difference-SDs, and how often
a per-look verdict of ready flips back), ``family`` (four challengers of one champion, the
last added halfway, with their α shares), ``rare_disagreements`` (identical variants that
disagree by a whole point on a rare few requests), ``skewed_null`` (a cheaper challenger
whose rare quality losses cancel its saving: no better on average, strongly skewed).

Run from the repository root: ``python -m bench.aa_simulation [--runs N] [--seed S]
[--sections rare_disagreements skewed_null]``. Its cost is bounded by ``--runs`` ×
``--max-pairs`` per scenario (about 20 s per 1,000 runs of every section here).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

from registry.workspace_config import ScoringConfig
from scorer.sequential import PairedMoments, Verdict, alpha_share, naive_interval, verdict
from scorer.sequential_simulation import (
    DemoNetModel,
    DiffSampler,
    NetSampler,
    binomial_interval,
    cheaper_but_sometimes_wrong,
    demo_like_net,
    difference_sd,
    first_look,
    flipped_back,
    gaussian_net,
    independent_variants,
    monitor,
    rare_disagreements,
)

ALPHA = 0.05
MIN_EFFECT = 0.0
EFFECTS_SD = (0.1, 0.2, 0.5)
FAMILY_ARMS = 4
LOSS_RATES = (0.05, 0.02, 0.01, 0.0025)
DISAGREEMENT_RATES = (0.02, 0.005, 0.001)
BURN_IN_FACTOR = 5  # the skewed null is also shown with min_samples × this
FLOOR_FLIP_RATE = ScoringConfig().variance_floor_fraction  # ... and with the scorer's default variance floor
BATCH_RUNS = 1000  # runs simulated at once: keeps the peak memory near 200 MB

DISTRIBUTIONS: dict[str, NetSampler] = {"gaussian": gaussian_net, "demo_like": demo_like_net}


@dataclass(frozen=True)
class Setup:
    """How every scenario is monitored."""

    runs: int
    look_every: int
    max_pairs: int
    min_samples: int


def rate(flags: NDArray[np.bool_]) -> dict[str, object]:
    """A proportion with its 95% Clopper–Pearson interval."""
    k, n = int(flags.sum()), int(flags.size)
    lo, hi = binomial_interval(k, n)
    return {"rate": round(k / n, 5), "ci95": [round(lo, 5), round(hi, 5)], "count": k, "runs": n}


def batched_paths(
    diffs: DiffSampler, seed: np.random.SeedSequence, setup: Setup, **kwargs: Any
) -> Iterator[PairedMoments]:
    """``monitor`` in batches of at most BATCH_RUNS runs, each batch with its own child seed."""
    sizes = [min(BATCH_RUNS, setup.runs - start) for start in range(0, setup.runs, BATCH_RUNS)]
    for size, child in zip(sizes, seed.spawn(len(sizes))):
        rng = np.random.default_rng(child)
        yield monitor(diffs, rng, runs=size, look_every=setup.look_every, max_pairs=setup.max_pairs, **kwargs)


def naive_flags(path: PairedMoments, min_samples: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Naive "ready" and "worse" at each look, gated by min_samples exactly like ours."""
    lower, upper = naive_interval(path, ALPHA)
    enough = np.asarray(path.n) >= min_samples
    return enough & (lower > MIN_EFFECT), enough & (upper < 0)


def ever(ready: NDArray[np.bool_], worse: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Per run, whether any look (the last axis) said ready, and whether any said worse, stacked."""
    return np.stack([ready.any(axis=-1), worse.any(axis=-1)])


def ever_verdict(verdicts: NDArray[np.str_]) -> NDArray[np.bool_]:
    """:func:`ever` of the verdicts' ready and worse."""
    return ever(verdicts == Verdict.READY.value, verdicts == Verdict.WORSE.value)


def ever_rates(batches: list[NDArray[np.bool_]]) -> dict[str, object]:
    """How often runs were ever ready, ever worse, or either, from batches of :func:`ever`."""
    ready, worse = np.concatenate(batches, axis=1)
    return {"ever_ready": rate(ready), "ever_worse": rate(worse), "ever_any_verdict": rate(ready | worse)}


def aa(net: NetSampler, seed: np.random.SeedSequence, setup: Setup) -> dict[str, object]:
    """Identical variants: how often does each method ever declare a difference?"""
    ours, naive, naive_last = [], [], []
    for path in batched_paths(independent_variants(net), seed, setup):
        ours.append(ever_verdict(verdict(path, ALPHA, setup.min_samples, MIN_EFFECT)))
        n_ready, n_worse = naive_flags(path, setup.min_samples)
        naive.append(ever(n_ready, n_worse))
        naive_last.append(n_ready[..., -1])
    return {
        "ours": ever_rates(ours),
        "naive_t_every_look": ever_rates(naive),
        "naive_t_one_look_at_max_pairs": {"ready": rate(np.concatenate(naive_last))},
    }


def median_pairs(first: NDArray[np.int64], look_every: int) -> int | None:
    """Median pairs to the first detection over all runs (undetected = later than any look)."""
    pairs = np.where(first >= 0, (first + 1) * look_every, np.iinfo(np.int64).max)
    med = np.sort(pairs.ravel())[(pairs.size - 1) // 2]
    return None if med == np.iinfo(np.int64).max else int(med)


def ab(net: NetSampler, seed: np.random.SeedSequence, setup: Setup) -> dict[str, object]:
    """A true effect of a fraction of a difference-SD: how many pairs until "ready"?"""
    sd_seed, *effect_seeds = seed.spawn(1 + len(EFFECTS_SD))
    sd = difference_sd(net, np.random.default_rng(sd_seed))
    out: dict[str, object] = {"difference_sd": sd}
    for effect, effect_seed in zip(EFFECTS_SD, effect_seeds):
        ours, naive, flips, scored_flips = [], [], [], []
        for path in batched_paths(independent_variants(net, shift=effect * sd), effect_seed, setup):
            each_look = verdict(path, ALPHA, setup.min_samples, MIN_EFFECT) == Verdict.READY.value
            ours.append(first_look(each_look))
            flips.append(flipped_back(each_look))
            scored_flips.append(flipped_back(verdict(path, ALPHA, setup.min_samples, MIN_EFFECT, running=True)
                                             == Verdict.READY.value))
            naive.append(first_look(naive_flags(path, setup.min_samples)[0]))
        ours_first, naive_first = np.concatenate(ours), np.concatenate(naive)
        out[f"{effect}sd"] = {
            "ours": {
                "median_pairs_to_ready": median_pairs(ours_first, setup.look_every),
                "detected_by_max_pairs": rate(ours_first >= 0),
                "ready_then_not_at_a_later_look": rate(np.concatenate(flips)),
            },
            "ours_as_scored": {"ready_then_not_at_a_later_look": rate(np.concatenate(scored_flips))},
            "naive_t_every_look": {
                "median_pairs_to_ready": median_pairs(naive_first, setup.look_every),
                "detected_by_max_pairs": rate(naive_first >= 0),
            },
            "fixed_n_t_test_80pct_power_pairs": math.ceil(((norm.ppf(1 - ALPHA / 2) + norm.ppf(0.8)) / effect) ** 2),
        }
    return out


def family(net: NetSampler, seed: np.random.SeedSequence, setup: Setup) -> dict[str, object]:
    """A/A with several challengers of one champion, the last registered halfway through."""
    late = (setup.max_pairs // 2) // setup.look_every * setup.look_every
    starts = [0] * (FAMILY_ARMS - 1) + [late]
    shares = np.array([alpha_share(k) for k in range(1, FAMILY_ARMS + 1)])
    spent_alpha = (ALPHA * shares)[None, :, None]
    spent, full, naive = [], [], []
    for path in batched_paths(independent_variants(net), seed, setup, arms=FAMILY_ARMS, start_pair=starts):
        spent.append((verdict(path, spent_alpha, setup.min_samples, MIN_EFFECT) == Verdict.READY.value).any(axis=-1))
        full.append((verdict(path, ALPHA, setup.min_samples, MIN_EFFECT) == Verdict.READY.value).any(axis=-1))
        naive.append(naive_flags(path, setup.min_samples)[0].any(axis=-1))
    spent_arr, full_arr, naive_arr = (np.concatenate(x) for x in (spent, full, naive))
    return {
        "challenger_start_pairs": starts,
        "alpha_shares": [round(float(s), 5) for s in shares],
        "ours_alpha_spending": {
            "family_ever_ready": rate(spent_arr.any(axis=1)),
            "per_challenger_ever_ready": [round(float(x), 5) for x in spent_arr.mean(axis=0)],
        },
        "ours_full_alpha_each": {"family_ever_ready": rate(full_arr.any(axis=1))},
        "naive_t_every_look": {"family_ever_ready": rate(naive_arr.any(axis=1))},
    }


def rare_disagreements_aa(seed: np.random.SeedSequence, setup: Setup) -> dict[str, object]:
    """Identical variants that disagree by a whole point on a rare few requests: how often a verdict?

    Symmetric, but until the first disagreements arrive the sample variance holds only
    small cost differences, so this is the A/A test a CLT-based interval finds hardest.
    """
    floor = DemoNetModel().value_per_point ** 2 * FLOOR_FLIP_RATE
    out: dict[str, object] = {"variance_floor": floor}
    for disagreement_rate, rate_seed in zip(DISAGREEMENT_RATES, seed.spawn(len(DISAGREEMENT_RATES))):
        ours, scored, naive = [], [], []
        for path in batched_paths(rare_disagreements(disagreement_rate), rate_seed, setup):
            ours.append(ever_verdict(verdict(path, ALPHA, setup.min_samples, MIN_EFFECT)))
            scored.append(ever_verdict(verdict(path, ALPHA, setup.min_samples, MIN_EFFECT, floor, running=True)))
            naive.append(ever(*naive_flags(path, setup.min_samples)))
        out[f"disagreement_rate_{disagreement_rate}"] = {
            "expected_disagreements_by_min_samples": round(disagreement_rate * setup.min_samples, 2),
            "ours": ever_rates(ours),
            "ours_as_scored": ever_rates(scored),
            "naive_t_every_look": ever_rates(naive),
        }
    return out


def skewed_null(seed: np.random.SeedSequence, setup: Setup) -> dict[str, object]:
    """Not better on average, but cheaper and rarely wrong: how often is it called "ready"?

    A/A differences are symmetric, so they cannot show what a skewed difference does to a
    CLT-based interval; this is the case that can: most pairs are small savings, a rare few
    lose a point, and the mean is exactly 0.
    """
    longer = BURN_IN_FACTOR * setup.min_samples
    floor = DemoNetModel().value_per_point ** 2 * FLOOR_FLIP_RATE
    ready = Verdict.READY.value
    out: dict[str, object] = {"variance_floor": floor}
    for loss_rate, loss_seed in zip(LOSS_RATES, seed.spawn(len(LOSS_RATES))):
        ours, ours_longer, as_scored, naive = [], [], [], []
        for path in batched_paths(cheaper_but_sometimes_wrong(loss_rate), loss_seed, setup):
            ours.append((verdict(path, ALPHA, setup.min_samples, MIN_EFFECT) == ready).any(axis=-1))
            ours_longer.append((verdict(path, ALPHA, longer, MIN_EFFECT) == ready).any(axis=-1))
            scored = verdict(path, ALPHA, setup.min_samples, MIN_EFFECT, floor, running=True)
            as_scored.append((scored == ready).any(axis=-1))
            naive.append(naive_flags(path, setup.min_samples)[0].any(axis=-1))
        out[f"loss_rate_{loss_rate}"] = {
            "expected_losses_by_min_samples": round(loss_rate * setup.min_samples, 2),
            "ours": {"ever_ready": rate(np.concatenate(ours))},
            f"ours_min_samples_{longer}": {"ever_ready": rate(np.concatenate(ours_longer))},
            "ours_as_scored": {"ever_ready": rate(np.concatenate(as_scored))},
            "naive_t_every_look": {"ever_ready": rate(np.concatenate(naive))},
        }
    return out


SECTIONS = ("aa", "ab", "family", "skewed_null", "rare_disagreements")
"""In the order of their seeds: section i always draws from the root seed's i-th child, so a
run of a few sections gives the same figures as a run of all of them."""


def main(argv: list[str] | None = None) -> None:
    """Run the chosen scenarios (every one by default) and print the figures as one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000, help="simulated runs per scenario (default 20000)")
    parser.add_argument("--seed", type=int, default=20240601, help="root seed (each scenario gets a child stream)")
    parser.add_argument("--look-every", type=int, default=50, help="pairs between two looks (default 50)")
    parser.add_argument("--max-pairs", type=int, default=5000, help="pairs per run (default 5000)")
    parser.add_argument("--min-samples", type=int, default=200, help="pairs before any verdict (default 200)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="scenarios to run")
    args = parser.parse_args(argv)
    setup = Setup(runs=args.runs, look_every=args.look_every, max_pairs=args.max_pairs, min_samples=args.min_samples)

    started = time.perf_counter()
    per_distribution = {"aa": aa, "ab": ab, "family": family}
    result: dict[str, object] = {
        "config": {
            **asdict(setup),
            "seed": args.seed,
            "alpha": ALPHA,
            "min_effect": MIN_EFFECT,
            "demo_like_net_model": asdict(DemoNetModel()),
        }
    }
    for key, section_seed in zip(SECTIONS, np.random.SeedSequence(args.seed).spawn(len(SECTIONS))):
        if key not in args.sections:
            continue
        if key in per_distribution:
            seeds = section_seed.spawn(len(DISTRIBUTIONS))
            scenario = per_distribution[key]
            result[key] = {name: scenario(net, s, setup) for (name, net), s in zip(DISTRIBUTIONS.items(), seeds)}
        else:
            result[key] = (skewed_null if key == "skewed_null" else rare_disagreements_aa)(section_seed, setup)
    result["seconds"] = round(time.perf_counter() - started, 1)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")

if __name__ == "__main__":
    main()
