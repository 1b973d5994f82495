"""A preprocessed run brought to a template grid: registration cache, files, summary.

:func:`normalise_run` registers a run to the template (:mod:`rtfb.offline.normalise`), from
its mean EPI or through the subject's T1 (:func:`find_t1w`), caches the transform beside the
run's derivatives and warps the cleaned series and brain mask to the template grid, where
:func:`rtfb.offline.subject.process_subject` then computes every map. Files per run::

    <prefix>_from-boldref_to-<space>_mode-image_xfm.npz   (+ .json: template, steps, key)
    <prefix>_space-<space>_desc-mean_boldref.nii.gz       (warped mean EPI, for checking)

A transform is reused when its key (the run file's path, size and modification time, the
T1's, the template, the method) is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .normalise import (
    Registration,
    Template,
    load_registration,
    mean_epi,
    register,
    through_rigid,
    warped_dice,
)

__all__ = ["DICE_WARNING", "find_t1w", "normalise_run", "registration_paths",
           "registration_summary"]

_T1_GLOBS = ("anat/*_T1w.nii.gz", "anat/*_T1w.nii")


def find_t1w(bold_path) -> Path | None:
    """The subject's T1w image of a BIDS run: the run's session's ``anat`` first, then the
    subject's (``sub-XX/[ses-YY/]anat/*_T1w.nii[.gz]``, the first by name); None if none.
    """
    bold_path = Path(bold_path)
    func = bold_path.parent  # sub-XX/[ses-YY/]func
    folders = [func.parent]
    if func.parent.name.startswith("ses-"):
        folders.append(func.parent.parent)
    for folder in folders:
        for pattern in _T1_GLOBS:
            hits = sorted(folder.glob(pattern))
            if hits:
                return hits[0]
    return None


def _file_key(path: Path) -> dict:
    stat = path.stat()
    return {"Path": str(path.resolve()), "Bytes": int(stat.st_size),
            "MtimeNs": int(stat.st_mtime_ns)}


def _cache_key(bold_path: Path, template: Template, nonlinear: bool,
               t1w: Path | None) -> dict:
    tpl = template.as_dict()
    return {"Source": _file_key(bold_path), "T1w": None if t1w is None else _file_key(t1w),
            "Template": {k: tpl[k] for k in ("Space", "Source", "ResolutionMM", "Shape")},
            "Nonlinear": bool(nonlinear)}


def registration_paths(func_dir, prefix: str, space: str) -> tuple[Path, Path]:
    """Cached transform (``.npz``, sidecar ``.json`` beside it) and warped mean EPI of a run."""
    func_dir = Path(func_dir)
    return (func_dir / f"{prefix}_from-boldref_to-{space}_mode-image_xfm.npz",
            func_dir / f"{prefix}_space-{space}_desc-mean_boldref.nii.gz")


def _anat_at(t1w: Path, voxel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The T1 smoothed and resampled to ``voxel_mm`` (at least its own voxel size)."""
    import nibabel as nib
    from nilearn.image import resample_img, smooth_img

    img = nib.load(t1w)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    if voxel_mm <= zooms.min() * 1.01:
        return np.asarray(img.dataobj, dtype=np.float64), np.asarray(img.affine, float)
    smoothed = smooth_img(img, fwhm=float(voxel_mm))
    out = resample_img(smoothed, target_affine=np.diag([voxel_mm] * 3),
                       interpolation="continuous", force_resample=True, copy_header=True)
    return np.asarray(out.dataobj, dtype=np.float64), np.asarray(out.affine, float)


def _register_run(mean, mean_affine, template: Template, nonlinear: bool,
                  t1w: Path | None) -> Registration:
    if t1w is None:
        return register(mean, mean_affine, template, nonlinear=nonlinear)
    # the T1 at the template's voxel size: registration cost follows the template's
    voxel = float(np.sqrt((template.affine[:3, :3] ** 2).sum(axis=0)).min())
    anat, anat_affine = _anat_at(t1w, voxel)
    if anat.ndim != 3:
        raise ValueError(f"{t1w}: a T1w image must be 3D, got shape {anat.shape}.")
    to_template = register(anat, anat_affine, template, nonlinear=nonlinear)
    anat_mask = anat > 0.2 * np.percentile(anat[anat > 0], 98)
    anat_target = Template("T1w", anat, anat_affine, anat_mask, f"T1w image {t1w}", None,
                           str(t1w))
    rigid = register(mean, mean_affine, anat_target, rigid_only=True)
    return through_rigid(to_template, rigid)


