"""fMRIPrep derivatives as input of ``rtfb analyze`` (``--input fmriprep``).

Runs are ``sub-XX/[ses-YY/]func/*_space-MNI152NLin2009cAsym*_desc-preproc_bold.nii.gz``
(TR from the JSON sidecar). fMRIPrep has realigned and normalised them, so rtfb does not
realign again: each run is masked (fMRIPrep's ``*_desc-brain_mask.nii.gz`` of the same
entities, else :func:`nilearn.masking.compute_epi_mask`) and cleaned with the confounds of
``*_desc-confounds_timeseries.tsv`` chosen by a named strategy of nilearn
(:func:`nilearn.interfaces.fmriprep.load_confounds_strategy` /
:func:`~nilearn.interfaces.fmriprep.load_confounds`):

================  ==============================================================
``simple``        24 motion (params, derivatives, squares) + WM/CSF + cosine high-pass
``simple+gsr``    ``simple`` + global signal
``scrubbing``     24 motion + WM/CSF (full) + high-pass; volumes with FD > 0.5 mm or
                  std DVARS > 1.5 censored (segments < 5 volumes too)
``compcor``       24 motion + anatomical CompCor (combined mask, all) + high-pass
``motion24-wmcsf``  24 motion + WM/CSF only (no high-pass)
================  ==============================================================

Cleaning is :func:`nilearn.signal.clean` (linear detrend, the confounds regressed out on the
retained volumes; no filtering, no standardisation): the residuals of least squares on
``[1, t, confounds]`` over the retained volumes. With censoring the metrics are computed on
the retained volumes only (the sidecars say how many were removed). The strategy and the
confound columns used are named in every sidecar.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

__all__ = ["FMRIPREP_SPACE", "STRATEGIES", "load_fmriprep_confounds", "preprocess_fmriprep_run",
           "strip_preproc"]

#: Output space read from fMRIPrep.
FMRIPREP_SPACE = "MNI152NLin2009cAsym"
#: Glob of the runs read (relative to a ``func`` folder).
RUN_GLOB = f"*_space-{FMRIPREP_SPACE}*_desc-preproc_bold.nii*"
#: Named confound strategies: (nilearn function, keyword arguments).
STRATEGIES = {
    "simple": ("load_confounds_strategy", {"denoise_strategy": "simple"}),
    "simple+gsr": ("load_confounds_strategy", {"denoise_strategy": "simple",
                                               "global_signal": "basic"}),
    "scrubbing": ("load_confounds_strategy", {"denoise_strategy": "scrubbing"}),
    "compcor": ("load_confounds_strategy", {"denoise_strategy": "compcor"}),
    "motion24-wmcsf": ("load_confounds", {"strategy": ("motion", "wm_csf"), "motion": "full",
                                          "wm_csf": "basic"}),
}


def strip_preproc(prefix: str) -> str:
    """``sub-01_task-rest_space-X_desc-preproc`` -> ``sub-01_task-rest_space-X``."""
    return re.sub(r"_desc-preproc$", "", prefix)


def load_fmriprep_confounds(bold_path, strategy: str):
    """Confounds and retained volumes of one fMRIPrep run for a named strategy.

    Parameters
    ----------
    bold_path : path-like
        ``*_desc-preproc_bold.nii.gz``; its ``*_desc-confounds_timeseries.tsv`` (+ ``.json``)
        must be in the same folder.
    strategy : str
        A key of :data:`STRATEGIES`.

    Returns
    -------
    confounds : pandas.DataFrame
        One row per volume (all volumes), the chosen columns.
    sample_mask : numpy.ndarray of int | None
        Retained volumes (None: all).
    description : dict
        Strategy, nilearn call and columns, for the sidecars.

    Raises
    ------
    ValueError
        Unknown strategy, or the confounds file is missing or lacks the strategy's columns
        (the message names the run and nilearn's reason).
    """
    from .._utils.checks import _check_option

    _check_option("confounds", strategy, tuple(STRATEGIES))
    import warnings

    from nilearn.interfaces import fmriprep

    name, kwargs = STRATEGIES[strategy]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            confounds, sample_mask = getattr(fmriprep, name)(str(bold_path), **kwargs)
    except (ValueError, KeyError, FileNotFoundError, OSError) as err:
        raise ValueError(f"{bold_path}: cannot load the '{strategy}' confounds ({err}).") \
            from None
    call = f"nilearn.interfaces.fmriprep.{name}(" + ", ".join(
        f"{k}={v!r}" for k, v in kwargs.items()) + ")"
    description = {"Strategy": strategy, "Call": call, "Columns": list(confounds.columns)}
    return confounds, sample_mask, description


def _mask_path(bold_path: Path) -> Path:
    name = re.sub(r"_desc-preproc_bold\.nii(\.gz)?$", "_desc-brain_mask.nii.gz", bold_path.name)
    return bold_path.with_name(name)


def preprocess_fmriprep_run(bold_path, tr: float, strategy: str) -> dict:
    """Mask and clean one fMRIPrep run (see the module docstring).

    Returns
    -------
    dict
        As :func:`rtfb.offline.subject.preprocess_run`: ``data`` (n_voxels, n_retained),
        ``mask``, ``affine``, ``motion`` (n_volumes, 6: fMRIPrep's trans in mm, rot in
        rad), ``fd``, ``censored`` (n_volumes,), plus ``preprocessing`` (sidecar entry).
    """
    import warnings

    import nibabel as nib
    from nilearn.masking import compute_epi_mask
    from nilearn.signal import clean

    bold_path = Path(bold_path)
    img = nib.load(bold_path)
    if img.ndim != 4:
        raise ValueError(f"{bold_path}: a BOLD run must be 4D, got shape {img.shape}.")
    n_volumes = img.shape[3]
    confounds, sample_mask, description = load_fmriprep_confounds(bold_path, strategy)
    if len(confounds) != n_volumes:
        raise ValueError(f"{bold_path}: {len(confounds)} confound rows for {n_volumes} "
                         "volumes.")
    mask_file = _mask_path(bold_path)
    if mask_file.is_file():
        mask_img = nib.load(mask_file)
        if mask_img.shape[:3] != img.shape[:3] or not np.allclose(mask_img.affine, img.affine,
                                                                  atol=1e-3):
            raise ValueError(f"{mask_file}: not on the grid of {bold_path}.")
        mask = np.asarray(mask_img.dataobj) > 0
        mask_source = str(mask_file)
    else:
        mask = np.asarray(compute_epi_mask(img).dataobj) > 0
        mask_source = "nilearn.masking.compute_epi_mask of the run"
    data = np.asarray(img.dataobj, dtype=np.float64)[mask]  # (n_voxels, n_volumes)
    kept = np.arange(n_volumes) if sample_mask is None else np.asarray(sample_mask, int)
    censored = np.ones(n_volumes, bool)
    censored[kept] = False
    if kept.size < 10:
        raise ValueError(f"{bold_path}: only {kept.size} volumes left after '{strategy}' "
                         "censoring.")
    conf = confounds.to_numpy(float) if confounds.shape[1] else None
    with warnings.catch_warnings():  # 'standardize=False' spelling differs across nilearn
        warnings.simplefilter("ignore", FutureWarning)
        cleaned = clean(data.T, detrend=True, standardize=False, confounds=conf,
                        standardize_confounds=True, filter=False, t_r=float(tr),
                        sample_mask=None if sample_mask is None else kept)
    table = _read_confounds_table(bold_path)
    motion = np.zeros((n_volumes, 6))
    fd = np.zeros(n_volumes)
    if table is not None:
        cols = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
        if all(c in table.columns for c in cols):
            motion = table[cols].to_numpy(float)
        if "framewise_displacement" in table.columns:
            fd = np.nan_to_num(table["framewise_displacement"].to_numpy(float))
    preprocessing = {
        "Implementation": "fMRIPrep derivatives (realigned and normalised by fMRIPrep); "
                          "rtfb.offline.fmriprep: nilearn.signal.clean (linear detrend + "
                          "confound regression on the retained volumes)",
        "Space": FMRIPREP_SPACE, "Mask": mask_source,
        "Confounds": {**description, "NumberOfRegressors": int(confounds.shape[1])},
        "CensoredVolumes": int(censored.sum()),
        "CensoredVolumesUsed": False,
    }
    return dict(data=np.ascontiguousarray(cleaned.T), mask=mask, affine=img.affine,
                motion=motion, fd=fd, censored=censored, preprocessing=preprocessing)


def _read_confounds_table(bold_path: Path):
    """The fMRIPrep confounds table of the run (entities before ``_space-``), or None."""
    import pandas as pd

    stem = bold_path.name.split("_space-")[0]
    path = bold_path.with_name(f"{stem}_desc-confounds_timeseries.tsv")
    if not path.is_file():
        return None
    return pd.read_csv(path, sep="\t", na_values=["n/a"])
