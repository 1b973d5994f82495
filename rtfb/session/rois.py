"""Brings a protocol's ROIs onto the session's functional grid at session start."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from ..preprocess.masks import mni_roi_to_native, resample_roi
from ..preprocess.registration import register_to_mni

logger = logging.getLogger("rtfb.session")


def _mni(mni_to_native, reference_img):
    if mni_to_native is None:
        logger.info("registering the reference volume to MNI152 for MNI-space ROIs")
        mni_to_native = register_to_mni(reference_img)
    return mni_to_native


def resolve_rois(roi_specs: dict, reference_img: nib.Nifti1Image,
                 simulator_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """Boolean ROI masks on the reference grid.

    Parameters
    ----------
    roi_specs : dict of str -> ROI spec
        Objects with ``file`` (a NIfTI path in any space), ``mni_sphere`` (``center``,
        ``radius`` in MNI mm) or ``simulator_roi`` (name of a synthetic subject's ROI).
    reference_img : nibabel.Nifti1Image
        The session's reference volume.
    simulator_dir : path | None
        Folder of the synthetic subject (``roi-<name>.nii.gz``) for ``simulator_roi``.

    Returns
    -------
    dict of str -> ndarray of bool
    """
    affine, shape = reference_img.affine, reference_img.shape[:3]
    rois = {}
    mni_to_native = None  # registered once, on first use
    for name, spec in roi_specs.items():
        sim = getattr(spec, "simulator_roi", None)
        if sim and simulator_dir is not None:
            path = Path(simulator_dir) / f"roi-{sim}.nii.gz"
            if not path.exists():
                raise ValueError(f"ROI {name!r}: the simulator has no ROI file {path}.")
            rois[name] = resample_roi(nib.load(path), affine, shape, name=name)
        elif getattr(spec, "file", None):
            if getattr(spec, "space", "native") == "mni":
                mni_to_native = _mni(mni_to_native, reference_img)
                rois[name] = mni_roi_to_native(spec.file, mni_to_native, affine, shape,
                                               name=name)
            else:
                rois[name] = resample_roi(nib.load(spec.file), affine, shape, name=name)
        elif getattr(spec, "mni_sphere", None) is not None:
            mni_to_native = _mni(mni_to_native, reference_img)
            sphere = spec.mni_sphere
            rois[name] = mni_roi_to_native((tuple(sphere.center), float(sphere.radius)),
                                           mni_to_native, affine, shape, name=name)
        elif sim:
            raise ValueError(f"ROI {name!r} is only defined as simulator_roi = {sim!r}, which "
                             "exists only in --simulate sessions.")
        else:
            raise ValueError(f"ROI {name!r} has no definition (file, mni_sphere or "
                             "simulator_roi).")
    return rois


def save_rois(folder: Path, brain_mask: np.ndarray, rois: dict[str, np.ndarray],
              affine) -> None:
    """Record the brain mask and ROIs as used (``rois/``), for audit, resume and replay."""
    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    items = {"brain_mask": brain_mask, **{f"roi-{k}": v for k, v in rois.items()}}
    for name, mask in items.items():
        nib.save(nib.Nifti1Image(np.asarray(mask).astype(np.uint8), affine),
                 folder / f"{name}.nii.gz")


def load_recorded_rois(folder: Path, names, missing_ok: bool = False) -> dict | None:
    """The brain mask and ROIs a record used (``brain_mask`` and each of ``names``).

    ``missing_ok``: a record killed before its ROIs were saved returns None (resolve them
    again); otherwise a missing ``rois/`` raises :class:`FileNotFoundError` naming it.
    """
    folder = Path(folder)
    if not (folder / "brain_mask.nii.gz").exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{folder / 'brain_mask.nii.gz'} not found: the record has "
                                "no resolved ROIs to reuse.")
    out = {"brain_mask": np.asarray(nib.load(folder / "brain_mask.nii.gz").dataobj) > 0}
    for name in names:
        out[name] = np.asarray(nib.load(folder / f"roi-{name}.nii.gz").dataobj) > 0
    return out

