"""Group statistics on per-subject maps: GLM t maps, max-statistic permutation FWE, FDR and
cluster tables.

Maps are stacked as ``(n_subjects, n_voxels)`` (masked voxels of each subject's map). The
GLM is ordinary least squares with a full-column-rank design; a contrast vector selects one
linear combination of the coefficients, tested with a t statistic on ``n - p`` degrees of
freedom.

Permutation inference (:func:`permutation_fwe`) uses the Freedman-Lane scheme
(Freedman & Lane 1983; Winkler et al. 2014, NeuroImage 92:381): the design is partitioned
into the tested regressor and the nuisance space (Beckmann partitioning), the residuals of
the nuisance-only model are permuted and added back to its fitted values, and the full model
is refitted. When the only nuisance regressor is the intercept (plain two-sample test or
plain correlation with a score) this is exactly a permutation of the group labels or of the
scores. Family-wise error is controlled with the maximum statistic over voxels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import linalg, ndimage

from .._utils.checks import _validate_type, check_finite_array, check_int

__all__ = [
    "CorrelationResult",
    "PermutationResult",
    "cluster_table",
    "correlation_design",
    "fdr_bh",
    "group_glm",
    "permutation_fwe",
    "score_correlation",
    "t_to_r",
    "two_sample_design",
]

_CHUNK_ELEMENTS = 4_000_000  # permuted data held at once: chunk * n_subjects * n_voxels


# --------------------------------------------------------------------------- designs


def _covariate_columns(covariates: ArrayLike | None, n: int) -> np.ndarray:
    """Mean-centred covariate columns, shape ``(n, k)`` (``k = 0`` for ``None``)."""
    if covariates is None:
        return np.empty((n, 0))
    cov = check_finite_array(covariates, "covariates", ndim=(1, 2))
    if cov.ndim == 1:
        cov = cov[:, None]
    if cov.shape[0] != n:
        raise ValueError(f"covariates must have {n} rows (one per subject), got {cov.shape[0]}.")
    constant = np.ptp(cov, axis=0) == 0
    if constant.any():
        raise ValueError(
            f"covariates column(s) {np.flatnonzero(constant).tolist()} are constant; "
            "they are collinear with the intercept."
        )
    return cov - cov.mean(axis=0)


def two_sample_design(
    group: ArrayLike, covariates: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Design and contrast of a two-sample comparison (patients vs controls).

    Parameters
    ----------
    group : array-like of bool or {0, 1}, shape (n_subjects,)
        True (1) for patients, False (0) for controls.
    covariates : array-like, shape (n_subjects,) or (n_subjects, k) | None
        Nuisance covariates (e.g. age, sex coded 0/1); they are mean-centred.

    Returns
    -------
    design : ndarray, shape (n_subjects, 2 + k)
        Columns: intercept, patient indicator, covariates.
    contrast : ndarray, shape (2 + k,)
        Tests patients - controls (positive t: patients higher).
    """
    g = np.asarray(group)
    if g.ndim != 1:
        raise ValueError(f"group must be one-dimensional, got shape {g.shape}.")
    if g.dtype != bool:
        if not np.isin(g, (0, 1)).all():
            raise ValueError("group must be boolean or contain only 0 (controls) and 1 (patients).")
        g = g.astype(bool)
    n_pat = int(g.sum())
    if n_pat == 0 or n_pat == g.size:
        raise ValueError(
            f"group needs both patients and controls, got {n_pat} patient(s) and "
            f"{g.size - n_pat} control(s)."
        )
    cov = _covariate_columns(covariates, g.size)
    design = np.column_stack([np.ones(g.size), g.astype(float), cov])
    contrast = np.zeros(design.shape[1])
    contrast[1] = 1.0
    return design, contrast


