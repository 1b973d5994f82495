"""Brain masks, ROIs on the functional grid, and a one-time affine registration to MNI.

Conventions
-----------
- A *grid* is ``(target_affine, target_shape)``: the voxel-to-world (mm) affine and the 3D
  shape of the functional volumes (``Volume.affine``, ``Volume.shape``).
- ``mni_to_native`` is a 4x4 world-to-world affine mapping MNI millimetres to the
  session's scanner (native) millimetres: ``native_mm = mni_to_native @ [x, y, z, 1]``.
  :func:`register_to_mni` estimates it once per session from a reference EPI; ROIs
  defined in MNI space are then brought to the functional grid with
  :func:`mni_roi_to_native`.
- Masks and ROIs are returned as boolean arrays of ``target_shape``.
"""

from __future__ import annotations

import functools
import os
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage, optimize

from .._utils.checks import (
    _check_option,
    check_finite_array,
    check_int,
    check_positive_number,
)
from .._utils.jit import jit
from .smooth import fwhm_to_sigma

__all__ = [
    "compute_brain_mask",
    "load_mask",
    "mni_roi_to_native",
    "register_to_mni",
    "resample_roi",
    "load_labels",
    "sphere_roi",
]


# --------------------------------------------------------------------------- helpers


def _load_img(img, name: str) -> nib.spatialimages.SpatialImage:
    if hasattr(img, "data") and hasattr(img, "affine") and not isinstance(
            img, nib.spatialimages.SpatialImage):  # an rtfb.ingest.Volume
        return nib.Nifti1Image(np.asarray(img.data, dtype=np.float32),
                               np.asarray(img.affine, dtype=float))
    if isinstance(img, (str, os.PathLike)):
        path = Path(img)
        if not path.exists():
            raise FileNotFoundError(f"{name} file not found: {path}")
        return nib.load(path)
    if isinstance(img, nib.spatialimages.SpatialImage):
        return img
    raise TypeError(f"{name} must be a NIfTI image, a path or a Volume, got "
                    f"{type(img).__name__}.")


def _img_name(img, name: str | None, default: str) -> str:
    if name is not None:
        return name
    if isinstance(img, (str, os.PathLike)):
        return Path(img).name
    return default


def _as_3d(img, name: str) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name} must be a 3D image, got shape {data.shape}.")
    return data


def _check_grid(target_affine, target_shape) -> tuple[np.ndarray, tuple[int, int, int]]:
    affine = check_finite_array(target_affine, "target_affine", ndim=2)
    if affine.shape != (4, 4):
        raise ValueError(f"target_affine must have shape (4, 4), got {affine.shape}.")
    shape = tuple(int(s) for s in target_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"target_shape must be 3 positive integers, got {target_shape!r}.")
    return affine, shape


