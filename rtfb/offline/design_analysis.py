"""Group statistics of a general design (:mod:`rtfb.offline.design`) on the subject maps.

Reads ``DERIV/rtfb/sub-XX/[ses-YY/]func/*_desc-<Metric>_map.nii.gz`` (and brain masks) for
the sessions of the design, forms the rows' data (maps, or ``post - pre`` differences),
and for every metric and tested term writes to ``DERIV/group/``:
``<metric>_<term>_t.nii.gz``, ``_pfwe`` (max-|t| FWE), ``_qfdr`` (BH), with TFCE
``_tfce`` and ``_ptfce`` (max-TFCE FWE), ``_clusters.tsv`` (voxels with p_FWE < alpha,
26-connectivity), and ``design.tsv`` (the design matrix). The result is a
:class:`~rtfb.offline.group.GroupResults` whose ``design`` is set, so the report shows the
model and its design matrix.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .._utils.checks import check_int
from .design import Design, DesignSpec, build_design, fit_design, read_sessions
from .group_common import (
    GROUP_DIR,
    PIPELINE_DIR,
    contrast_maps,
    find_map,
    fwe_threshold,
    load_map,
    model_warnings,
    norm_name,
    save_map,
)
from .group_results import ContrastResult, GroupResults

__all__ = ["available_runs", "design_analysis"]


def available_runs(deriv_dir) -> set[tuple[str, str | None]]:
    """``(subject, session)`` pairs with a brain mask under ``DERIV/rtfb``."""
    root = Path(deriv_dir) / PIPELINE_DIR
    out = set()
    for path in root.glob("sub-*/**/func/*_desc-brain_mask.nii.gz"):
        rel = path.relative_to(root).parts
        out.add((rel[0], rel[1] if rel[1].startswith("ses-") else None))
    return out


def _term_key(term: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", term) or "term"


def _load_rows(deriv_dir: Path, design: Design, metrics, file_glob: str):
    """Masks (n_rows, X, Y, Z) and data per metric (n_rows, X, Y, Z) of the design rows."""
    root = deriv_dir / PIPELINE_DIR
    sessions = design.sessions or (None,)
    shape = affine = None
    masks = []
    maps = {m: [] for m in metrics}
    for sid in design.subjects:
        row_masks, row_maps = [], {m: [] for m in metrics}
        for ses in sessions:
            sub_dir = root / sid / ses if ses else root / sid
            mask, aff = load_map(find_map(sub_dir, sid, None, "brain", file_glob), shape, affine)
            if shape is None:
                shape, affine = mask.shape, aff
            row_masks.append(mask > 0)
            for m in metrics:
                path = find_map(sub_dir, sid, norm_name(m), m, file_glob)
                data, _ = load_map(path, shape, affine)
                row_maps[m].append(data)
        masks.append(np.logical_and.reduce(row_masks))
        for m in metrics:
            vals = row_maps[m]
            maps[m].append(vals[-1] - vals[0] if len(vals) == 2 else vals[0])
    return np.stack(masks), {m: np.stack(v) for m, v in maps.items()}, affine


def design_analysis(deriv_dir, participants: pd.DataFrame, spec: DesignSpec,
                    metrics=("alff",), n_permutations: int = 1000, alpha: float = 0.05,
                    seed: int | None = 0, *, tfce: bool = True, bids_dir=None,
                    file_glob: str = "{subject}_*", progress=None) -> GroupResults:
    """Fit a general design voxel-wise on every metric (see the module docstring).

    Parameters
    ----------
    deriv_dir : path-like
        Derivatives root.
    participants : pandas.DataFrame
        Indexed by ``participant_id`` with ``group`` and the design's columns.
    spec : DesignSpec
        The model.
    metrics : sequence of str
        Metrics (``desc-`` labels, case-insensitive).
    n_permutations : int
        Permutations or sign flips (identity included).
    alpha : float
        FWE level of the cluster tables.
    seed : int | None
        Seed of the permutations.
    tfce : bool
        Also TFCE scores and their FWE p-values.
    bids_dir : path-like | None
        BIDS root, for ``sub-XX/sub-XX_sessions.tsv`` columns.
    file_glob : str
        Entities before ``_desc-`` in the map names.
    progress : callable | None
        ``progress(step, n_steps)`` at the start of each step.

    Returns
    -------
    GroupResults
        ``contrasts`` keyed ``(metric, term)``, ``design`` set.
    """
    n_permutations = check_int(n_permutations, "n_permutations", minimum=1)
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    deriv_dir = Path(deriv_dir)
    table = participants.copy()
    if "participant_id" in table.columns:
        table = table.set_index("participant_id")
    sessions_table = (read_sessions(bids_dir, list(table.index)) if bids_dir is not None
                      else None)
    design = build_design(table, spec, sessions_table=sessions_table,
                          available=available_runs(deriv_dir))
    n_steps = 1 + len(metrics) * len(spec.tests)

    def step(text):
        if progress is not None:
            progress(text, n_steps)

    step("loading the subject maps")
    masks, maps, affine = _load_rows(deriv_dir, design, metrics, file_glob)
    mask = masks.all(axis=0)
    for m in metrics:
        mask &= np.isfinite(maps[m]).all(axis=0)
    if not mask.any():
        raise ValueError("the intersection of the subjects' brain masks is empty.")
    out_dir = deriv_dir / GROUP_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table.loc[design.subjects].copy()
    rows["patient"] = (rows["group"].astype(str).str.strip().str.lower()
                       == "patient").to_numpy()
    if "vas" not in rows.columns:
        rows["vas"] = np.nan
    results = GroupResults(
        deriv_dir=deriv_dir, out_dir=out_dir, participants=rows, metrics=metrics, mask=mask,
        mask_fraction=masks.mean(axis=0), affine=affine, contrasts={},
        n_permutations=n_permutations, alpha=float(alpha), seed=seed,
        covariates=tuple(spec.covariates), vas_subjects=spec.subjects, notes=list(design.notes),
        design=design)
    results.files["mask"] = save_map(mask, affine, out_dir / "group_desc-brain_mask.nii.gz",
                                  dtype=np.uint8)
    results.files["design"] = out_dir / "design.tsv"
    design.matrix.to_csv(results.files["design"], sep="\t", index_label="participant_id")
    import nibabel as nib

    mask_img = nib.Nifti1Image(mask.astype(np.uint8), affine)
    X = design.matrix.to_numpy(float)
    for metric in metrics:
        data = maps[metric][:, mask]
        for term in spec.tests:
            step(f"{metric}: {term} ({n_permutations} permutations"
                 + (", TFCE)" if tfce else ")"))
            fit = fit_design(design, data, term, n_permutations=n_permutations, seed=seed,
                             tfce=tfce, mask_img=mask_img, alpha=alpha)
            results.contrasts[(metric, term)] = _contrast(
                metric, term, fit, design, mask, affine, alpha, maps[metric], out_dir)
    for term in spec.tests:
        col = list(design.matrix.columns).index(_tested_name(design, term))
        contrast = np.zeros(X.shape[1])
        contrast[col] = 1.0
        done = [c for (_m, k), c in results.contrasts.items() if k == term]
        results.warnings += model_warnings(f"{spec.describe()} [{term}]", X, contrast,
                                           max(c.threshold for c in done), alpha,
                                           n_permutations, sign_flip=term == "mean")
    tables = results.cluster_tables
    results.files["clusters"] = out_dir / "clusters.tsv"
    tables.to_csv(results.files["clusters"], sep="\t", index=False, na_rep="n/a")
    results.files["subjects"] = out_dir / "subjects.tsv"
    rows.to_csv(results.files["subjects"], sep="\t", index_label="participant_id", na_rep="n/a")
    return results


def _tested_name(design: Design, term: str) -> str:
    from .design import tested_column

    return tested_column(design, term)


def _contrast(metric, term, fit, design: Design, mask, affine, alpha, all_data,
              out_dir) -> ContrastResult:
    threshold = fwe_threshold(fit.null_max, alpha)
    key = _term_key(term)
    t3, p3, q3, table, ijk, files = contrast_maps(metric, key, fit.t, fit.p_fwe, fit.q_fdr,
                                                  mask, affine, threshold, out_dir)
    stem = f"{metric}_{key}"
    tfce3 = ptfce3 = None
    if fit.tfce is not None:
        tfce3 = np.zeros(mask.shape)
        tfce3[mask] = fit.tfce
        ptfce3 = np.ones(mask.shape)
        ptfce3[mask] = fit.p_tfce
        files["tfce"] = save_map(tfce3, affine, out_dir / f"{stem}_tfce.nii.gz")
        files["ptfce"] = save_map(ptfce3, affine, out_dir / f"{stem}_ptfce.nii.gz")
    col = _tested_name(design, term)
    covs = [c for c in design.matrix.columns if c not in ("intercept", col)]
    return ContrastResult(
        metric=metric, contrast=key, label=_label(design.spec, term), subjects=design.subjects,
        covariates=covs, t=t3, p_fwe=p3, q_fdr=q3, r=None, df=fit.df, threshold=threshold,
        null_max=fit.null_max, clusters=table, peak_ijk=ijk,
        peak_significant=bool(len(table)), peak_values=all_data[(slice(None), *ijk)],
        files=files, tfce=tfce3, p_tfce=ptfce3,
        tested=design.matrix[col].to_numpy(float))


def _label(spec: DesignSpec, term: str) -> str:
    paired = bool(spec.sessions) and len(spec.sessions) == 2
    if term == "mean":
        return (f"paired t: {spec.sessions[1]} > {spec.sessions[0]}" if paired
                else "one-sample t: mean > 0")
    if term == "group":
        return ("group x session: patients' change > controls'" if paired
                else "patients > controls" + (" (ANCOVA)" if spec.covariates else ""))
    return f"{term} x session (change vs {term})" if paired else f"slope of {term}"
