"""Spatial Gaussian smoothing of single volumes, with the FWHM given in millimetres.

Only spatial smoothing is provided: no temporal filtering is applied here (ALFF and fALFF
must see the unfiltered spectrum, see METHODS.md).
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from .._utils.checks import _check_option, check_finite_array

__all__ = ["FWHM_PER_SIGMA", "Smoother", "fwhm_to_sigma", "zooms_from_affine"]

#: Ratio FWHM / sigma of a Gaussian: ``2 sqrt(2 ln 2)`` (about 2.3548).
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

_MODES = ("reflect", "constant", "nearest", "mirror", "wrap")


def zooms_from_affine(affine) -> np.ndarray:
    """Voxel sizes (mm) along the three array axes of a voxel-to-world affine.

    Parameters
    ----------
    affine : array-like, shape (4, 4)
        Voxel to world (mm) transform.

    Returns
    -------
    numpy.ndarray, shape (3,)
        Norms of the first three columns of ``affine[:3, :3]`` (valid for oblique grids).
    """
    affine = check_finite_array(affine, "affine", ndim=2)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must have shape (4, 4), got {affine.shape}.")
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def _as_zooms(affine_or_zooms) -> np.ndarray:
    arr = np.asarray(affine_or_zooms, dtype=float)
    if arr.shape == (4, 4):
        zooms = zooms_from_affine(arr)
    elif arr.shape == (3,):
        zooms = check_finite_array(arr, "zooms")
    else:
        raise ValueError(f"affine_or_zooms must be a (4, 4) affine or 3 voxel sizes in mm, "
                         f"got shape {arr.shape}.")
    if not (zooms > 0).all():
        raise ValueError(f"voxel sizes must be > 0 mm, got {zooms.tolist()}.")
    return zooms


def _as_fwhm(fwhm_mm) -> np.ndarray:
    if isinstance(fwhm_mm, bool):
        raise TypeError("fwhm_mm must be a number or 3 numbers (mm), got bool.")
    if isinstance(fwhm_mm, numbers.Real):
        fwhm = np.full(3, float(fwhm_mm))
    else:
        fwhm = check_finite_array(fwhm_mm, "fwhm_mm")
        if fwhm.shape != (3,):
            raise ValueError(f"fwhm_mm must be a number or 3 numbers (mm, one per axis), "
                             f"got shape {fwhm.shape}.")
    if not (np.isfinite(fwhm).all() and (fwhm >= 0).all()):
        raise ValueError(f"fwhm_mm must be finite and >= 0 mm, got {fwhm_mm!r}.")
    return fwhm


def fwhm_to_sigma(fwhm_mm, zooms) -> np.ndarray:
    """Gaussian standard deviation in voxels per axis for a FWHM in millimetres.

    ``sigma_i = fwhm_i / (2 sqrt(2 ln 2)) / zoom_i``, so anisotropic voxels get a
    different sigma (in voxels) per axis for the same physical kernel.

    Parameters
    ----------
    fwhm_mm : float | array-like, shape (3,)
        Full width at half maximum in mm (one value, or one per array axis); 0 means no
        smoothing along that axis.
    zooms : array-like, shape (3,) | (4, 4)
        Voxel sizes in mm, or a voxel-to-world affine from which they are taken.

    Returns
    -------
    numpy.ndarray, shape (3,)
        Sigma in voxels per array axis.
    """
    return _as_fwhm(fwhm_mm) / FWHM_PER_SIGMA / _as_zooms(zooms)


class Smoother:
    """Gaussian spatial smoothing of 3D volumes into a preallocated buffer.

    Parameters
    ----------
    fwhm : float | array-like, shape (3,)
        Kernel FWHM in mm (one value or one per array axis). ``0`` disables smoothing:
        :meth:`transform` then copies the volume.
    affine_or_zooms : array-like, shape (4, 4) | (3,)
        Voxel-to-world affine of the volumes, or their voxel sizes in mm.
    mode : str
        Boundary handling of :func:`scipy.ndimage.gaussian_filter`.
    truncate : float
        Kernel half-width in sigmas (scipy's ``truncate``).
    dtype : numpy dtype
        Dtype of the output buffer (float32 like :class:`rtfb.ingest.Volume` data).

    Attributes
    ----------
    sigma_ : numpy.ndarray, shape (3,)
        Sigma in voxels per axis (parameters are checked at the first call).
    out_ : numpy.ndarray
        Buffer written by :meth:`transform` when no ``out`` is given (created at the first
        call and reused: copy the result to keep it beyond the next call).
    """

    def __init__(self, fwhm, affine_or_zooms, mode: str = "reflect", truncate: float = 4.0,
                 dtype=np.float32):
        self.fwhm = fwhm
        self.affine_or_zooms = affine_or_zooms
        self.mode = mode
        self.truncate = truncate
        self.dtype = dtype

    def _check_params(self) -> None:
        _check_option("mode", self.mode, _MODES)
        self.sigma_ = fwhm_to_sigma(self.fwhm, self.affine_or_zooms)

    def transform(self, volume3d, out: np.ndarray | None = None) -> np.ndarray:
        """Smooth one volume.

        Parameters
        ----------
        volume3d : array-like, shape (X, Y, Z)
            Volume to smooth (finite values).
        out : numpy.ndarray | None
            Output array of the volume's shape (float dtype). ``None`` uses the smoother's
            own buffer ``out_``, allocated once and overwritten by each call.

        Returns
        -------
        numpy.ndarray
            ``out`` (or ``out_``) holding the smoothed volume.
        """
        if not hasattr(self, "sigma_"):
            self._check_params()
        vol = np.asarray(volume3d)
        if vol.ndim != 3:
            raise ValueError(f"volume3d must be 3D, got shape {vol.shape}.")
        if not np.isfinite(vol).all():
            n_bad = int(vol.size - np.count_nonzero(np.isfinite(vol)))
            raise ValueError(f"volume3d contains {n_bad} NaN or infinite value(s); smoothing "
                             f"would spread them.")
        if out is None:
            if getattr(self, "out_", None) is None or self.out_.shape != vol.shape:
                self.out_ = np.empty(vol.shape, dtype=self.dtype)
            out = self.out_
        elif out.shape != vol.shape or not np.issubdtype(out.dtype, np.floating):
            raise ValueError(f"out must be a float array of shape {vol.shape}, got "
                             f"{out.dtype} array of shape {out.shape}.")
        if not (self.sigma_ > 0).any():
            np.copyto(out, vol, casting="unsafe")
            return out
        ndimage.gaussian_filter(vol, self.sigma_, output=out, mode=self.mode,
                                truncate=self.truncate)
        return out