def correlation_design(
    score: ArrayLike, covariates: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Design and contrast of a correlation with a clinical score (e.g. VAS pain rating).

    Parameters
    ----------
    score : array-like, shape (n_subjects,)
        The clinical score; it is mean-centred.
    covariates : array-like, shape (n_subjects,) or (n_subjects, k) | None
        Nuisance covariates (e.g. age, sex coded 0/1); they are mean-centred.

    Returns
    -------
    design : ndarray, shape (n_subjects, 2 + k)
        Columns: intercept, score, covariates.
    contrast : ndarray, shape (2 + k,)
        Tests the score slope (positive t: maps increase with the score).
    """
    s = check_finite_array(score, "score", ndim=1)
    if np.ptp(s) == 0:
        raise ValueError("score is constant; a correlation needs varying scores.")
    cov = _covariate_columns(covariates, s.size)
    design = np.column_stack([np.ones(s.size), s - s.mean(), cov])
    contrast = np.zeros(design.shape[1])
    contrast[1] = 1.0
    return design, contrast


# --------------------------------------------------------------------------- GLM


class _GLM:
    """OLS fit of one design and contrast, applied to many data sets."""

    def __init__(self, design: np.ndarray, contrast: np.ndarray) -> None:
        n, p = design.shape
        rank = np.linalg.matrix_rank(design)
        if rank < p:
            raise ValueError(
                f"design is rank deficient (rank {rank} < {p} columns); remove collinear "
                "columns."
            )
        if n <= p:
            raise ValueError(
                f"design needs more subjects ({n}) than columns ({p}) for residual degrees "
                "of freedom."
            )
        self.design = design
        self.contrast = contrast
        self.pinv = np.linalg.pinv(design)  # (p, n)
        self.cov_unscaled = self.pinv @ self.pinv.T  # (X'X)^-1
        self.var_c = float(contrast @ self.cov_unscaled @ contrast)
        self.df = n - p

    def t(self, y: np.ndarray) -> np.ndarray:
        """Compute t statistics: ``y`` ``(..., n, n_voxels)`` -> ``(..., n_voxels)``.

        Voxels whose residual sum of squares vanishes (relative to their sum of squares,
        e.g. constant voxels outside the brain) get t = 0.
        """
        beta = self.pinv @ y
        effect = self.contrast @ beta
        resid = y - self.design @ beta
        rss = np.einsum("...nv,...nv->...v", resid, resid)
        scale = np.einsum("...nv,...nv->...v", y, y)
        se = np.sqrt(rss / self.df * self.var_c)
        ok = rss > 1e-24 * scale
        return np.where(ok, effect / np.where(ok, se, 1.0), 0.0)


def _check_glm_inputs(
    maps: Any, design: Any, contrast: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maps = check_finite_array(maps, "maps", ndim=2)
    design = check_finite_array(design, "design", ndim=2)
    contrast = check_finite_array(contrast, "contrast", ndim=1)
    if design.shape[0] != maps.shape[0]:
        raise ValueError(
            f"design has {design.shape[0]} rows but maps has {maps.shape[0]} subjects (rows)."
        )
    if contrast.shape[0] != design.shape[1]:
        raise ValueError(
            f"contrast must have one weight per design column ({design.shape[1]}), "
            f"got {contrast.shape[0]}."
        )
    if not contrast.any():
        raise ValueError("contrast is all zeros.")
    return maps, design, contrast


def group_glm(maps: ArrayLike, design: ArrayLike, contrast: ArrayLike) -> tuple[np.ndarray, int]:
    """OLS t statistics of a contrast at every voxel.

    Parameters
    ----------
    maps : array-like, shape (n_subjects, n_voxels)
        One map per subject (e.g. masked zALFF values).
    design : array-like, shape (n_subjects, p)
        Full-column-rank design matrix (see :func:`two_sample_design`,
        :func:`correlation_design`).
    contrast : array-like, shape (p,)
        Contrast weights.

    Returns
    -------
    t : ndarray, shape (n_voxels,)
        t statistic of ``contrast @ beta`` (0 at voxels without residual variance).
    df : int
        Residual degrees of freedom, ``n_subjects - p``.
    """
    maps, design, contrast = _check_glm_inputs(maps, design, contrast)
    glm = _GLM(design, contrast)
    return glm.t(maps), glm.df


def t_to_r(t: ArrayLike, df: int) -> np.ndarray:
    """Convert a t statistic of a single regressor into a (partial) correlation.

    ``r = t / sqrt(t**2 + df)`` is the partial correlation between the data and the tested
    regressor given the other columns of the design (Pearson r when they are only the
    intercept).
    """
    t = np.asarray(t, dtype=float)
    df = check_int(df, "df", minimum=1)
    return t / np.sqrt(t**2 + df)


class CorrelationResult(NamedTuple):
    """Output of :func:`score_correlation`."""

    t: np.ndarray
    """t statistic of the score slope per voxel."""
    r: np.ndarray
    """Pearson r (no covariates) or partial r given the covariates, per voxel."""
    df: int
    """Residual degrees of freedom."""


def score_correlation(
    maps: ArrayLike, score: ArrayLike, covariates: ArrayLike | None = None
) -> CorrelationResult:
    """Voxel-wise correlation of the maps with a clinical score, adjusted for covariates.

    Parameters
    ----------
    maps : array-like, shape (n_subjects, n_voxels)
        One map per subject.
    score : array-like, shape (n_subjects,)
        Clinical score, e.g. VAS pain rating.
    covariates : array-like, shape (n_subjects,) or (n_subjects, k) | None
        Nuisance covariates (e.g. age, sex).

    Returns
    -------
    CorrelationResult
        ``t`` of the score slope, ``r`` (partial r with covariates) and ``df``.
    """
    design, contrast = correlation_design(score, covariates)
    t, df = group_glm(maps, design, contrast)
    return CorrelationResult(t, t_to_r(t, df), df)


# --------------------------------------------------------------------------- permutations


@dataclass(frozen=True)
class PermutationResult:
    """Output of :func:`permutation_fwe`."""

    t: np.ndarray
    """Observed t statistic per voxel."""
    p_fwe: np.ndarray
    """FWE-corrected p-value per voxel (max-statistic)."""
    null_max: np.ndarray
    """Maximum statistic over voxels for each permutation; entry 0 is the identity."""
    df: int
    """Residual degrees of freedom of the t statistics."""


def _permutation_indices(
    n: int, n_permutations: int, seed: int | None, blocks: np.ndarray | None
) -> np.ndarray:
    """Row orders, shape ``(n_permutations, n)``; row 0 is the identity.

    See :func:`permutation_fwe` for the exact scheme.
    """
    rng = np.random.default_rng(seed)
    perms = np.empty((n_permutations, n), dtype=np.intp)
    perms[0] = np.arange(n)
    members = None if blocks is None else [np.flatnonzero(blocks == b) for b in np.unique(blocks)]
    for k in range(1, n_permutations):
        if members is None:
            perms[k] = rng.permutation(n)
        else:
            for idx in members:
                perms[k, idx] = idx[rng.permutation(idx.size)]
    return perms


def _partition(design: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tested regressor ``x`` (n,) and nuisance columns ``z`` (n, p - 1) of the design.

    Beckmann partitioning (Winkler et al. 2014, appendix A): the contrast of the full model
    equals the coefficient of ``x`` in the model ``[x, z]`` and ``z`` carries no part of it.
    """
    d = np.linalg.pinv(design.T @ design)
    c = contrast[:, None]
    x = design @ d @ c @ np.linalg.pinv(c.T @ d @ c)
    cu = linalg.null_space(c.T)
    if cu.shape[1] == 0:
        return x[:, 0], np.empty((design.shape[0], 0))
    cv = cu - c @ np.linalg.pinv(c.T @ d @ c) @ c.T @ d @ cu
    return x[:, 0], design @ d @ cv


def permutation_fwe(
    maps: ArrayLike,
    design: ArrayLike,
    contrast: ArrayLike,
    n_permutations: int = 1000,
    seed: int | None = 0,
    two_sided: bool = True,
    exchangeable: ArrayLike | None = None,
) -> PermutationResult:
    """Max-statistic permutation test with family-wise error (FWE) corrected p-values.

    Freedman-Lane permutation: the residuals of the nuisance-only model (the design without
    the tested effect, after Beckmann partitioning) are permuted across subjects, added back
    to that model's fitted values, and the full model is refitted at all voxels at once.
    With only the intercept as nuisance (plain two-sample test or correlation with a score)
    this is exactly permuting the group labels / scores.

    Permutations are drawn with ``rng = numpy.random.default_rng(seed)``: the first is the
    identity (the observed data, so ``p_fwe >= 1 / n_permutations``); each following one is
    ``rng.permutation(n_subjects)``, or, with ``exchangeable`` blocks, for each block label
    in sorted order, a ``rng.permutation`` of that block's subjects. Permutations are drawn
    with replacement, so small samples may repeat some.

    Parameters
    ----------
    maps : array-like, shape (n_subjects, n_voxels)
        One map per subject.
    design : array-like, shape (n_subjects, p)
        Full-column-rank design matrix.
    contrast : array-like, shape (p,)
        Contrast weights.
    n_permutations : int
        Number of permutations, the identity included.
    seed : int | None
        Seed of the permutations.
    two_sided : bool
        Use ``|t|`` (True) or ``t`` (False, tests a positive effect).
    exchangeable : array-like, shape (n_subjects,) | None
        Exchangeability block labels (e.g. site): subjects are only permuted within their
        block. None: all subjects are exchangeable.

    Returns
    -------
    PermutationResult
        Observed ``t``, ``p_fwe`` per voxel, ``null_max`` of shape ``(n_permutations,)`` and
        ``df``.

    Notes
    -----
    One-sample tests (the tested effect is constant across subjects within blocks) cannot
    be permuted; they would need sign flipping, which is not implemented.
    """
    maps, design, contrast = _check_glm_inputs(maps, design, contrast)
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    _validate_type(two_sided, bool, "two_sided")
    if seed is not None:
        seed = check_int(seed, "seed", minimum=0)
    n, n_vox = maps.shape
    blocks = None
    if exchangeable is not None:
        blocks = np.asarray(exchangeable)
        if blocks.shape != (n,):
            raise ValueError(
                f"exchangeable must have one block label per subject ({n},), "
                f"got shape {blocks.shape}."
            )
    glm = _GLM(design, contrast)
    x, z = _partition(design, contrast)
    groups = [np.arange(n)] if blocks is None else [
        np.flatnonzero(blocks == b) for b in np.unique(blocks)
    ]
    if all(np.ptp(x[idx]) <= 1e-12 * max(np.abs(x).max(), 1.0) for idx in groups):
        raise ValueError(
            "the tested effect is constant across exchangeable subjects (one-sample test); "
            "permuting subjects cannot change it and sign flipping is not implemented."
        )

    if z.shape[1]:
        fitted = z @ (np.linalg.pinv(z) @ maps)
    else:
        fitted = np.zeros_like(maps)
    resid = maps - fitted
    t_obs = glm.t(maps)
    stat_obs = np.abs(t_obs) if two_sided else t_obs

    perms = _permutation_indices(n, n_permutations, seed, blocks)
    null_max = np.empty(n_permutations)
    null_max[0] = stat_obs.max()
    chunk = max(1, _CHUNK_ELEMENTS // (n * n_vox))
    for start in range(1, n_permutations, chunk):
        idx = perms[start : start + chunk]
        t_perm = glm.t(resid[idx] + fitted)  # (chunk, n, n_vox) -> (chunk, n_vox)
        null_max[start : start + len(idx)] = (np.abs(t_perm) if two_sided else t_perm).max(-1)

    # relative tolerance: permutations equivalent to the identity give the same t up to
    # rounding and must count as ties
    tol = 1e-10 * np.maximum(np.abs(stat_obs), 1.0)
    null_sorted = np.sort(null_max)
    n_below = np.searchsorted(null_sorted, stat_obs - tol, side="left")
    p_fwe = (n_permutations - n_below) / n_permutations
    return PermutationResult(t_obs, p_fwe, null_max, glm.df)


# --------------------------------------------------------------------------- FDR


def fdr_bh(p: ArrayLike, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg false discovery rate.

    Parameters
    ----------
    p : array-like
        p-values in [0, 1], any shape.
    alpha : float
        FDR level, in (0, 1).

    Returns
    -------
    reject : ndarray of bool, shape of ``p``
        True where the null hypothesis is rejected at FDR ``alpha``.
    q : ndarray, shape of ``p``
        BH-adjusted p-values (as ``scipy.stats.false_discovery_control(p, method="bh")``).
    """
    p = check_finite_array(p, "p")
    if p.size == 0:
        raise ValueError("p is empty.")
    if (p < 0).any() or (p > 1).any():
        raise ValueError("p must contain probabilities in [0, 1].")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}.")
    flat = p.ravel()
    m = flat.size
    order = np.argsort(flat, kind="stable")
    scaled = flat[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    q = np.empty(m)
    q[order] = q_sorted
    q = q.reshape(p.shape)
    return q <= alpha, q


# --------------------------------------------------------------------------- clusters

_CLUSTER_COLUMNS = [
    "cluster", "sign", "size_voxels", "size_mm3", "peak_value", "peak_i", "peak_j", "peak_k",
    "peak_x", "peak_y", "peak_z", "com_x", "com_y", "com_z",
]


def cluster_table(
    stat_map3d: ArrayLike,
    affine: ArrayLike,
    threshold: float,
    min_size: int = 1,
    two_sided: bool = True,
) -> pd.DataFrame:
    """Table of connected clusters of supra-threshold voxels.

    Voxels with ``stat > threshold`` (and, if ``two_sided``, separately those with
    ``stat < -threshold``) are grouped with 26-connectivity (faces, edges and corners);
    positive and negative voxels never share a cluster.

    Parameters
    ----------
    stat_map3d : array-like, shape (X, Y, Z)
        Statistic map (e.g. t).
    affine : array-like, shape (4, 4)
        Voxel-to-world (mm) affine.
    threshold : float
        Non-negative threshold on ``|stat|``.
    min_size : int
        Smallest cluster size kept, in voxels.
    two_sided : bool
        Also report negative clusters.

    Returns
    -------
    pandas.DataFrame
        One row per cluster, sorted by size then ``|peak|`` (largest first), with columns
        ``cluster`` (1-based rank), ``sign`` (+1/-1), ``size_voxels``, ``size_mm3``,
        ``peak_value`` (signed statistic of largest ``|stat|``), ``peak_i/j/k`` (voxel
        indices), ``peak_x/y/z`` (mm) and ``com_x/y/z``: the centre of mass (unweighted
        centroid of the cluster's voxels) in mm.
    """
    stat = check_finite_array(stat_map3d, "stat_map3d", ndim=3)
    affine = check_finite_array(affine, "affine", ndim=2)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must have shape (4, 4), got {affine.shape}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise TypeError(f"threshold must be a number, got {type(threshold).__name__}.")
    threshold = float(threshold)
    if not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}.")
    min_size = check_int(min_size, "min_size", minimum=1)
    _validate_type(two_sided, bool, "two_sided")

    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    structure = np.ones((3, 3, 3), dtype=bool)
    rows = []
    for sign in (1, -1) if two_sided else (1,):
        signed = sign * stat
        labels, n_labels = ndimage.label(signed > threshold, structure=structure)
        if n_labels == 0:
            continue
        index = np.arange(1, n_labels + 1)
        sizes = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
        peaks = np.asarray(ndimage.maximum_position(signed, labels, index), dtype=float)
        coms = np.asarray(ndimage.center_of_mass(labels > 0, labels, index), dtype=float)
        peaks = peaks.reshape(n_labels, 3)
        coms = coms.reshape(n_labels, 3)
        peak_idx = peaks.astype(np.intp)
        peak_vals = stat[tuple(peak_idx.T)]
        peak_mm = peaks @ affine[:3, :3].T + affine[:3, 3]
        com_mm = coms @ affine[:3, :3].T + affine[:3, 3]
        for k in np.flatnonzero(sizes >= min_size):
            rows.append(dict(
                sign=sign, size_voxels=int(sizes[k]), size_mm3=sizes[k] * voxel_mm3,
                peak_value=float(peak_vals[k]), peak_i=int(peak_idx[k, 0]),
                peak_j=int(peak_idx[k, 1]), peak_k=int(peak_idx[k, 2]),
                peak_x=peak_mm[k, 0], peak_y=peak_mm[k, 1], peak_z=peak_mm[k, 2],
                com_x=com_mm[k, 0], com_y=com_mm[k, 1], com_z=com_mm[k, 2],
            ))
    rows.sort(key=lambda r: (-r["size_voxels"], -abs(r["peak_value"])))
    for rank, row in enumerate(rows, start=1):
        row["cluster"] = rank
    return pd.DataFrame(rows, columns=_CLUSTER_COLUMNS)
