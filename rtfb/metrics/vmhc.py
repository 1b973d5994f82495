"""Voxel-mirrored homotopic connectivity (VMHC)."""

from __future__ import annotations

import numpy as np

from .._utils.checks import _check_option, _validate_type, check_finite_array, check_mask
from .seed_fc import fisher_z

CONVENTIONS = ("rtfb", "dpabi")


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


def vmhc(data4d, mask=None, affine=None, convention: str = "rtfb",
         exclude_midline: bool = True) -> np.ndarray:
    """Fisher z of the correlation between each voxel and its mirror across the midline.

    The data must be in a left-right symmetric space whose first voxel axis is x, so
    that voxel ``i`` mirrors voxel ``X - 1 - i`` (checked when ``affine`` is given).

    ``convention="rtfb"``: a voxel gets a value when it and its mirror are in the mask;
    ``z = arctanh(r)`` with ``r`` clipped to ``1 - 1e-7``; on an odd-width grid the midline
    plane ``x = (X - 1) / 2`` is its own mirror (r = 1) and is set to 0 unless
    ``exclude_midline=False``. ``convention="dpabi"`` reproduces DPABI's ``y_VMHC`` and
    DPARSF's zVMHC: the mask is the union of the mask and its mirror, ``r >= 1`` becomes
    ``1 - 1e-16`` before ``z = 0.5 log((1 + r) / (1 - r))``, and the plane
    ``x = X // 2`` (0-based) is set to 0 whatever the parity of ``X``.

    Parameters
    ----------
    data4d : array-like, shape (X, Y, Z, n)
        Series, time on the last axis.
    mask : array-like of bool, shape (X, Y, Z) | None
        Voxels to use (see ``convention``).
    affine : array-like, shape (4, 4) | None
        Voxel-to-mm affine used to check the symmetry of the grid.
    convention : {"rtfb", "dpabi"}
        Whose definition (see above).
    exclude_midline : bool
        ``"rtfb"`` only: set the midline plane of an odd-width grid to 0.

    Returns
    -------
    numpy.ndarray, shape (X, Y, Z)
        VMHC (Fisher z); 0 outside the mask and where either series is constant.
    """
    data = check_finite_array(data4d, "data4d", ndim=4)
    mask = check_mask(mask, data.shape[:3])
    _check_option("convention", convention, CONVENTIONS)
    _validate_type(exclude_midline, bool, "exclude_midline")
    if affine is not None:
        _check_symmetric_grid(affine, data.shape)
    if data.shape[-1] < 3:
        raise ValueError(f"data4d must have at least 3 time points, got {data.shape[-1]}.")
    mirrored = data[::-1]
    both = (mask | mask[::-1]) if convention == "dpabi" else (mask & mask[::-1])
    x, y = data[both], mirrored[both]
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("vt,vt->v", xc, xc) * np.einsum("vt,vt->v", yc, yc))
    constant = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    r = np.where(constant, 0.0, np.einsum("vt,vt->v", xc, yc) / np.where(constant, 1.0, norm))
    out = np.zeros(data.shape[:3])
    if convention == "dpabi":
        r = np.minimum(r, 1.0 - 1e-16)  # DPARSF; 1 - 1e-16 rounds to 1 - 2**-53
        with np.errstate(divide="ignore"):
            out[both] = 0.5 * np.log((1.0 + r) / (1.0 - r))
        out[data.shape[0] // 2] = 0.0
    else:
        out[both] = fisher_z(r)
        if exclude_midline and data.shape[0] % 2 == 1:
            out[data.shape[0] // 2] = 0.0
    return out
