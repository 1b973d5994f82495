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

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sp_stats

from .._utils.checks import _check_option, check_int
from .classify import classify, regress_vas
from .group_common import (
    GROUP_DIR,
    contrast_maps,
    fwe_threshold,
    in_mask,
    load_subject_maps,
    model_warnings,
    norm_name,
    save_map,
)
from .group_results import ContrastResult, GroupResults
from .stats import (
    correlation_design,
    fdr_bh,
    permutation_fwe,
    t_to_r,
    two_sample_design,
)

__all__ = ["group_analysis"]

_CONTRASTS = {"patVsCon": "patients > controls", "vas": "VAS correlation"}
_SEX_CODES = {"f": 1.0, "female": 1.0, "w": 1.0, "woman": 1.0,
              "m": 0.0, "male": 0.0, "man": 0.0}


# --------------------------------------------------------------------------- participants

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


def _contrast(metric, key, data, mask, affine, design, contrast, subjects, covariates,
              all_data, n_permutations, alpha, seed, out_dir) -> ContrastResult:
    perm = permutation_fwe(data, design, contrast, n_permutations=n_permutations, seed=seed,
                           two_sided=True)
    p_unc = 2 * sp_stats.t.sf(np.abs(perm.t), perm.df)
    _, q = fdr_bh(p_unc, alpha=alpha)
    threshold = fwe_threshold(perm.null_max, alpha)

    t3, p3, q3, table, ijk, files = contrast_maps(metric, key, perm.t, perm.p_fwe, q, mask,
                                                  affine, threshold, out_dir)
    return ContrastResult(
        metric=metric, contrast=key, label=_CONTRASTS[key], subjects=list(subjects),
        covariates=list(covariates), t=t3, p_fwe=p3, q_fdr=q3,
        r=in_mask(t_to_r(perm.t, perm.df), mask, 0.0) if key == "vas" else None,
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
    if classify_metric is not None and norm_name(classify_metric) not in map(norm_name, metrics):
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
    results.files["mask"] = save_map(mask, affine, out_dir / "group_desc-brain_mask.nii.gz",
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
