"""Image and grid helpers shared by :mod:`rtfb.preprocess.masks` and
:mod:`rtfb.preprocess.registration`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from .._utils.checks import check_finite_array


def load_img(img, name: str) -> nib.spatialimages.SpatialImage:
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


def img_name(img, name: str | None, default: str) -> str:
    if name is not None:
        return name
    if isinstance(img, (str, os.PathLike)):
        return Path(img).name
    return default


def as_3d(img, name: str) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{name} must be a 3D image, got shape {data.shape}.")
    return data


def check_grid(target_affine, target_shape) -> tuple[np.ndarray, tuple[int, int, int]]:
    affine = check_finite_array(target_affine, "target_affine", ndim=2)
    if affine.shape != (4, 4):
        raise ValueError(f"target_affine must have shape (4, 4), got {affine.shape}.")
    shape = tuple(int(s) for s in target_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"target_shape must be 3 positive integers, got {target_shape!r}.")
    return affine, shape


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to points of shape (..., 3)."""
    return points @ affine[:3, :3].T + affine[:3, 3]


def grid_extent(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(np.meshgrid(*[[-0.5, s - 0.5] for s in shape], indexing="ij"))
    world = apply_affine(affine, corners.reshape(3, -1).T)
    return world.min(axis=0), world.max(axis=0)


def empty_roi_error(name: str, world_points: np.ndarray, affine: np.ndarray, shape,
                     detail: str, space: str = "") -> ValueError:
    """Explain why an ROI selects no voxel of the grid: outside the FOV, or too small."""
    vox = apply_affine(np.linalg.inv(affine), world_points)
    inside = ((vox >= -0.5) & (vox <= np.array(shape) - 0.5)).all(axis=-1)
    lo, hi = grid_extent(affine, shape)
    centre = np.round(world_points.mean(axis=0), 1).tolist()
    fov = f"x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f}, z {lo[2]:.0f}..{hi[2]:.0f}"
    if not inside.any():
        return ValueError(
            f"ROI {name!r} lies outside the field of view of the functional grid: its centre "
            f"is at {centre} mm{space} while the grid spans {fov} mm (native world)."
        )
    return ValueError(f"ROI {name!r} is empty after resampling to the functional grid "
                      f"({detail}).")
