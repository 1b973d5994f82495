"""Family-wise error calibration of the max-statistic permutation test on null cohorts.

Two sources of null cohorts (``--source``):

* ``random`` (default, seconds): smoothed random normal maps (no group effect) analysed as
  a two-sample comparison (optionally with a nuisance covariate, tested by Freedman-Lane)
  with :func:`~rtfb.offline.stats.permutation_fwe`;
* ``simulator`` (minutes): null cohorts of the simulator
  (:func:`simulator.cohort.write_cohort` with ``null=True``, a new cohort seed each time),
  the per-subject ALFF maps from the real offline pipeline
  (:func:`rtfb.offline.run.analyze`) and the real group statistics
  (:func:`rtfb.offline.group.group_analysis`: patients vs controls and the VAS correlation
  within patients, both with age and sex covariates). Each cohort is written to its own
  temporary folder, deleted once analysed.

A cohort is a family-wise false positive (separately per contrast) when any (in-mask) voxel
has ``p_fwe <= alpha``. A calibrated test gives a count within the central 95% binomial
interval of the count under a true rate ``alpha`` (a calibrated test still falls outside it
in 5% of runs). The exit code is 0 either way: this is a measurement.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from .._utils.checks import check_int
from ..offline.stats import permutation_fwe, two_sample_design

#: Contrasts of :func:`rtfb.offline.group.group_analysis` counted in the simulator mode.
CONTRASTS = {"patVsCon": "patients vs controls (age, sex covariates)",
             "vas": "VAS correlation within patients (age, sex covariates)"}
#: Options that only apply to one source (None when not given on the command line).
_SOURCE_OPTIONS = {"random": ("subjects", "voxels", "smoothing", "covariate"),
                   "simulator": ("patients", "controls")}
#: Grid, run length and TR of the simulator cohorts.
SHAPE, N_VOLUMES, TR = (16, 16, 10), 64, 2.0
_DEFAULTS = {"random": dict(subjects=20, voxels=500, smoothing=2.0, covariate=False,
                            permutations=200),
             "simulator": dict(patients=8, controls=8, permutations=1000)}


def null_cohort(
    rng: np.random.Generator, n_subjects: int, n_voxels: int, smoothing: float
) -> np.ndarray:
    """Random normal maps ``(n_subjects, n_voxels)`` smoothed along the voxel axis."""
    maps = rng.standard_normal((n_subjects, n_voxels))
    if smoothing > 0:
        maps = ndimage.gaussian_filter1d(maps, smoothing, axis=1, mode="wrap")
    return maps


def _summary(n_fp: int, n_cohorts: int, alpha: float) -> dict:
    """Count, rate, exact 95% CI of the rate and the expected 95% interval of the count."""
    ci = stats.binomtest(n_fp, n_cohorts, alpha).proportion_ci(0.95, method="exact")
    lo, hi = stats.binom.interval(0.95, n_cohorts, alpha)
    return dict(n_false_positive=int(n_fp), n_cohorts=int(n_cohorts), rate=n_fp / n_cohorts,
                rate_ci=(float(ci.low), float(ci.high)), expected_interval=(int(lo), int(hi)),
                within=bool(lo <= n_fp <= hi))


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
    """Family-wise false-positive count over ``n_cohorts`` random-map null cohorts.

    Returns
    -------
    dict
        ``n_false_positive``, ``n_cohorts``, ``rate``, ``rate_ci`` (exact 95% interval of
        the measured rate), ``expected_interval`` (central 95% binomial interval of the
        count under a true rate ``alpha``), ``within`` (count inside it) and ``seconds``.
    """
    n_cohorts = check_int(n_cohorts, "n_cohorts", minimum=1)
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
    return dict(_summary(n_fp, n_cohorts, alpha), seconds=time.perf_counter() - start)


def simulator_calibration(
    n_cohorts: int = 100,
    n_patients: int = 8,
    n_controls: int = 8,
    n_permutations: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    *,
    shape: tuple[int, int, int] = SHAPE,
    n_volumes: int = N_VOLUMES,
    tr: float = TR,
    progress: bool = True,
) -> dict:
    """Family-wise false-positive counts of the group analysis on simulator null cohorts.

    Parameters
    ----------
    n_cohorts : int
        Null cohorts (each with its own cohort and permutation seeds, drawn from ``seed``).
    n_patients, n_controls : int
        Group sizes (the VAS model has 4 columns, so at least 5 patients; 2 controls).
    n_permutations : int
        Permutations of the max-|t| test (identity included).
    alpha : float
        FWE level.
    seed : int
        Master seed.
    shape, n_volumes, tr
        Grid, run length and TR of the simulated runs.
    progress : bool
        Print a line to stderr every 10 cohorts.

    Returns
    -------
    dict
        One :func:`fwe_calibration`-like summary per contrast (keys of :data:`CONTRASTS`,
        each also with ``min_p_fwe``, the smallest in-mask ``p_fwe`` of every cohort), and
        ``seconds``.

    Raises
    ------
    ValueError
        Bad argument (the message names it).
    RuntimeError
        A contrast was not computed for a cohort (the group analysis notes say why).
    """
    from simulator.cohort import write_cohort

    from ..offline.bids import load_dataset
    from ..offline.group import group_analysis
    from ..offline.run import analyze

    n_cohorts = check_int(n_cohorts, "n_cohorts", minimum=1)
    check_int(n_patients, "n_patients", minimum=5)
    check_int(n_controls, "n_controls", minimum=2)
    check_int(n_permutations, "n_permutations", minimum=1)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    min_p = {key: [] for key in CONTRASTS}
    start = time.perf_counter()
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n_cohorts), 1):
        cohort_seed, perm_seed = (int(s) for s in child.generate_state(2))
        with tempfile.TemporaryDirectory(prefix="rtfb-bench-fwe-") as tmp:
            bids, deriv = Path(tmp) / "bids", Path(tmp) / "deriv"
            write_cohort(bids, n_patients, n_controls, seed=cohort_seed, null=True,
                         shape=shape, n_volumes=n_volumes, tr=tr)
            analyze(bids, deriv, scheduler="synchronous", progress=False)
            group = group_analysis(deriv, load_dataset(bids).participants, metrics=("alff",),
                                   n_permutations=n_permutations, alpha=alpha, seed=perm_seed)
        for key in CONTRASTS:
            if ("alff", key) not in group.contrasts:
                raise RuntimeError(f"cohort seed {cohort_seed}: contrast {key!r} not computed "
                                   f"({' '.join(group.notes)})")
            min_p[key].append(float(group.contrasts["alff", key].p_fwe[group.mask].min()))
        if progress and (i % 10 == 0 or i == n_cohorts):
            counts = ", ".join(f"{k} {sum(p <= alpha for p in v)}" for k, v in min_p.items())
            print(f"fwe: {i}/{n_cohorts} cohorts, {time.perf_counter() - start:.0f} s, "
                  f"false positives: {counts}", file=sys.stderr, flush=True)
    out: dict = {key: dict(_summary(sum(p <= alpha for p in v), n_cohorts, alpha),
                           min_p_fwe=np.array(v))
                 for key, v in min_p.items()}
    out["seconds"] = time.perf_counter() - start
    return out


def _at_least(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its 'invalid ... value' message
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m rtfb.bench fwe``."""
    parser.add_argument("--source", choices=("random", "simulator"), default="random",
                        help="null cohorts: smoothed random maps (default, seconds) or "
                             "simulator cohorts through the offline pipeline (minutes)")
    parser.add_argument("--cohorts", type=_at_least(1), default=100, help="null cohorts")
    parser.add_argument("--permutations", type=_at_least(1),
                        help="permutations (default: 200 random, 1000 simulator)")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    rand = parser.add_argument_group("--source random")
    rand.add_argument("--subjects", type=_at_least(4), help="subjects per cohort (20)")
    rand.add_argument("--voxels", type=_at_least(1), help="voxels per map (500)")
    rand.add_argument("--smoothing", type=float,
                      help="Gaussian sigma along the voxel axis, in voxels (2; 0: none)")
    rand.add_argument("--covariate", action="store_true", default=None,
                      help="add a random age covariate (Freedman-Lane)")
    sim = parser.add_argument_group("--source simulator")
    sim.add_argument("--patients", type=_at_least(5), help="patients per cohort (8)")
    sim.add_argument("--controls", type=_at_least(2), help="controls per cohort (8)")


