"""Results of the group analyses (:mod:`rtfb.offline.group` and
:mod:`rtfb.offline.design_analysis`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .classify import ClassificationResult, RegressionResult

__all__ = ["ContrastResult", "GroupResults"]


@dataclass
class ContrastResult:
    """One metric and one contrast of :func:`group_analysis` (3D arrays on the mask grid).

    Attributes
    ----------
    metric, contrast, label : str
        Metric, contrast key (``patVsCon`` or ``vas``) and readable label.
    subjects : list of str
        Participant ids entering the model, in design row order.
    covariates : list of str
        Covariates kept in the design.
    t, p_fwe, q_fdr : numpy.ndarray, shape (X, Y, Z)
        t statistic (0 outside the mask), max-statistic FWE p (1 outside) and BH q (1
        outside).
    r : numpy.ndarray | None
        Partial correlation with VAS (``vas`` contrast only).
    df : int
        Residual degrees of freedom.
    threshold : float
        FWE critical ``|t|``: voxels with ``|t| > threshold`` have ``p_fwe < alpha``.
    null_max : numpy.ndarray
        Permutation null distribution of the maximum ``|t|`` (entry 0: observed).
    clusters : pandas.DataFrame
        :func:`~rtfb.offline.stats.cluster_table` at ``threshold``, plus ``metric``,
        ``contrast``, ``p_fwe_peak`` and ``q_fdr_peak``.
    peak_ijk : tuple of int
        Voxel shown in the scatter plots: peak of the largest significant cluster, else the
        voxel of largest ``|t|`` (``peak_significant`` tells which).
    peak_significant : bool
        Whether ``peak_ijk`` is in a significant cluster.
    peak_values : numpy.ndarray, shape (n_all_subjects,)
        Every analysed subject's map value at ``peak_ijk`` (order of
        :attr:`GroupResults.participants`).
    files : dict of str to Path
        Written files (``t``, ``pfwe``, ``qfdr``, ``clusters``; ``tfce``, ``ptfce``).
    tfce, p_tfce : numpy.ndarray | None
        TFCE score (0 outside) and its max-TFCE FWE p (1 outside), general designs only
        (:mod:`rtfb.offline.design`).
    tested : numpy.ndarray | None
        Values of the tested design column per row of ``subjects`` (general designs).
    """

    metric: str
    contrast: str
    label: str
    subjects: list[str]
    covariates: list[str]
    t: np.ndarray
    p_fwe: np.ndarray
    q_fdr: np.ndarray
    r: np.ndarray | None
    df: int
    threshold: float
    null_max: np.ndarray
    clusters: pd.DataFrame
    peak_ijk: tuple[int, int, int]
    peak_significant: bool
    peak_values: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)
    tfce: np.ndarray | None = None
    p_tfce: np.ndarray | None = None
    tested: np.ndarray | None = None

    @property
    def n_significant(self) -> int:
        """Number of clusters at ``p_FWE < alpha``."""
        return len(self.clusters)


@dataclass
class GroupResults:
    """Outcome of :func:`group_analysis`.

    Attributes
    ----------
    deriv_dir, out_dir : Path
        Derivatives root and ``deriv_dir / "group"``.
    participants : pandas.DataFrame
        Analysed subjects (index ``participant_id``) with ``group``, ``patient`` (bool),
        covariates coded as used (``sex`` 1 = female) and ``vas``.
    metrics : tuple of str
        Analysed metrics.
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Intersection of the subjects' brain masks (and finite map values).
    mask_fraction : numpy.ndarray, shape (X, Y, Z)
        Fraction of subjects whose brain mask contains each voxel (report background when
        the data are not in MNI space).
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-world affine shared by all maps.
    contrasts : dict of (str, str) to ContrastResult
        Keyed by ``(metric, contrast)``.
    n_permutations, alpha, seed, covariates, vas_subjects
        Analysis parameters.
    classification : ClassificationResult | None
        Patients vs controls from ``classify_metric`` voxel values.
    vas_regression : RegressionResult | None
        Patients' VAS from ``classify_metric`` voxel values.
    classify_metric : str | None
        Metric used as features.
    graph : rtfb.offline.network.GraphResults | None
        ROI-graph analysis, when run (:func:`rtfb.offline.network.graph_analysis`).
    ica : rtfb.offline.network.ICAResults | None
        Group ICA, when run (:func:`rtfb.offline.network.ica_analysis`).
    design : rtfb.offline.design.Design | None
        The general design, when the contrasts come from
        :func:`rtfb.offline.design_analysis.design_analysis`.
    notes : list of str
        Decisions taken on the data (dropped covariates, skipped analyses).
    warnings : list of str
        What makes results unreliable (too few residual degrees of freedom or distinct
        permutations, excluded runs); shown first in the report and on the terminal.
    files : dict of str to Path
        Study-level written files.
    """

    deriv_dir: Path
    out_dir: Path
    participants: pd.DataFrame
    metrics: tuple[str, ...]
    mask: np.ndarray
    mask_fraction: np.ndarray
    affine: np.ndarray
    contrasts: dict[tuple[str, str], ContrastResult]
    n_permutations: int
    alpha: float
    seed: int | None
    covariates: tuple[str, ...]
    vas_subjects: str
    classification: ClassificationResult | None = None
    vas_regression: RegressionResult | None = None
    classify_metric: str | None = None
    graph: Any = None
    ica: Any = None
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    design: Any = None

    @property
    def cluster_tables(self) -> pd.DataFrame:
        """All significant clusters of all metrics and contrasts in one table."""
        tables = [c.clusters for c in self.contrasts.values() if len(c.clusters)]
        if not tables:
            return next(iter(self.contrasts.values())).clusters.iloc[0:0]
        return pd.concat(tables, ignore_index=True)