def _apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points of shape (..., 3)."""
    return points @ affine[:3, :3].T + affine[:3, 3]


def _grid_extent(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij"))
    world = _apply(affine, corners.reshape(3, -1).T)
    return world.min(axis=0), world.max(axis=0)


def _empty_roi_error(name: str, world_points: np.ndarray, affine: np.ndarray, shape,
                     detail: str, space: str = "") -> ValueError:
    """Explain why an ROI selects no voxel of the grid: outside the FOV, or too small."""
    vox = _apply(np.linalg.inv(affine), world_points)
    inside = ((vox >= -0.5) & (vox <= np.array(shape) - 0.5)).all(axis=-1)
    lo, hi = _grid_extent(affine, shape)
    centre = np.round(world_points.mean(axis=0), 1).tolist()
    fov = f"x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}, z {lo[2]:.0f}..{hi[2]:.0f}"
    if not inside.any():
        return ValueError(
            f"ROI {name!r} lies outside the field of view of the functional grid: its centre "
            f"is at {centre} mm{space} while the grid spans {fov} mm (native world)."
        )
    return ValueError(f"ROI {name!r} is empty after resampling to the functional grid "
                      f"({detail}).")


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
        img = _load_img(reference, "reference")
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
    name = _img_name(path_or_img, name, "mask")
    affine, shape = _check_grid(target_affine, target_shape)
    img = _load_img(path_or_img, "mask")
    data = _as_3d(img, f"mask {name!r}")
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
    name = _img_name(path_or_img, name, "atlas")
    affine, shape = _check_grid(target_affine, target_shape)
    img = _load_img(path_or_img, "atlas")
    data = _as_3d(img, f"atlas {name!r}")
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
    name = _img_name(roi_img, name, "roi")
    affine, shape = _check_grid(target_affine, target_shape)
    _check_option("interpolation", interpolation, ("linear", "nearest"))
    threshold = check_positive_number(threshold, "threshold")
    if threshold > 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}.")
    img = _load_img(roi_img, "roi_img")
    data = _as_3d(img, f"ROI {name!r}")
    roi = (data == label) if label is not None else (data != 0)
    if not roi.any():
        what = f"no voxel equal to label {label}" if label is not None else "no nonzero voxel"
        raise ValueError(f"ROI {name!r} is empty in its own image ({what}).")
    src = nib.Nifti1Image(roi.astype(np.float32), img.affine)
    order = 1 if interpolation == "linear" else 0
    out = np.asarray(resample_from_to(src, (shape, affine), order=order, mode="constant",
                                      cval=0.0).dataobj)
    mask = out >= threshold if order == 1 else out > 0.5
    world = _apply(img.affine, np.argwhere(roi).astype(float))
    if not mask.any():
        detail = (f"threshold={threshold} with linear interpolation: the ROI is smaller than "
                  f"a functional voxel; lower the threshold or use interpolation='nearest'"
                  if order == 1 else "it is smaller than a functional voxel")
        raise _empty_roi_error(name, world, affine, shape, detail)
    vox = _apply(np.linalg.inv(affine), world)
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
    affine, shape = _check_grid(target_affine, target_shape)
    name = name or f"sphere r={radius:g} mm at {center.tolist()}"
    vox_to_space = affine
    if to_native is not None:
        to_native = check_finite_array(to_native, "to_native", ndim=2)
        if to_native.shape != (4, 4):
            raise ValueError(f"to_native must have shape (4, 4), got {to_native.shape}.")
        vox_to_space = np.linalg.inv(to_native) @ affine
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    dist2 = ((_apply(vox_to_space, ijk) - center) ** 2).sum(axis=1)
    mask = (dist2 <= radius**2).reshape(shape)
    if not mask.any():
        sphere_pts = center + radius * np.vstack([np.zeros(3), np.eye(3), -np.eye(3)])
        native_pts = sphere_pts if to_native is None else _apply(to_native, sphere_pts)
        raise _empty_roi_error(name, native_pts, affine, shape,
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
    affine, shape = _check_grid(target_affine, target_shape)
    if isinstance(roi_img_or_sphere, tuple) and len(roi_img_or_sphere) == 2:
        center, radius = roi_img_or_sphere
        return sphere_roi(center, radius, affine, shape, to_native=mni_to_native, name=name)
    # functional voxel -> native mm -> MNI mm: the grid expressed in MNI space
    grid_in_mni = np.linalg.inv(mni_to_native) @ affine
    name = _img_name(roi_img_or_sphere, name, "roi")
    try:
        return resample_roi(roi_img_or_sphere, grid_in_mni, shape, threshold=threshold,
                            interpolation=interpolation, label=label, name=name)
    except ValueError as err:
        if "field of view" in str(err):
            raise ValueError(f"ROI {name!r} (MNI space) lies outside the field of view of the "
                             f"functional grid once mapped to native space.") from err
        raise


# ------------------------------------------------------------------- MNI registration


@functools.lru_cache(maxsize=1)
def _default_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    img = load_mni152_template(resolution=2)
    mask = np.asarray(load_mni152_brain_mask(resolution=2).dataobj) > 0
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    data[~mask] = 0  # brain-masked template
    for arr in (data, mask):
        arr.flags.writeable = False
    return data, mask, img.affine.copy()


def _euler(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


# parameter vector: translation (3, mm), rotation (3, rad), log scales (3), shears (3)
_PARAM_SCALE = np.array([10.0] * 3 + [0.17] * 3 + [0.1] * 3 + [0.1] * 3)
_DOF_PARAMS = {6: list(range(6)), 7: list(range(6)) + [6], 9: list(range(9)),
               12: list(range(12))}


def _linear(params: np.ndarray, isotropic: bool) -> np.ndarray:
    scales = np.exp(params[6:9] if not isotropic else np.repeat(params[6], 3))
    shear = np.array([[1, params[9], params[10]], [0, 1, params[11]], [0, 0, 1]])
    return _euler(*params[3:6]) @ shear @ np.diag(scales)


@jit
def _binned_sums(ref, m, points, bins, n_bins):
    """Trilinear samples of ``ref`` at voxel coords ``m @ [point, 1]``: per-bin sums of r, r^2.

    Samples outside the volume are 0 (like ``map_coordinates(mode="constant")``).
    """
    nx, ny, nz = ref.shape
    s1 = np.zeros(n_bins)
    s2 = np.zeros(n_bins)
    for i in range(points.shape[0]):
        px, py, pz = points[i, 0], points[i, 1], points[i, 2]
        x = m[0, 0] * px + m[0, 1] * py + m[0, 2] * pz + m[0, 3]
        y = m[1, 0] * px + m[1, 1] * py + m[1, 2] * pz + m[1, 3]
        z = m[2, 0] * px + m[2, 1] * py + m[2, 2] * pz + m[2, 3]
        r = 0.0
        if x > -1.0 and y > -1.0 and z > -1.0 and x < nx and y < ny and z < nz:
            x0, y0, z0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
            fx, fy, fz = x - x0, y - y0, z - z0
            for dx in range(2):
                xi = x0 + dx
                if xi < 0 or xi >= nx:
                    continue
                wx = fx if dx else 1.0 - fx
                for dy in range(2):
                    yi = y0 + dy
                    if yi < 0 or yi >= ny:
                        continue
                    wy = fy if dy else 1.0 - fy
                    for dz in range(2):
                        zi = z0 + dz
                        if zi < 0 or zi >= nz:
                            continue
                        wz = fz if dz else 1.0 - fz
                        r += wx * wy * wz * ref[xi, yi, zi]
        b = bins[i]
        s1[b] += r
        s2[b] += r * r
    return s1, s2


class _CorrelationRatio:
    """Cost of a transform: minus the correlation ratio of the reference given template bins.

    Template points (fixed) carry bin labels of the template intensity; the reference is
    interpolated (trilinear) at their images. ``1 - sum_k n_k Var(ref | bin k) /
    (N Var(ref))`` is invariant to any intensity mapping between the two images, so an
    EPI can be matched to the T1 template.
    """

    def __init__(self, ref: np.ndarray, ref_affine: np.ndarray, points_mni: np.ndarray,
                 bins: np.ndarray, n_bins: int):
        self.ref = np.ascontiguousarray(ref, dtype=np.float64)
        self.world_to_vox = np.linalg.inv(ref_affine)
        self.points = np.ascontiguousarray(points_mni, dtype=np.float64)
        self.bins = bins.astype(np.int64)
        self.n_bins = n_bins
        self.count = np.bincount(self.bins, minlength=n_bins).astype(float)
        self.keep = self.count > 0
        self.n_eval = 0

    def __call__(self, transform: np.ndarray) -> float:
        self.n_eval += 1
        m = np.ascontiguousarray((self.world_to_vox @ transform)[:3])
        s1, s2 = _binned_sums(self.ref, m, self.points, self.bins, self.n_bins)
        n = self.points.shape[0]
        total = s2.sum() - s1.sum() ** 2 / n
        if total <= 1e-12 * max(s2.sum(), 1e-300):  # reference constant over the points
            return 0.0
        within = (s2[self.keep] - s1[self.keep] ** 2 / self.count[self.keep]).sum()
        return -(1.0 - within / total)


def register_to_mni(reference_img, template=None, *, dof: int = 12,
                    reference_mask=None, n_bins: int = 32,
                    fwhm_mm: tuple[float, ...] = (8.0, 5.0),
                    return_info: bool = False):
    """One-time affine registration of a reference EPI to the MNI152 2 mm template.

    Maximises the correlation ratio between the (smoothed) reference and the brain-masked
    template (intensity-mapping invariant, so EPI contrast is fine), with Powell's
    method in two stages: a coarse rigid + isotropic-scale fit at ``fwhm_mm[0]``
    smoothing on a 6 mm grid of template points, then the full ``dof`` fit at
    ``fwhm_mm[1]`` on a 4 mm grid. It is initialised by aligning the centres of mass
    (of the template brain and of the reference's brain mask) with identity rotation and
    scale, so the head must be roughly in the usual orientation (world axes RAS as
    written by the scanner/dcm2niix; rotations well below ~30 degrees). Takes a few
    seconds.

    Parameters
    ----------
    reference_img : str | os.PathLike | nibabel image | rtfb.ingest.Volume
        Reference volume of the session (3D; a 4D image is averaged over time).
    template : str | os.PathLike | nibabel image | None
        Template in MNI space; ``None`` uses nilearn's MNI152 (2009) 2 mm template,
        masked with its brain mask (shipped with nilearn: no download). A given template
        is used as is (zero outside the brain is recommended).
    dof : {6, 7, 9, 12}
        Rigid, + isotropic scale, + 3 scales, + 3 shears.
    reference_mask : array-like of bool | None
        Brain mask of the reference (e.g. from :func:`compute_brain_mask`); voxels outside
        are zeroed before matching (useful when the reference has bright non-brain
        tissue). Also used for the centre of mass; by default the centre of mass of
        :func:`compute_brain_mask` is used.
    n_bins : int
        Number of template intensity bins of the correlation ratio.
    fwhm_mm : tuple of float
        Smoothing (mm) of both images at each of the two stages.
    return_info : bool
        Also return a dict with the final correlation ratio, number of cost evaluations
        and elapsed time.

    Returns
    -------
    mni_to_native : numpy.ndarray, shape (4, 4)
        Affine mapping MNI mm to native (scanner) mm.
    info : dict
        Only if ``return_info``.
    """
    t0 = time.perf_counter()
    _check_option("dof", dof, tuple(_DOF_PARAMS))
    n_bins = check_int(n_bins, "n_bins", minimum=4)
    fwhm_mm = tuple(check_positive_number(f, "fwhm_mm") for f in np.atleast_1d(fwhm_mm))
    ref_img = _load_img(reference_img, "reference_img")
    ref = np.asarray(ref_img.get_fdata(), dtype=np.float32)
    if ref.ndim == 4:
        ref = ref.mean(axis=3)
    ref = check_finite_array(ref, "reference_img", ndim=3, dtype=np.float32)
    ref_affine = ref_img.affine.astype(float)
    if template is None:
        tpl, tpl_mask, tpl_affine = _default_template()
    else:
        timg = _load_img(template, "template")
        tpl = np.asarray(_as_3d(timg, "template"), dtype=np.float32)
        tpl_mask = tpl > 0
        tpl_affine = timg.affine.astype(float)
    if reference_mask is None:
        ref_mask = compute_brain_mask(ref, ref_affine)
    else:
        ref_mask = np.asarray(reference_mask, dtype=bool)
        if ref_mask.shape != ref.shape:
            raise ValueError(f"reference_mask must have the shape of the reference "
                             f"{ref.shape}, got {ref_mask.shape}.")
        ref = np.where(ref_mask, ref, 0).astype(np.float32)
    # initial transform: centres of mass aligned, identity linear part
    c_mni = _apply(tpl_affine, np.array(ndimage.center_of_mass(tpl_mask)))
    c_nat = _apply(ref_affine, np.array(ndimage.center_of_mass(ref_mask)))

    def transform(params: np.ndarray, isotropic: bool) -> np.ndarray:
        out = np.eye(4)
        lin = _linear(params, isotropic)
        out[:3, :3] = lin
        out[:3, 3] = c_nat + params[:3] - lin @ c_mni
        return out

    params = np.zeros(12)
    dilated = ndimage.binary_dilation(tpl_mask, iterations=4)  # 8 mm of background rim
    # (smoothing, template point stride in voxels, free parameters, isotropic scale)
    stages = [(fwhm_mm[0], 3, _DOF_PARAMS[min(dof, 7)], True),
              (fwhm_mm[-1], 2, _DOF_PARAMS[dof], dof <= 7)]
    cost = None
    n_eval = 0
    for fwhm, stride, free, isotropic in stages:
        ref_s = ndimage.gaussian_filter(ref, fwhm_to_sigma(fwhm, ref_affine))
        tpl_s = ndimage.gaussian_filter(tpl, fwhm_to_sigma(fwhm, tpl_affine))
        sub = np.zeros_like(dilated)
        sub[::stride, ::stride, ::stride] = True
        ijk = np.argwhere(dilated & sub).astype(float)
        values = tpl_s[tuple(ijk.astype(int).T)]
        edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
        bins = np.digitize(values, edges)
        cost = _CorrelationRatio(ref_s, ref_affine, _apply(tpl_affine, ijk), bins,
                                 edges.size + 1)
        free = np.array(free)
        start = params.copy()

        def objective(x, free=free, start=start, cost=cost, isotropic=isotropic):
            p = start.copy()
            p[free] = x * _PARAM_SCALE[free]
            return cost(transform(p, isotropic))

        res = optimize.minimize(objective, params[free] / _PARAM_SCALE[free], method="Powell",
                                options={"xtol": 1e-3, "ftol": 1e-6, "maxfev": 4000})
        params[free] = res.x * _PARAM_SCALE[free]
        if isotropic:
            params[7:9] = params[6]
        n_eval += cost.n_eval
    result = transform(params, dof == 7)
    if not return_info:
        return result
    return result, {"correlation_ratio": -cost(result), "n_evaluations": n_eval,
                    "seconds": time.perf_counter() - t0, "params": params}
