"""Family-wise error calibration of the max-statistic permutation test on null cohorts.

Each null cohort is a set of smoothed random normal maps (no group effect) analysed as a
two-sample comparison (optionally with a nuisance covariate, tested by Freedman-Lane); the
cohort is a family-wise false positive when any voxel has ``p_fwe <= alpha``. The printed
rate should fall within the exact binomial 95% interval around ``alpha``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage, stats

from ..offline.stats import permutation_fwe, two_sample_design


def null_cohort(
    rng: np.random.Generator, n_subjects: int, n_voxels: int, smoothing: float
) -> np.ndarray:
    """Random normal maps ``(n_subjects, n_voxels)`` smoothed along the voxel axis."""
    maps = rng.standard_normal((n_subjects, n_voxels))
    if smoothing > 0:
        maps = ndimage.gaussian_filter1d(maps, smoothing, axis=1, mode="wrap")
    return maps


def fwe_calibration(
    n_cohorts: int = 100,
    n_subjects: int = 20,
    n_voxels: int = 500,
    n_permutations: int = 200,
    smoothing: float = 2.0,
    alpha: float = 0.05,
    covariate: bool = False,
    seed: int = 0,
) -> dict:
    """Family-wise false-positive count over ``n_cohorts`` null cohorts.

    Returns
    -------
    dict
        ``n_false_positive``, ``rate``, ``rate_ci`` (exact 95% interval of the measured
        rate), ``expected_interval`` (central 95% binomial interval of the count under a true
        rate ``alpha``), ``within`` (count inside it) and ``seconds``.
    """
    rng = np.random.default_rng(seed)
    group = np.arange(n_subjects) < n_subjects // 2
    start = time.perf_counter()
    n_fp = 0
    for i in range(n_cohorts):
        maps = null_cohort(rng, n_subjects, n_voxels, smoothing)
        age = rng.normal(45, 12, n_subjects) if covariate else None
        design, contrast = two_sample_design(group, age)
        result = permutation_fwe(maps, design, contrast, n_permutations, seed=seed + i)
        n_fp += bool((result.p_fwe <= alpha).any())
    seconds = time.perf_counter() - start
    ci = stats.binomtest(n_fp, n_cohorts, alpha).proportion_ci(0.95, method="exact")
    lo, hi = stats.binom.interval(0.95, n_cohorts, alpha)
    return dict(n_false_positive=n_fp, n_cohorts=n_cohorts, rate=n_fp / n_cohorts,
                rate_ci=(ci.low, ci.high), expected_interval=(int(lo), int(hi)),
                within=bool(lo <= n_fp <= hi), seconds=seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench fwe``."""
    parser.add_argument("--cohorts", type=int, default=100, help="null cohorts")
    parser.add_argument("--subjects", type=int, default=20, help="subjects per cohort")
    parser.add_argument("--voxels", type=int, default=500)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--smoothing", type=float, default=2.0,
                        help="Gaussian sigma along the voxel axis, in voxels (0: none)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--covariate", action="store_true",
                        help="add a random age covariate (Freedman-Lane)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    """Run the calibration and print the family-wise false-positive rate."""
    res = fwe_calibration(args.cohorts, args.subjects, args.voxels, args.permutations,
                          args.smoothing, args.alpha, args.covariate, args.seed)
    print(f"# rtfb.bench fwe  ({args.cohorts} null cohorts, {args.subjects} subjects x "
          f"{args.voxels} voxels, smoothing {args.smoothing}, {args.permutations} "
          f"permutations, covariate {'yes' if args.covariate else 'no'})\n")
    print(f"family-wise false positives: {res['n_false_positive']} / {res['n_cohorts']} "
          f"= {res['rate']:.3f} (exact 95% CI {res['rate_ci'][0]:.3f}-{res['rate_ci'][1]:.3f})")
    lo, hi = res["expected_interval"]
    print(f"expected count at alpha {args.alpha}: 95% binomial interval [{lo}, {hi}] -> "
          f"{'within' if res['within'] else 'OUTSIDE'}")
    print(f"time: {res['seconds']:.1f} s")
    return 0
