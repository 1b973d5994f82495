"""What the two-group/VAS analysis (:mod:`rtfb.offline.group`) and the general designs
(:mod:`rtfb.offline.design_analysis`) share: finding and loading the subjects' maps, saving
the group maps, the FWE threshold, the model checks, and one contrast's maps and clusters.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .stats import (
    cluster_table,
)

__all__ = ["GROUP_DIR", "MIN_DF", "PIPELINE_DIR", "contrast_maps", "find_map", "fwe_threshold",
           "in_mask", "load_map", "load_subject_maps", "model_warnings", "norm_name",
           "save_map", "single_file"]

PIPELINE_DIR = "rtfb"
GROUP_DIR = "group"


def norm_name(name: str) -> str:
    """A metric name as matched in file names (lower case, alphanumeric; seedfc -> fc)."""
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return "fc" + key[len("seedfc"):] if key.startswith("seedfc") else key


# --------------------------------------------------------------------------- loading


def find_map(sub_dir: Path, subject: str, desc: str | None, metric: str,
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
        elif desc is not None and norm_name(m.group(1)) == desc:
            hits.append(path)
    what = "brain mask" if desc is None else f"{metric!r} map"
    expected = func / (pattern + ("_desc-brain_mask.nii.gz" if desc is None
                                  else f"_desc-{metric}_map.nii.gz"))
    return single_file(hits, subject, what, expected)


def single_file(hits: list[Path], subject: str, what: str, expected: Path) -> Path:
    """The one file of ``hits`` (one run per subject), or an error naming ``expected``."""
    if not hits:
        raise FileNotFoundError(f"{subject}: no {what} file {expected}.")
    if len(hits) > 1:
        raise ValueError(f"{subject}: several {what} files match {expected}: "
                         f"{[p.name for p in hits]}; narrow file_glob (one run per subject).")
    return hits[0]


def load_map(path: Path, ref_shape, ref_affine) -> tuple[np.ndarray, np.ndarray]:
    """A subject's map and its affine, checked against the reference grid."""
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
        mpath = find_map(sub_dir, sid, None, "brain", file_glob)
        mask, aff = load_map(mpath, shape, affine)
        if shape is None:
            shape, affine = mask.shape, aff
            if len(shape) != 3:
                raise ValueError(f"{mpath}: a brain mask must be 3D, got shape {shape}.")
        masks.append(mask > 0)
        paths["mask"].append(mpath)
        for m in metrics:
            path = find_map(sub_dir, sid, norm_name(m), m, file_glob)
            data, _ = load_map(path, shape, affine)
            maps[m].append(data)
            paths[m].append(path)
    return (np.stack(masks), {m: np.stack(v) for m, v in maps.items()}, affine, paths)


# --------------------------------------------------------------------------- writing


def save_map(array, affine, path: Path, dtype=np.float32) -> Path:
    """Save a group map (float32 NIfTI); returns ``path``."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, path)
    return path


def fwe_threshold(null_max: np.ndarray, alpha: float) -> float:
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


def n_distinct_permutations(x: np.ndarray) -> float:
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
        distinct = n_distinct_permutations(design @ np.linalg.pinv(design.T @ design)
                                            @ contrast)
    if distinct * alpha < 1:
        out.append(f"{label}: only {distinct:.0f} distinct permutations, so no p_FWE can be "
                   f"below {1 / distinct:.3g} (>= alpha {alpha:g}).")
    elif distinct < n_permutations:
        out.append(f"{label}: {n_permutations} permutations drawn from only {distinct:.0f} "
                   "distinct ones (repeats; p_FWE is coarse).")
    return out


def in_mask(values, mask, fill: float) -> np.ndarray:
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
    t3, p3, q3 = in_mask(t, mask, 0.0), in_mask(p_fwe, mask, 1.0), in_mask(q_fdr, mask, 1.0)
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
        "t": save_map(t3, affine, out_dir / f"{stem}_t.nii.gz"),
        "pfwe": save_map(p3, affine, out_dir / f"{stem}_pfwe.nii.gz"),
        "qfdr": save_map(q3, affine, out_dir / f"{stem}_qfdr.nii.gz"),
        "clusters": out_dir / f"{stem}_clusters.tsv",
    }
    table.to_csv(files["clusters"], sep="\t", index=False, na_rep="n/a")
    return t3, p3, q3, table, ijk, files
