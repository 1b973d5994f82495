"""Group analysis of the per-subject maps: patients vs controls and VAS correlation.

Inputs are the derivatives written by :func:`rtfb.offline.subject.process_subject`::

    DERIV/rtfb/sub-XX/func/sub-XX_<entities>_desc-<Metric>_map.nii.gz
    DERIV/rtfb/sub-XX/func/sub-XX_<entities>_desc-brain_mask.nii.gz

``<Metric>`` is matched case-insensitively, ignoring non-alphanumeric characters, so
``"alff"`` finds ``desc-ALFF`` and ``"seedfc-LeftInsula"`` finds ``desc-FCLeftInsula``.
Exactly one file per subject and metric must match (a subject with several runs or sessions
is an error: pass a narrower ``file_glob``).

For every metric, on the intersection of the subjects' brain masks (voxels finite in every
map):

* **patients vs controls**: OLS two-sample t (:func:`~rtfb.offline.stats.two_sample_design`,
  positive t = patients higher) with age and sex (1 = female, 0 = male) as mean-centred
  covariates;
* **VAS correlation**: slope of the VAS score (:func:`~rtfb.offline.stats.correlation_design`)
  with the same covariates, **within patients** by default (``vas_subjects="patients"``):
  controls' VAS is near zero by construction, so including them would mostly re-test the
  group difference. ``vas_subjects="all"`` uses every subject (group is then *not* a
  covariate; the effect mixes group and within-group VAS). Covariates constant in the
  analysed subset (e.g. all patients of one sex) are dropped, with a note.

Inference: two-sided Freedman-Lane max-|t| permutation test
(:func:`~rtfb.offline.stats.permutation_fwe`) for family-wise-error (FWE) corrected p-values;
Benjamini-Hochberg FDR q-values (:func:`~rtfb.offline.stats.fdr_bh`) of the *parametric*
two-sided p-values of t on the residual degrees of freedom. Clusters
(:func:`~rtfb.offline.stats.cluster_table`, 26-connectivity) are the voxels with
``|t| > t_crit``, where ``t_crit`` is the FWE critical t of the permutation null maximum
distribution: exactly the voxels with ``p_FWE < alpha``.

Optional (``classify_metric``): nested cross-validated classification of patients vs
controls (:func:`~rtfb.offline.classify.classify`) and ridge regression of the patients' VAS
(:func:`~rtfb.offline.classify.regress_vas`) from the in-mask voxel values of that metric.

Outputs in ``DERIV/group/``: ``group_desc-brain_mask.nii.gz`` (intersection mask),
``<metric>_<contrast>_t.nii.gz``, ``..._pfwe.nii.gz``, ``..._qfdr.nii.gz``,
``..._clusters.tsv`` (contrast ``patVsCon`` or ``vas``), ``clusters.tsv`` (all tables),
``subjects.tsv`` and, with classification, ``classification.tsv``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sp_stats

from .._utils.checks import _check_option, check_int
from .classify import ClassificationResult, RegressionResult, classify, regress_vas
from .stats import (
    cluster_table,
    correlation_design,
    fdr_bh,
    permutation_fwe,
    t_to_r,
    two_sample_design,
)

__all__ = ["ContrastResult", "GroupResults", "contrast_maps", "group_analysis", "load_subject_maps"]

PIPELINE_DIR = "rtfb"
GROUP_DIR = "group"
_CONTRASTS = {"patVsCon": "patients > controls", "vas": "VAS correlation"}
_SEX_CODES = {"f": 1.0, "female": 1.0, "w": 1.0, "woman": 1.0,
              "m": 0.0, "male": 0.0, "man": 0.0}


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


# --------------------------------------------------------------------------- participants


def _norm(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return "fc" + key[len("seedfc"):] if key.startswith("seedfc") else key


def _prepare_participants(participants, covariates, patient_label, control_label,
                          vas_column) -> pd.DataFrame:
    if not isinstance(participants, pd.DataFrame):
        raise TypeError(f"participants must be a pandas DataFrame, got "
                        f"{type(participants).__name__}.")
    table = participants.copy()
    if "participant_id" in table.columns:
        table = table.set_index("participant_id")
    elif table.index.name != "participant_id":
        raise ValueError("participants needs a 'participant_id' column (or index); columns: "
                         f"{', '.join(map(str, table.columns))}.")
    table.index = table.index.astype(str)
    dup = sorted(table.index[table.index.duplicated()].unique())
    if dup:
        raise ValueError(f"participants: duplicated participant_id {dup}.")
    for column in ("group", *covariates, vas_column):
        if column not in table.columns:
            raise ValueError(f"participants has no '{column}' column (columns: "
                             f"{', '.join(map(str, table.columns))}).")
    labels = table["group"].astype(str).str.strip().str.lower()
    bad = {sid: g for sid, g in zip(table.index, table["group"], strict=True)
           if str(g).strip().lower() not in (patient_label.lower(), control_label.lower())}
    if bad:
        raise ValueError(f"participants: group must be {patient_label!r} or {control_label!r}; "
                         f"got {bad}.")
    out = pd.DataFrame(index=table.index)
    out["group"] = table["group"]
    out["patient"] = (labels == patient_label.lower()).to_numpy()
    for cov in covariates:
        col = table[cov]
        if cov == "sex":
            codes = []
            for sid, v in zip(table.index, col, strict=True):
                key = str(v).strip().lower()
                if key in _SEX_CODES:
                    codes.append(_SEX_CODES[key])
                elif key in ("0", "1", "0.0", "1.0"):
                    codes.append(float(key))
                else:
                    raise ValueError(f"participants: sex of {sid} is {v!r}; expected F/M "
                                     "(female/male) or 1/0.")
            out[cov] = codes
        else:
            values = pd.to_numeric(col, errors="coerce")
            bad = {sid: v for sid, v, n in zip(table.index, col, values, strict=True)
                   if not np.isfinite(n)}
            if bad:
                raise ValueError(f"participants: non-numeric or missing {cov} for {bad}.")
            out[cov] = values.astype(float)
    out["vas"] = pd.to_numeric(table[vas_column], errors="coerce").astype(float)
    return out


# --------------------------------------------------------------------------- loading


def _find_map(sub_dir: Path, subject: str, desc: str | None, metric: str,
              file_glob: str) -> Path:
    """The single ``desc-<metric>`` map (or brain mask for ``desc=None``) of one subject."""
    func = sub_dir / "func"
    pattern = file_glob.format(subject=subject)
    suffix = "_desc-brain_mask.nii.gz" if desc is None else "_desc-*_map.nii.gz"
    hits = []
    for path in sorted(func.glob(pattern + suffix)) if func.is_dir() else []:
        m = re.search(r"_desc-([A-Za-z0-9]+)_(?:map|mask)\.nii\.gz$", path.name)
        if m is None:
            continue
        if desc is None and m.group(1) == "brain":
            hits.append(path)
        elif desc is not None and _norm(m.group(1)) == desc:
            hits.append(path)
    what = "brain mask" if desc is None else f"{metric!r} map"
    expected = func / (pattern + ("_desc-brain_mask.nii.gz" if desc is None
                                  else f"_desc-{metric}_map.nii.gz"))
    if not hits:
        raise FileNotFoundError(f"{subject}: no {what} file {expected}.")
    if len(hits) > 1:
        raise ValueError(f"{subject}: several {what} files match {expected}: "
                         f"{[p.name for p in hits]}; narrow file_glob (one run per subject).")
    return hits[0]


def _load(path: Path, ref_shape, ref_affine) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 - any nibabel failure
        raise ValueError(f"{path}: unreadable NIfTI ({err}).") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if ref_shape is not None and data.shape != ref_shape:
        raise ValueError(f"{path}: shape {data.shape} differs from the first subject's "
                         f"{ref_shape}.")
    affine = np.asarray(img.affine, dtype=float)
    if ref_affine is not None and not np.allclose(affine, ref_affine, atol=1e-3):
        raise ValueError(f"{path}: affine differs from the first subject's (maps must share "
                         "one grid).")
    return data, affine


def load_subject_maps(deriv_dir, subjects, metrics, file_glob: str = "{subject}_*"):
    """Load every subject's brain mask and metric maps on one grid.

    Parameters
    ----------
    deriv_dir : path-like
        Derivatives root (maps under ``deriv_dir/rtfb/sub-XX/func``).
    subjects : sequence of str
        Participant ids.
    metrics : sequence of str
        Metric names (matched to ``desc-`` case- and punctuation-insensitively).
    file_glob : str
        Glob of the BIDS entities before ``_desc-`` in the file names, ``{subject}``
        replaced (default ``"{subject}_*"``: any entities, e.g. ``sub-01_task-rest``).

    Returns
    -------
    masks : numpy.ndarray of bool, shape (n_subjects, X, Y, Z)
    maps : dict of str to numpy.ndarray, shape (n_subjects, X, Y, Z)
    affine : numpy.ndarray, shape (4, 4)
    paths : dict of str to list of Path
        Loaded files per metric (and ``"mask"``).

    Raises
    ------
    FileNotFoundError
        A map or mask is missing (the message names the expected file).
    ValueError
        Several matching files, unreadable files, different shapes or affines.
    """
    root = Path(deriv_dir) / PIPELINE_DIR
    shape = affine = None
    masks, paths = [], {"mask": []}
    maps = {m: [] for m in metrics}
    for m in metrics:
        paths[m] = []
    for sid in subjects:
        sub_dir = root / sid
        mpath = _find_map(sub_dir, sid, None, "brain", file_glob)
        mask, aff = _load(mpath, shape, affine)
        if shape is None:
            shape, affine = mask.shape, aff
            if len(shape) != 3:
                raise ValueError(f"{mpath}: a brain mask must be 3D, got shape {shape}.")
        masks.append(mask > 0)
        paths["mask"].append(mpath)
        for m in metrics:
            path = _find_map(sub_dir, sid, _norm(m), m, file_glob)
            data, _ = _load(path, shape, affine)
            maps[m].append(data)
            paths[m].append(path)
    return (np.stack(masks), {m: np.stack(v) for m, v in maps.items()}, affine, paths)


# --------------------------------------------------------------------------- writing


def _save(array, affine, path: Path, dtype=np.float32) -> Path:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def _fwe_threshold(null_max: np.ndarray, alpha: float) -> float:
    """Smallest ``|t|`` cut with ``p_fwe < alpha`` exactly for ``|t| > cut``.

    ``p_fwe = #(null >= |t|) / N`` is ``< alpha`` iff fewer than ``ceil(alpha N)`` null
    maxima reach ``|t|``, i.e. iff ``|t|`` exceeds the ``ceil(alpha N)``-th largest one.
    """
    n = null_max.size
    k = int(np.ceil(alpha * n - 1e-9)) - 1
    return float(np.sort(null_max)[::-1][min(max(k, 0), n - 1)])


# --------------------------------------------------------------------------- analysis

#: Residual degrees of freedom below which a model is flagged as unreliable.
MIN_DF = 8


def _n_distinct_permutations(x: np.ndarray) -> float:
    """Distinct reorderings of the tested regressor ``x`` (multinomial over tied values)."""
    from math import lgamma

    _, counts = np.unique(np.round(x, 10), return_counts=True)
    log_n = lgamma(x.size + 1) - sum(lgamma(int(c) + 1) for c in counts)
    return float(np.round(np.exp(min(log_n, 700.0))))


def model_warnings(label: str, design: np.ndarray, contrast: np.ndarray, threshold: float,
                   alpha: float, n_permutations: int, sign_flip: bool = False) -> list[str]:
    """Warnings for a model with too few residual df or too few distinct permutations.

    Parameters
    ----------
    label : str
        Names the model in the messages.
    design, contrast : numpy.ndarray
        The fitted design (subjects x columns) and contrast.
    threshold : float
        FWE critical ``|t|`` found.
    alpha : float
        FWE level.
    n_permutations : int
        Permutations drawn.
    sign_flip : bool
        The test flips signs (one-sample / paired): ``2**n`` distinct flips.

    Returns
    -------
    list of str
        Empty when the model is fine.
    """
    n, p = design.shape
    df = n - p
    out = []
    if df < MIN_DF:
        out.append(f"{label}: only {df} residual degrees of freedom ({n} subjects, {p} design "
                   f"columns; fewer than {MIN_DF}): FWE critical |t| = {threshold:.3g}, so "
                   "only huge effects can survive and empty maps are expected. Add subjects "
                   "or drop covariates.")
    if sign_flip:
        distinct = float(2.0 ** min(n, 1000))
    else:
        distinct = _n_distinct_permutations(design @ np.linalg.pinv(design.T @ design)
                                            @ contrast)
    if distinct * alpha < 1:
        out.append(f"{label}: only {distinct:.0f} distinct permutations, so no p_FWE can be "
                   f"below {1 / distinct:.3g} (>= alpha {alpha:g}).")
    elif distinct < n_permutations:
        out.append(f"{label}: {n_permutations} permutations drawn from only {distinct:.0f} "
                   "distinct ones (repeats; p_FWE is coarse).")
    return out


def _in_mask(values, mask, fill: float) -> np.ndarray:
    """A 3D map holding ``values`` in ``mask`` and ``fill`` elsewhere."""
    out = np.full(mask.shape, fill, dtype=float)
    out[mask] = values
    return out


def contrast_maps(metric: str, key: str, t, p_fwe, q_fdr, mask, affine, threshold: float,
                  out_dir: Path):
    """Save one contrast's voxel-wise maps and cluster table.

    Parameters
    ----------
    metric, key : str
        Map name and contrast key (file stem ``<metric>_<key>``).
    t, p_fwe, q_fdr : ndarray, shape (n_mask_voxels,)
        t statistics, max-statistic FWE p values and FDR q values in the mask.
    mask : ndarray of bool
        Group mask.
    affine : ndarray, shape (4, 4)
        Affine of the maps.
    threshold : float
        FWE-corrected critical |t| for the cluster table.
    out_dir : Path
        Folder of the files.

    Returns
    -------
    t3, p3, q3 : ndarray
        The three maps (0, 1 and 1 outside the mask).
    table : pandas.DataFrame
        Clusters above ``threshold`` (``<stem>_clusters.tsv``), with their peak p and q.
    peak_ijk : tuple of int
        Peak of the largest cluster, or of ``|t|`` when there is none.
    files : dict of str -> Path
        ``t``, ``pfwe``, ``qfdr`` and ``clusters``.
    """
    t3, p3, q3 = _in_mask(t, mask, 0.0), _in_mask(p_fwe, mask, 1.0), _in_mask(q_fdr, mask, 1.0)
    table = cluster_table(t3, affine, threshold, two_sided=True)
    peaks = tuple(table[["peak_i", "peak_j", "peak_k"]].to_numpy(int).T)
    table.insert(0, "contrast", key)
    table.insert(0, "metric", metric)
    table["p_fwe_peak"] = p3[peaks] if len(table) else []
    table["q_fdr_peak"] = q3[peaks] if len(table) else []
    if len(table):
        ijk = tuple(int(v) for v in table.loc[0, ["peak_i", "peak_j", "peak_k"]])
    else:
        ijk = tuple(int(v) for v in np.unravel_index(np.argmax(np.abs(t3)), mask.shape))
    stem = f"{metric}_{key}"
    files = {
        "t": _save(t3, affine, out_dir / f"{stem}_t.nii.gz"),
        "pfwe": _save(p3, affine, out_dir / f"{stem}_pfwe.nii.gz"),
        "qfdr": _save(q3, affine, out_dir / f"{stem}_qfdr.nii.gz"),
        "clusters": out_dir / f"{stem}_clusters.tsv",
    }
    table.to_csv(files["clusters"], sep="\t", index=False, na_rep="n/a")
    return t3, p3, q3, table, ijk, files


def _contrast(metric, key, data, mask, affine, design, contrast, subjects, covariates,
              all_data, n_permutations, alpha, seed, out_dir) -> ContrastResult:
    perm = permutation_fwe(data, design, contrast, n_permutations=n_permutations, seed=seed,
                           two_sided=True)
    p_unc = 2 * sp_stats.t.sf(np.abs(perm.t), perm.df)
    _, q = fdr_bh(p_unc, alpha=alpha)
    threshold = _fwe_threshold(perm.null_max, alpha)

    t3, p3, q3, table, ijk, files = contrast_maps(metric, key, perm.t, perm.p_fwe, q, mask,
                                                  affine, threshold, out_dir)
    return ContrastResult(
        metric=metric, contrast=key, label=_CONTRASTS[key], subjects=list(subjects),
        covariates=list(covariates), t=t3, p_fwe=p3, q_fdr=q3,
        r=_in_mask(t_to_r(perm.t, perm.df), mask, 0.0) if key == "vas" else None,
        df=perm.df,
        threshold=threshold, null_max=perm.null_max, clusters=table, peak_ijk=ijk,
        peak_significant=bool(len(table)), peak_values=all_data[(slice(None), *ijk)],
        files=files)


def _covariate_matrix(table: pd.DataFrame, covariates, where: str, notes: list):
    kept = []
    for cov in covariates:
        if np.ptp(table[cov].to_numpy()) == 0:
            notes.append(f"{where}: covariate {cov!r} is constant in the analysed subjects "
                         "and was dropped.")
        else:
            kept.append(cov)
    return (table[kept].to_numpy(float) if kept else None), kept


def group_analysis(
    deriv_dir,
    participants: pd.DataFrame,
    metrics=("alff", "falff", "reho"),
    n_permutations: int = 1000,
    alpha: float = 0.05,
    seed: int | None = 0,
    *,
    covariates=("age", "sex"),
    vas_subjects: str = "patients",
    patient_label: str = "patient",
    control_label: str = "control",
    vas_column: str = "vas",
    file_glob: str = "{subject}_*",
    classify_metric: str | None = None,
    classify_permutations: int = 100,
    progress=None,
) -> GroupResults:
    """Voxel-wise group statistics of the per-subject maps (see the module docstring).

    Parameters
    ----------
    deriv_dir : path-like
        Derivatives root: reads ``deriv_dir/rtfb/sub-XX/func``, writes ``deriv_dir/group``.
    participants : pandas.DataFrame
        ``participant_id`` (column or index), ``group`` (``patient_label`` /
        ``control_label``), the ``covariates`` columns and ``vas_column``. Every listed
        subject is analysed and must have maps; subjects with maps but not listed are
        ignored. ``sex`` may be F/M (female/male) or 1/0; it is coded 1 = female.
    metrics : sequence of str
        Metrics (``desc-`` labels, case-insensitive).
    n_permutations : int
        Permutations of the max-statistic FWE test (identity included).
    alpha : float
        FWE level of the cluster tables and FDR level of the q maps.
    seed : int | None
        Seed of the permutations (and of the classification folds).
    covariates : sequence of str
        Nuisance covariates (mean-centred) of both models.
    vas_subjects : {"patients", "all"}
        Subjects of the VAS correlation. Subjects with a missing VAS are left out of it.
    patient_label, control_label : str
        Group labels (case-insensitive).
    vas_column : str
        Column of the VAS score.
    file_glob : str
        Glob of the BIDS entities before ``_desc-`` in the map file names, ``{subject}``
        replaced (e.g. ``"{subject}_ses-1_task-rest"`` to pick one session).
    classify_metric : str | None
        Metric whose in-mask voxel values are the features of the nested-CV classification
        of patients vs controls and of the patients' VAS regression (None: skipped).
    classify_permutations : int
        Label permutations of the classification p-value (0 to skip).
    progress : callable | None
        Called as ``progress(step, n_steps)`` when a step starts (``step`` describes it:
        loading, one per metric and contrast, classification), for a progress display.

    Returns
    -------
    GroupResults

    Raises
    ------
    FileNotFoundError
        A subject's map or brain mask is missing (the message names the file).
    ValueError
        Maps of different shapes or affines (naming the file), a malformed participants
        table (naming the column or values), an empty intersection mask, fewer than 2
        patients or controls.
    """
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}.")
    _check_option("vas_subjects", vas_subjects, ("patients", "all"))
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics is empty.")
    covariates = tuple(covariates)
    table = _prepare_participants(participants, covariates, patient_label, control_label,
                                  vas_column)
    n_pat = int(table["patient"].sum())
    if n_pat < 2 or len(table) - n_pat < 2:
        raise ValueError(f"need at least 2 patients and 2 controls, got {n_pat} patient(s) "
                         f"and {len(table) - n_pat} control(s).")
    all_metrics = metrics
    if classify_metric is not None and _norm(classify_metric) not in map(_norm, metrics):
        all_metrics = (*metrics, classify_metric)

    deriv_dir = Path(deriv_dir)
    subjects = list(table.index)
    n_steps = 1 + 2 * len(metrics) + (classify_metric is not None)

    def step(text):
        if progress is not None:
            progress(text, n_steps)

    step("loading the subject maps")
    masks, maps, affine, _ = load_subject_maps(deriv_dir, subjects, all_metrics, file_glob)
    mask = masks.all(axis=0)
    for m in all_metrics:
        mask &= np.isfinite(maps[m]).all(axis=0)
    if not mask.any():
        raise ValueError("the intersection of the subjects' brain masks (finite values) is "
                         "empty.")
    out_dir = deriv_dir / GROUP_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    results = GroupResults(
        deriv_dir=deriv_dir, out_dir=out_dir, participants=table, metrics=metrics, mask=mask,
        mask_fraction=masks.mean(axis=0), affine=affine, contrasts={},
        n_permutations=n_permutations, alpha=float(alpha), seed=seed, covariates=covariates,
        vas_subjects=vas_subjects, classify_metric=classify_metric, notes=notes)
    results.files["mask"] = _save(mask, affine, out_dir / "group_desc-brain_mask.nii.gz",
                                  dtype=np.uint8)

    patient = table["patient"].to_numpy()
    cov_g, kept_g = _covariate_matrix(table, covariates, "patients vs controls", notes)
    design_g, con_g = two_sample_design(patient, cov_g)
    vas_rows = np.isfinite(table["vas"].to_numpy())
    if vas_subjects == "patients":
        vas_rows &= patient
    n_vas = int(vas_rows.sum())
    sub_v = table[vas_rows]
    design_v = None
    if n_vas < 2 or np.ptp(sub_v["vas"].to_numpy()) == 0:
        notes.append(f"VAS correlation skipped: {n_vas} subject(s) with a varying VAS.")
    else:
        cov_v, kept_v = _covariate_matrix(sub_v, covariates, "VAS correlation", notes)
        if n_vas <= 2 + len(kept_v):
            notes.append(f"VAS correlation skipped: {n_vas} subjects for "
                         f"{2 + len(kept_v)} design columns.")
        else:
            design_v, con_v = correlation_design(sub_v["vas"].to_numpy(), cov_v)
            pool = patient if vas_subjects == "patients" else np.ones(len(table), bool)
            left = [s for s, keep, p in zip(subjects, vas_rows, pool, strict=True)
                    if p and not keep]
            if left:
                notes.append(f"VAS correlation: left out (no VAS): {', '.join(left)}.")

    for metric in metrics:
        data = maps[metric][:, mask]
        all_vox = maps[metric]
        step(f"{metric}: patients vs controls ({n_permutations} permutations)")
        results.contrasts[(metric, "patVsCon")] = _contrast(
            metric, "patVsCon", data, mask, affine, design_g, con_g, subjects, kept_g,
            all_vox, n_permutations, alpha, seed, out_dir)
        step(f"{metric}: VAS correlation ({n_permutations} permutations)")
        if design_v is not None:
            results.contrasts[(metric, "vas")] = _contrast(
                metric, "vas", data[vas_rows], mask, affine, design_v, con_v,
                list(sub_v.index), kept_v, all_vox, n_permutations, alpha, seed,
                out_dir)
    for key, design, contrast in (("patVsCon", design_g, con_g),
                                  ("vas", design_v, con_v if design_v is not None else None)):
        done = [c for (_m, k), c in results.contrasts.items() if k == key]
        if design is None or not done:
            continue
        results.warnings += model_warnings(
            _CONTRASTS[key], design, contrast, max(c.threshold for c in done), alpha,
            n_permutations)

    tables = results.cluster_tables
    results.files["clusters"] = out_dir / "clusters.tsv"
    tables.to_csv(results.files["clusters"], sep="\t", index=False, na_rep="n/a")
    results.files["subjects"] = out_dir / "subjects.tsv"
    table.to_csv(results.files["subjects"], sep="\t", index_label="participant_id",
                 na_rep="n/a")

    if classify_metric is not None:
        step(f"classification ({classify_metric})")
        _run_classification(results, maps[classify_metric][:, mask], classify_metric,
                            classify_permutations, seed)
    return results


def _run_classification(results: GroupResults, X: np.ndarray, metric: str,
                        n_permutations: int, seed) -> None:
    table = results.participants
    y = table["patient"].to_numpy().astype(int)
    counts = np.bincount(y, minlength=2)
    n_outer = int(min(5, counts.min()))
    rows = []
    if n_outer < 2:
        results.notes.append("classification skipped: fewer than 2 subjects in a group.")
    else:
        res = classify(X, y, n_outer=n_outer, n_inner=max(2, min(3, n_outer - 1)),
                       n_permutations=n_permutations, random_state=seed)
        results.classification = res
        rows.append({"analysis": "patients vs controls", "metric": metric,
                     "model": "linear SVM", "n_subjects": int(y.size),
                     "n_outer_folds": n_outer, "score": "accuracy",
                     "value": res.mean_accuracy, "ci_low": res.ci[0], "ci_high": res.ci[1],
                     "p_value": res.p_value, "chance": res.chance})
    pat = y.astype(bool) & np.isfinite(table["vas"].to_numpy())
    n_outer_r = int(min(5, pat.sum() // 2))
    if n_outer_r < 2:
        results.notes.append(f"VAS regression skipped: {int(pat.sum())} patients with a VAS "
                             "(needs at least 4).")
    else:
        reg = regress_vas(X[pat], table["vas"].to_numpy()[pat], n_outer=n_outer_r,
                          n_inner=2, random_state=seed)
        results.vas_regression = reg
        rows.append({"analysis": "VAS regression (patients)", "metric": metric,
                     "model": "ridge", "n_subjects": int(pat.sum()),
                     "n_outer_folds": n_outer_r, "score": "Pearson r (out of fold)",
                     "value": reg.r, "ci_low": np.nan, "ci_high": np.nan,
                     "p_value": reg.p_value, "chance": np.nan})
    if rows:
        results.files["classification"] = results.out_dir / "classification.tsv"
        pd.DataFrame(rows).to_csv(results.files["classification"], sep="\t", index=False,
                                  na_rep="n/a")
