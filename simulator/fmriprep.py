"""A small dataset in fMRIPrep's output layout, from the synthetic cohort (no fMRIPrep run).

:func:`write_fmriprep` writes a :func:`simulator.cohort.write_cohort` cohort under
``OUT/sourcedata/raw`` and, for every run, what fMRIPrep (>= 20.2) would leave in
``OUT/sub-XX/[ses-YY/]func/``::

    <entities>_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz (+ .json RepetitionTime)
    <entities>_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz
    <entities>_desc-confounds_timeseries.tsv (+ .json with the CompCor metadata)

The "preprocessed" run is the synthetic run plus **planted nuisance signals** whose time
courses are confound columns: ``white_matter``, ``csf`` and ``a_comp_cor_00/01`` carry
them (with voxel-wise random weights), so regressing the confounds out removes them
exactly (``truth.json``: ``nuisance``). The other columns are what fMRIPrep writes
(24 motion parameters from a small random walk, ``global_signal`` (+ expansions),
``framewise_displacement`` with one spike above 0.5 mm, ``std_dvars`` (about 1, below
the 1.5 of scrubbing), ``dvars``,
``cosine`` DCT high-pass regressors at 1/128 Hz, ``a_comp_cor_02..04``, ``t_comp_cor_00..02``);
first-row derivatives are ``n/a`` as in fMRIPrep. The world coordinates are the cohort's
(not real MNI space). Nothing here imports ``rtfb``.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from .cohort import write_cohort

__all__ = ["SPACE", "write_fmriprep"]

SPACE = "MNI152NLin2009cAsym"
_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def _expand(name: str, x: np.ndarray) -> dict:
    d = np.r_[np.nan, np.diff(x)]
    return {name: x, f"{name}_derivative1": d, f"{name}_power2": x ** 2,
            f"{name}_derivative1_power2": d ** 2}


def _cosines(n: int, tr: float, cutoff: float = 128.0) -> np.ndarray:
    k_max = int(np.floor(2 * n * tr / cutoff))
    t = np.arange(n)
    return np.column_stack([np.sqrt(2 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
                            for k in range(1, k_max + 1)]) if k_max else np.empty((n, 0))


def _unit(rng, n):
    x = np.cumsum(rng.standard_normal(n)) * 0.3 + rng.standard_normal(n)
    x -= x.mean()
    return x / x.std()


def write_fmriprep(out_dir, n_patients: int, n_controls: int, *, seed: int = 0,
                   nuisance_amplitude: float = 30.0, spike_volume: int | None = 7,
                   **cohort_kwargs) -> dict:
    """Write a synthetic cohort in fMRIPrep's derivatives layout (see the module docstring).

    Parameters
    ----------
    out_dir : path-like
        Derivatives root (``participants.tsv`` is copied there too).
    n_patients, n_controls : int
        Group sizes.
    seed : int
        Cohort seed.
    nuisance_amplitude : float
        Standard deviation of each planted nuisance signal (at unit voxel weight).
    spike_volume : int | None
        Volume with framewise displacement 0.9 mm (censored by scrubbing); None: none.
    **cohort_kwargs
        Passed to :func:`simulator.cohort.write_cohort` (shape, n_volumes, tr, sessions...).

    Returns
    -------
    dict
        The cohort truth plus ``nuisance`` (planted columns) and ``fmriprep`` (written runs).
    """
    import nibabel as nib

    root = Path(out_dir)
    raw = root / "sourcedata" / "raw"
    truth = write_cohort(raw, n_patients, n_controls, seed=seed, **cohort_kwargs)
    tr = float(truth["tr"])
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2020]))
    mask = np.asarray(nib.load(raw / "derivatives/truth/mask.nii.gz").dataobj) > 0
    runs = []
    for bold in sorted(raw.glob("sub-*/**/func/*_bold.nii.gz")):
        img = nib.load(bold)
        data = np.asarray(img.dataobj, dtype=np.float64)
        n = data.shape[3]
        wm, csf = _unit(rng, n), _unit(rng, n)
        weights = rng.uniform(0.5, 1.5, size=(2,) + data.shape[:3]) * mask
        data += nuisance_amplitude * (weights[0, ..., None] * wm + weights[1, ..., None] * csf)
        motion = np.cumsum(rng.normal(0, 0.02, size=(n, 6)), axis=0)
        motion[:, 3:] *= np.pi / 180
        fd = np.r_[0.0, np.abs(np.diff(motion[:, :3], axis=0)).sum(1)
                   + 50 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)]
        if spike_volume is not None and 0 < spike_volume < n:
            fd[spike_volume] = 0.9
        brain = data[mask]
        gs = brain.mean(0)
        dvars = np.r_[np.nan, np.sqrt((np.diff(brain, axis=1) ** 2).mean(0))]
        std_dvars = np.r_[np.nan, 1.0 + 0.1 * np.abs(rng.standard_normal(n - 1))]
        extra = np.linalg.qr(rng.standard_normal((n, 6)))[0].T * np.sqrt(n)
        columns = {}
        columns.update(_expand("global_signal", gs))
        columns.update(_expand("csf", csf))
        columns.update(_expand("white_matter", wm))
        columns["csf_wm"] = (csf + wm) / 2
        columns.update({"std_dvars": std_dvars, "dvars": dvars,
                        "framewise_displacement": np.r_[np.nan, fd[1:]],
                        "rmsd": np.r_[np.nan, fd[1:] / 2]})
        for k in range(3):
            columns[f"t_comp_cor_{k:02d}"] = extra[k]
        for k, series in enumerate((wm, csf, *extra[3:6])):
            columns[f"a_comp_cor_{k:02d}"] = series
        for k, c in enumerate(_cosines(n, tr).T):
            columns[f"cosine{k:02d}"] = c
        for name, x in zip(_MOTION, motion.T, strict=True):
            columns.update(_expand(name, x))
        rel = bold.relative_to(raw)
        func = root / rel.parent
        func.mkdir(parents=True, exist_ok=True)
        stem = bold.name[: -len("_bold.nii.gz")]
        out_bold = func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"
        out_img = nib.Nifti1Image(data.astype(np.float32), img.affine, img.header)
        nib.save(out_img, out_bold)
        (func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps(
            {"RepetitionTime": tr, "SkullStripped": False, "TaskName": "rest"}, indent=2))
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine),
                 func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
        conf_tsv = func / f"{stem}_desc-confounds_timeseries.tsv"
        with open(conf_tsv, "w", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            for t in range(n):
                writer.writerow(["n/a" if not np.isfinite(v[t]) else repr(float(v[t]))
                                 for v in columns.values()])
        meta = {f"a_comp_cor_{k:02d}": {"Method": "aCompCor", "Mask": "combined",
                                        "Retained": True, "VarianceExplained": 0.1}
                for k in range(5)}
        meta.update({f"t_comp_cor_{k:02d}": {"Method": "tCompCor", "Retained": True,
                                             "VarianceExplained": 0.1} for k in range(3)})
        conf_tsv.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        runs.append(str(out_bold.relative_to(root)))
    shutil.copy(raw / "participants.tsv", root / "participants.tsv")
    shutil.copy(raw / "participants.json", root / "participants.json")
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "synthetic cohort in fMRIPrep's output layout (rtfb simulator)",
        "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "rtfb simulator (stands in for fMRIPrep)"}]}, indent=2))
    truth["nuisance"] = {
        "columns": ["white_matter", "csf", "a_comp_cor_00", "a_comp_cor_01"],
        "amplitude": float(nuisance_amplitude),
        "definition": "data += amplitude * (w1(v) white_matter(t) + w2(v) csf(t)), "
                      "w ~ U(0.5, 1.5) in the brain; a_comp_cor_00/01 equal white_matter/csf",
        "spike_volume": spike_volume}
    truth["fmriprep"] = runs
    (root / "sourcedata" / "truth.json").write_text(json.dumps(truth, indent=2))
    return truth