def _print_summary(res: dict, alpha: float, indent: str = "") -> None:
    print(f"family-wise false positives: {res['n_false_positive']} / {res['n_cohorts']} "
          f"= {res['rate']:.3f} (exact 95% CI {res['rate_ci'][0]:.3f}-{res['rate_ci'][1]:.3f})")
    lo, hi = res["expected_interval"]
    print(f"{indent}expected count at alpha {alpha}: 95% binomial interval [{lo}, {hi}] -> "
          f"{'within' if res['within'] else 'OUTSIDE'}")


def run(args: argparse.Namespace) -> int:
    """Run the calibration and print the family-wise false-positive rate(s)."""
    other = "simulator" if args.source == "random" else "random"
    wrong = [f"--{name}" for name in _SOURCE_OPTIONS[other] if getattr(args, name) is not None]
    if wrong:
        print(f"rtfb.bench fwe: error: {', '.join(wrong)}: only with --source {other}",
              file=sys.stderr)
        return 2
    if not 0 < args.alpha < 1:
        print(f"rtfb.bench fwe: error: --alpha must be in (0, 1), got {args.alpha}",
              file=sys.stderr)
        return 2
    opts = {k: (v if getattr(args, k) is None else getattr(args, k))
            for k, v in _DEFAULTS[args.source].items()}
    if args.source == "random":
        res = fwe_calibration(args.cohorts, opts["subjects"], opts["voxels"],
                              opts["permutations"], opts["smoothing"], args.alpha,
                              opts["covariate"], args.seed)
        print(f"# rtfb.bench fwe  ({args.cohorts} null cohorts, {opts['subjects']} subjects x "
              f"{opts['voxels']} voxels, smoothing {opts['smoothing']}, "
              f"{opts['permutations']} permutations, covariate "
              f"{'yes' if opts['covariate'] else 'no'})\n")
        _print_summary(res, args.alpha)
        print(f"time: {res['seconds']:.1f} s")
        return 0
    res = simulator_calibration(args.cohorts, opts["patients"], opts["controls"],
                                opts["permutations"], args.alpha, args.seed)
    print(f"# rtfb.bench fwe --source simulator  ({args.cohorts} null cohorts, "
          f"{opts['patients']} patients + {opts['controls']} controls, "
          f"{'x'.join(map(str, SHAPE))} voxels x {N_VOLUMES} volumes (TR {TR} s), "
          f"ALFF from rtfb.offline.run.analyze, {opts['permutations']} permutations)\n")
    for key, label in CONTRASTS.items():
        print(f"{label}: ", end="")
        _print_summary(res[key], args.alpha, indent="  ")
    print(f"time: {res['seconds']:.1f} s ({res['seconds'] / args.cohorts:.1f} s per cohort)")
    return 0