def normalise_run(pre: dict, bold_path, template: Template, func_dir, prefix: str, *,
                  nonlinear: bool = True, t1w=None,
                  overwrite: bool = False) -> tuple[dict, dict]:
    """Bring a preprocessed run to the template grid, registering its mean EPI (cached).

    Parameters
    ----------
    pre : dict
        :func:`rtfb.offline.subject.preprocess_run` output on the run's grid (``data``
        (n_voxels, n_volumes) of the voxels of ``mask``, ``mask``, ``affine``, ...).
    bold_path : path-like
        The run (its temporal mean is registered).
    template : Template
        Target.
    func_dir : path-like
        Folder of the run's derivatives: the transform and the warped mean EPI go there.
    prefix : str
        The run's file prefix (``sub-01_task-rest``).
    nonlinear : bool
        Affine + SyN (True) or affine only.
    t1w : path-like | None
        The subject's T1: registered to the template (affine + SyN) and the mean EPI
        rigidly to it (:func:`rtfb.offline.normalise.through_rigid`); None: the mean EPI is
        registered to the template directly.
    overwrite : bool
        Register again even when a transform of the same run, template and method exists.

    Returns
    -------
    pre : dict
        The same keys with ``data``, ``mask``, ``affine`` on the template grid; the mask is
        the run's brain mask warped (linear, > 0.5).
    space : dict
        For the sidecars: the template, the transform file, steps, seconds, whether the
        transform was reused, and the Dice of the warped brain mask with the template's.
    """
    import nibabel as nib

    bold_path = Path(bold_path)
    t1w = None if t1w is None else Path(t1w)
    xfm_path, ref_path = registration_paths(func_dir, prefix, template.space)
    key = _cache_key(bold_path, template, nonlinear, t1w)
    reg = None
    if not overwrite and xfm_path.is_file():
        try:
            cached = load_registration(xfm_path)
        except (OSError, ValueError, KeyError):
            cached = None
        if cached is not None and cached.info.get("Key") == key:
            reg = cached
    reused = reg is not None
    mean, mean_affine = mean_epi(bold_path)
    if reg is None:
        reg = _register_run(mean, mean_affine, template, nonlinear, t1w)
        reg.info["Key"] = key
        reg.info["Registered"] = ("temporal mean of the run (mean EPI)" if t1w is None else
                                  f"T1w {t1w.name} to the template, mean EPI rigidly to it")
        reg.info["MaskDice"] = round(warped_dice(reg, pre["mask"], template.mask), 4)
        reg.save(xfm_path)
        img = nib.Nifti1Image(reg.warp(mean).astype(np.float32), template.affine)
        code = 4 if template.source == "mni" else 2  # MNI / aligned to another file
        img.set_sform(template.affine, code=code)
        img.set_qform(template.affine, code=code)
        tmp = ref_path.with_name(f".tmp-{ref_path.name}")
        nib.save(img, tmp)
        tmp.replace(ref_path)
    mask = reg.warp(np.asarray(pre["mask"], float)) > 0.5
    if not mask.any():
        raise ValueError(f"{bold_path}: the brain mask warped to the template grid is empty "
                         f"(registration failed? see {ref_path}).")
    data = reg.warp_series(pre["data"], pre["mask"], mask)
    out = dict(pre, data=data, mask=mask, affine=np.asarray(template.affine, dtype=float))
    space = {
        "Name": template.space, "Template": template.description,
        "TemplateResolutionMM": template.resolution,
        "Transform": xfm_path.name, "MeanEPI": ref_path.name,
        "Registered": reg.info.get("Registered"),
        "Method": [step["Name"] for step in reg.info.get("Steps", [])],
        "Steps": reg.info.get("Steps", []),
        "RegistrationSeconds": reg.info.get("Seconds"),
        "Reused": reused,
        "MaskDice": reg.info.get("MaskDice"),
        "Resampling": "trilinear, cleaned series warped to the template grid before the "
                      "metrics; brain mask warped (> 0.5)",
    }
    return out, space


#: Warped brain masks overlapping the template's less than this are reported.
DICE_WARNING = 0.75


def registration_summary(results: dict) -> tuple[str | None, list[str]]:
    """The runs' normalisation in one line, and warnings on doubtful registrations.

    Parameters
    ----------
    results : dict
        :func:`rtfb.offline.run.analyze`'s ``{prefix: {key: path}}``; runs with an ``xfm``
        transform count.

    Returns
    -------
    note : str | None
        Template, method, median seconds, median and lowest mask Dice (None when no run was
        normalised).
    warnings : list of str
        One per run whose warped brain mask overlaps the template's mask with a Dice below
        :data:`DICE_WARNING`, naming the warped mean EPI to look at.
    """
    infos = {}
    for prefix, paths in results.items():
        xfm = paths.get("xfm")
        if xfm is None:
            continue
        try:
            infos[prefix] = (json.loads(Path(xfm).with_suffix(".json").read_text()),
                             paths.get("boldref"))
        except (OSError, ValueError):
            continue
    if not infos:
        return None, []
    first = next(iter(infos.values()))[0]
    steps = " + ".join(step["Name"] for step in first.get("Steps", []))
    seconds = [i["Seconds"] for i, _ in infos.values() if i.get("Seconds") is not None]
    dice = {k: i["MaskDice"] for k, (i, _) in infos.items() if i.get("MaskDice") is not None}
    text = (f"normalised {len(infos)} runs to {first['Template']['Description']} (dipy "
            f"{steps}; transforms cached as DERIV/rtfb/sub-*/**/*_xfm.npz + .json)")
    if seconds:
        text += f"; registration {np.median(seconds):.1f} s per run (median)"
    warnings = []
    if dice:
        worst = min(dice, key=dice.get)
        text += (f"; brain-mask Dice with the template's mask: median "
                 f"{np.median(list(dice.values())):.2f}, lowest {dice[worst]:.2f} ({worst})")
        for prefix, value in sorted(dice.items()):
            if value < DICE_WARNING:
                warnings.append(f"{prefix}: registration to the template doubtful (brain-mask "
                                f"Dice {value:.2f} < {DICE_WARNING}); check "
                                f"{infos[prefix][1]}")
    return text, warnings
