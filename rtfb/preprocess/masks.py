"""Brain masks and ROIs on the functional grid.

Conventions
-----------
- A *grid* is ``(target_affine, target_shape)``: the voxel-to-world (mm) affine and the 3D
  shape of the functional volumes (``Volume.affine``, ``Volume.shape``).
- ``mni_to_native`` is a 4x4 world-to-world affine mapping MNI millimetres to the
  session's scanner (native) millimetres: ``native_mm = mni_to_native @ [x, y, z, 1]``.
  :func:`rtfb.preprocess.registration.register_to_mni` estimates it once per session
  from a reference EPI; ROIs
  defined in MNI space are then brought to the functional grid with
  :func:`mni_roi_to_native`.
- Masks and ROIs are returned as boolean arrays of ``target_shape``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

from .._utils.checks import (
    _check_option,
    check_finite_array,
    check_positive_number,
)
from ._grid import (
    apply_affine,
    as_3d,
    check_grid,
    empty_roi_error,
    img_name,
    load_img,
)

__all__ = [
    "compute_brain_mask",
    "load_mask",
    "mni_roi_to_native",
    "resample_roi",
    "load_labels",
    "sphere_roi",
]


# ---------------------------------------------------------------------- brain masks


def compute_brain_mask(reference, affine=None, *, lower_cutoff: float = 0.2,
                       upper_cutoff: float = 0.85, opening: int = 2,
                       fill_holes: bool = True) -> np.ndarray:
    """Brain mask of a reference EPI (nilearn's ``compute_epi_mask`` + hole filling).

    The intensity threshold is found at the deepest minimum of the histogram between the
    ``lower_cutoff`` and ``upper_cutoff`` fractions of the sorted intensities; the mask is
    then opened (``opening`` iterations), reduced to its largest connected component and
    its holes (ventricles of a dark-CSF image) are filled.

    Parameters
    ----------
    reference : numpy.ndarray, shape (X, Y, Z) | nibabel image | path
        Reference volume (a 4D image is averaged over time by nilearn).
    affine : array-like, shape (4, 4) | None
        Affine of an array ``reference`` (identity when None; it does not change the mask).
    lower_cutoff, upper_cutoff : float
        Fractions of the intensity histogram searched for the threshold.
    opening : int
        Morphological opening iterations (0 to disable).
    fill_holes : bool
        Fill the holes of the mask.

    Returns
    -------
    numpy.ndarray of bool, shape (X, Y, Z)
    """
    from nilearn.masking import compute_epi_mask

    if isinstance(reference, (nib.spatialimages.SpatialImage, str, os.PathLike)):
        img = load_img(reference, "reference")
    else:
        data = check_finite_array(reference, "reference", ndim=3, dtype=np.float32)
        img = nib.Nifti1Image(data, np.eye(4) if affine is None else np.asarray(affine, float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # nilearn's cache warnings
        mask = np.asarray(compute_epi_mask(img, lower_cutoff=lower_cutoff,
                                           upper_cutoff=upper_cutoff, connected=True,
                                           opening=opening).dataobj).astype(bool)
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    if not mask.any():
        raise ValueError("The brain mask of the reference is empty: check the reference "
                         "volume (constant or all-zero image?).")
    return mask


def load_mask(path_or_img, target_affine, target_shape, name: str | None = None) -> np.ndarray:
    """Load a mask and bring it to the functional grid (nearest neighbour if needed).

    Parameters
    ----------
    path_or_img : str | os.PathLike | nibabel image
        Mask image; nonzero voxels are inside.
    target_affine : array-like, shape (4, 4)
        Affine of the functional grid.
    target_shape : tuple of int
        Shape of the functional grid.
    name : str | None
        Name used in error messages (default: the file name).

    Returns
    -------
    numpy.ndarray of bool, shape target_shape
    """
    name = img_name(path_or_img, name, "mask")
    affine, shape = check_grid(target_affine, target_shape)
    img = load_img(path_or_img, "mask")
    data = as_3d(img, f"mask {name!r}")
    if data.shape == shape and np.allclose(img.affine, affine, atol=1e-3):
        mask = data != 0
        if not mask.any():
            raise ValueError(f"mask {name!r} is empty: it selects no voxel.")
        return mask
    return resample_roi(img, affine, shape, interpolation="nearest", name=name)


def load_labels(path_or_img, target_affine, target_shape,
                name: str | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Load an atlas (integer label image) on the functional grid, with its label names.

    The image is resampled by nearest neighbour when its grid differs. Names come from a
    table beside the image, same stem with ``.tsv`` (columns ``index`` and ``name``, as in
    BIDS ``dseg.tsv``); labels without a name are called ``label-<n>``.

    Parameters
    ----------
    path_or_img : str | os.PathLike | nibabel image
        Label image; 0 (and negative values) are background.
    target_affine : array-like, shape (4, 4)
        Affine of the functional grid.
    target_shape : tuple of int
        Shape of the functional grid.
    name : str | None
        Name used in error messages (default: the file name).

    Returns
    -------
    labels : numpy.ndarray of int32, shape target_shape
        Label of every functional voxel.
    names : dict of int to str
        Every positive label of the *source* image (in increasing order) and its name;
        labels lost in the resampling are still listed.

    Raises
    ------
    ValueError
        Non-integer values, no positive label, or a malformed names table (naming the file).
    """
    name = img_name(path_or_img, name, "atlas")
    affine, shape = check_grid(target_affine, target_shape)
    img = load_img(path_or_img, "atlas")
    data = as_3d(img, f"atlas {name!r}")
    if not np.issubdtype(data.dtype, np.integer):
        finite = np.isfinite(data)
        if not finite.all() or not np.array_equal(data, np.round(data)):
            raise ValueError(f"atlas {name!r} must hold integer labels, got non-integer "
                             "values.")
    data = np.where(data > 0, data, 0).astype(np.int32)
    present = np.unique(data[data > 0])
    if present.size == 0:
        raise ValueError(f"atlas {name!r} has no positive label.")
    names = {int(v): f"label-{int(v)}" for v in present}
    if isinstance(path_or_img, (str, os.PathLike)):
        stem = Path(path_or_img).name.split(".")[0]
        table = Path(path_or_img).with_name(stem + ".tsv")
        if table.is_file():
            names.update(_read_label_table(table, names))
    if data.shape == shape and np.allclose(img.affine, affine, atol=1e-3):
        return data, names
    src = nib.Nifti1Image(data, img.affine)
    out = np.asarray(resample_from_to(src, (shape, affine), order=0, mode="constant",
                                      cval=0).dataobj)
    return np.rint(out).astype(np.int32), names


def _read_label_table(path: Path, labels: dict[int, str]) -> dict[int, str]:
    lines = [ln.rstrip("\r\n").split("\t") for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or "index" not in lines[0] or "name" not in lines[0]:
        raise ValueError(f"{path}: atlas label table needs 'index' and 'name' columns "
                         f"(tab-separated), got header {lines[0] if lines else 'nothing'}.")
    i_col, n_col = lines[0].index("index"), lines[0].index("name")
    out = {}
    for k, row in enumerate(lines[1:], start=2):
        try:
            out[int(row[i_col])] = row[n_col]
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {k}: expected an integer index and a name, got "
                             f"{row}.") from None
    return {lab: nm for lab, nm in out.items() if lab in labels}


# ------------------------------------------------------------------------------ ROIs


def resample_roi(roi_img, target_affine, target_shape, threshold: float = 0.5,
                 interpolation: str = "linear", label: int | None = None,
                 name: str | None = None) -> np.ndarray:
    """Resample an ROI image (any grid with an affine) to the functional grid.

    The ROI (nonzero voxels, or voxels equal to ``label``) is turned into a 0/1 image and
    resampled with :func:`nibabel.processing.resample_from_to`: linear interpolation then
    ``>= threshold`` (the fraction of the functional voxel covered, approximately), or
    nearest neighbour.

    Parameters
    ----------
    roi_img : str | os.PathLike | nibabel image
        ROI in any space and resolution (its affine maps it to world mm).
    target_affine : array-like, shape (4, 4)
        Affine of the functional grid (in the same world space as the ROI).
    target_shape : tuple of int
        Shape of the functional grid.
    threshold : float
        Threshold of the interpolated 0/1 image (``interpolation="linear"``), in (0, 1].
    interpolation : {"linear", "nearest"}
        Resampling method.
    label : int | None
        Select the voxels equal to this value (an atlas region) instead of all nonzero.
    name : str | None
        Name used in error messages (default: the file name, or "roi").

    Returns
    -------
    numpy.ndarray of bool, shape target_shape

    Raises
    ------
    ValueError
        Naming the ROI, if it is empty in its image, lies outside the field of view of the
        functional grid, or selects no voxel after resampling. A warning is emitted when
        part of the ROI lies outside the field of view.
    """
    name = img_name(roi_img, name, "roi")
    affine, shape = check_grid(target_affine, target_shape)
    _check_option("interpolation", interpolation, ("linear", "nearest"))
    threshold = check_positive_number(threshold, "threshold")
    if threshold > 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    img = load_img(roi_img, "roi_img")
    data = as_3d(img, f"ROI {name!r}")
    roi = (data == label) if label is not None else (data != 0)
    if not roi.any():
        what = f"no voxel equal to label {label}" if label is not None else "no nonzero voxel"
        raise ValueError(f"ROI {name!r} is empty in its own image ({what}).")
    src = nib.Nifti1Image(roi.astype(np.float32), img.affine)
    order = 1 if interpolation == "linear" else 0
    out = np.asarray(resample_from_to(src, (shape, affine), order=order, mode="constant",
                                      cval=0.0).dataobj)
    mask = out >= threshold if order == 1 else out > 0.5
    world = apply_affine(img.affine, np.argwhere(roi).astype(float))
    if not mask.any():
        detail = (f"threshold={threshold} with linear interpolation: the ROI is smaller than "
                  f"a functional voxel; lower the threshold or use interpolation='nearest'"
                  if order == 1 else "it is smaller than a functional voxel")
        raise empty_roi_error(name, world, affine, shape, detail)
    vox = apply_affine(np.linalg.inv(affine), world)
    outside = ~((vox >= -0.5) & (vox <= np.array(shape) - 0.5)).all(axis=-1)
    if outside.any():
        warnings.warn(f"{100 * outside.mean():.0f}% of ROI {name!r} lies outside the field "
                      f"of view of the functional grid.", UserWarning, stacklevel=2)
    return mask


def sphere_roi(center_mm, radius_mm: float, target_affine, target_shape, to_native=None,
               name: str | None = None) -> np.ndarray:
    """Voxels of the functional grid whose centre lies within a sphere.

    Parameters
    ----------
    center_mm : array-like, shape (3,)
        Sphere centre in mm: MNI coordinates when ``to_native`` is given, else native
        (scanner) world coordinates.
    radius_mm : float
        Radius in mm (measured in the space of ``center_mm``: with an affine
        ``to_native`` including scaling, the sphere becomes an ellipsoid on the grid).
    target_affine : array-like, shape (4, 4)
        Affine of the functional grid (voxel -> native mm).
    target_shape : tuple of int
        Shape of the functional grid.
    to_native : array-like, shape (4, 4) | None
        MNI mm -> native mm transform (from :func:`register_to_mni`).
    name : str | None
        Name used in error messages.

    Returns
    -------
    numpy.ndarray of bool, shape target_shape
    """
    center = check_finite_array(center_mm, "center_mm")
    if center.shape != (3,):
        raise ValueError(f"center_mm must have 3 coordinates, got shape {center.shape}.")
    radius = check_positive_number(radius_mm, "radius_mm")
    affine, shape = check_grid(target_affine, target_shape)
    name = name or f"sphere r={radius:g} mm at {center.tolist()}"
    vox_to_space = affine
    if to_native is not None:
        to_native = check_finite_array(to_native, "to_native", ndim=2)
        if to_native.shape != (4, 4):
            raise ValueError(f"to_native must have shape (4, 4), got {to_native.shape}.")
        vox_to_space = np.linalg.inv(to_native) @ affine
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    dist2 = ((apply_affine(vox_to_space, ijk) - center) ** 2).sum(axis=1)
    mask = (dist2 <= radius**2).reshape(shape)
    if not mask.any():
        sphere_pts = center + radius * np.vstack([np.zeros(3), np.eye(3), -np.eye(3)])
        native_pts = sphere_pts if to_native is None else apply_affine(to_native, sphere_pts)
        raise empty_roi_error(name, native_pts, affine, shape,
                               f"radius {radius:g} mm is smaller than the functional voxels",
                               " (MNI)" if to_native is not None else "")
    return mask


def mni_roi_to_native(roi_img_or_sphere, mni_to_native, target_affine, target_shape,
                      threshold: float = 0.5, interpolation: str = "linear",
                      label: int | None = None, name: str | None = None) -> np.ndarray:
    """Bring an MNI-space ROI to the functional grid of the session.

    Parameters
    ----------
    roi_img_or_sphere : str | os.PathLike | nibabel image | tuple
        ROI image in MNI space, or a sphere ``(center_mm, radius_mm)`` in MNI mm.
    mni_to_native : array-like, shape (4, 4)
        MNI mm -> native mm transform (from :func:`register_to_mni`).
    target_affine : array-like, shape (4, 4)
        Affine of the functional grid (voxel -> native mm).
    target_shape : tuple of int
        Shape of the functional grid.
    threshold, interpolation, label
        As in :func:`resample_roi` (images only).
    name : str | None
        Name used in error messages.

    Returns
    -------
    numpy.ndarray of bool, shape target_shape
    """
    mni_to_native = check_finite_array(mni_to_native, "mni_to_native", ndim=2)
    if mni_to_native.shape != (4, 4):
        raise ValueError(f"mni_to_native must have shape (4, 4), got {mni_to_native.shape}.")
    affine, shape = check_grid(target_affine, target_shape)
    if isinstance(roi_img_or_sphere, tuple) and len(roi_img_or_sphere) == 2:
        center, radius = roi_img_or_sphere
        return sphere_roi(center, radius, affine, shape, to_native=mni_to_native, name=name)
    # functional voxel -> native mm -> MNI mm: the grid expressed in MNI space
    grid_in_mni = np.linalg.inv(mni_to_native) @ affine
    name = img_name(roi_img_or_sphere, name, "roi")
    try:
        return resample_roi(roi_img_or_sphere, grid_in_mni, shape, threshold=threshold,
                            interpolation=interpolation, label=label, name=name)
    except ValueError as err:
        if "field of view" in str(err):
            raise ValueError(f"ROI {name!r} (MNI space) lies outside the field of view of the "
                             f"functional grid once mapped to native space.") from err
        raise
