"""Voxel-mirrored homotopic connectivity (VMHC)."""

from __future__ import annotations

import numpy as np

from .._utils.checks import check_finite_array, check_mask
from .seed_fc import fisher_z


def _check_symmetric_grid(affine, shape) -> None:
    affine = check_finite_array(affine, "affine", ndim=2)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}.")
    rzs = affine[:3, :3]
    if not np.allclose(rzs[1:, 0], 0) or not np.allclose(rzs[0, 1:], 0):
        raise ValueError("affine must map the first voxel axis to x alone (left-right) for "
                         "VMHC; resample the data to a left-right symmetric space first.")
    centre = affine[0, 0] * (shape[0] - 1) / 2.0 + affine[0, 3]
    if abs(centre) > abs(affine[0, 0]) / 2:
        raise ValueError(
            f"The grid is not symmetric about x = 0: the centre of the first axis lies at "
            f"x = {centre:.2f} mm. VMHC needs data in a left-right symmetric space."
        )


def vmhc(data4d, mask=None, affine=None) -> np.ndarray:
    """Fisher z of the correlation between each voxel and its mirror across the midline.

    The data must be in a left-right symmetric space whose first voxel axis is x, so
    that voxel ``i`` mirrors voxel ``X - 1 - i`` (checked when ``affine`` is given).

    Parameters
    ----------
    data4d : array-like, shape (X, Y, Z, n)
        Series, time on the last axis.
    mask : array-like of bool, shape (X, Y, Z) | None
        Voxels to use; a voxel gets a value only if it and its mirror are in the mask.
    affine : array-like, shape (4, 4) | None
        Voxel-to-mm affine used to check the symmetry of the grid.

    Returns
    -------
    numpy.ndarray, shape (X, Y, Z)
        VMHC (Fisher z), symmetric across the midline; 0 outside the mask and where
        either series is constant.
    """
    data = check_finite_array(data4d, "data4d", ndim=4)
    mask = check_mask(mask, data.shape[:3])
    if affine is not None:
        _check_symmetric_grid(affine, data.shape)
    if data.shape[-1] < 3:
        raise ValueError(f"data4d must have at least 3 time points, got {data.shape[-1]}.")
    mirrored = data[::-1]
    both = mask & mask[::-1]
    x, y = data[both], mirrored[both]
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("vt,vt->v", xc, xc) * np.einsum("vt,vt->v", yc, yc))
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    r = np.einsum("vt,vt->v", xc, yc) / np.where(constant, 1.0, norm)
    out = np.zeros(data.shape[:3])
    out[both] = np.where(constant, 0.0, fisher_z(r))
    return out
