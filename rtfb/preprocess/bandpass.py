"""Temporal band-pass filtering as the offline pipelines of other tools apply it.

``convention="dpabi"`` reproduces DPABI/DPARSF (``detrend`` then ``y_IdealFilter``): each
series has its least-squares line removed, then its mean (again, as ``y_IdealFilter`` does),
is zero-padded to the next power of two ``P`` and Fourier transformed; the bins ``k`` with
``ceil(L P TR) <= k <= fix(H P TR)`` and their mirrors ``P - k`` are kept, every other bin
is set to 0, and the first ``n`` samples of the inverse transform are returned (the padded
series has zero mean, its first ``n`` samples in general not exactly).

``convention="cpac"`` is C-PAC's ``ideal_bandpass`` (a port of the same REST/DPABI filter):
the same padded ideal filter, but after the linear detrend only (C-PAC's nuisance
regression removes the mean and trend); with a linear detrend the two are equal, so the
``"cpac"`` convention differs from ``"dpabi"`` only by its default band (0.01-0.1 Hz) where
the caller uses :data:`DEFAULT_BANDS`.
"""

from __future__ import annotations

import math

import numpy as np

from .._utils.checks import _check_option, check_finite_array, check_mask, check_positive_number

__all__ = ["BANDPASS_CONVENTIONS", "DEFAULT_BANDS", "bandpass", "dpabi_band_indices",
           "linear_detrend", "padded_length"]

BANDPASS_CONVENTIONS = ("dpabi", "cpac")
#: Default band (Hz) of each tool's pipeline: DPARSF 0.01-0.08, C-PAC 0.01-0.1.
DEFAULT_BANDS = {"rtfb": (0.01, 0.08), "dpabi": (0.01, 0.08), "cpac": (0.01, 0.1)}


def padded_length(n: int) -> int:
    """``2 ** nextpow2(n)``: the FFT length DPABI pads a series of ``n`` samples to."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _check_band(band) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in band)
    except (TypeError, ValueError) as err:
        raise ValueError(f"band must be a pair (low, high) in Hz, got {band!r}.") from err
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
        raise ValueError(f"band must satisfy 0 <= low < high (Hz), got {band!r}.")
    return low, high


def dpabi_band_indices(n: int, tr: float, band=(0.01, 0.08)) -> tuple[int, int, int]:
    """DFT bins DPABI keeps for ``band``: ``(P, k_low, k_high)``, bins ``k_low .. k_high``.

    ``P`` is :func:`padded_length` of ``n``; with 0-based bins ``k`` (frequency
    ``k / (P TR)``), ``k_low = ceil(L P TR + 1) - 1`` and ``k_high = fix(H P TR + 1) - 1``,
    evaluated in floating point in the same order as DPABI's ``y_alff_falff`` and
    ``y_IdealFilter``; a cutoff at or above Nyquist maps to ``P / 2`` (and ``H = 0`` too).

    Parameters
    ----------
    n : int
        Number of samples.
    tr : float
        Repetition time in seconds.
    band : tuple of float
        ``(low, high)`` in Hz.

    Returns
    -------
    tuple of int
        ``(P, k_low, k_high)``.

    Raises
    ------
    ValueError
        If the band contains no bin (``k_low > k_high``).
    """
    tr = check_positive_number(tr, "tr")
    low, high = _check_band(band)
    p = padded_length(n)
    nyquist = 1.0 / tr / 2
    k_low = p // 2 if low >= nyquist else math.ceil(low * p * tr + 1) - 1
    k_high = p // 2 if (high >= nyquist or high == 0) else math.trunc(high * p * tr + 1) - 1
    if k_low > k_high:
        raise ValueError(
            f"band={band!r} contains no frequency bin of a {n}-sample series at tr={tr} s "
            f"zero-padded to {p} (bins k/({p}*{tr}) Hz); widen the band or use more volumes."
        )
    return p, k_low, k_high


def linear_detrend(ts: np.ndarray) -> np.ndarray:
    """Remove each series' least-squares line (time on the last axis), like Matlab's ``detrend``.

    Parameters
    ----------
    ts : numpy.ndarray, shape (..., n)
        Series (float64).

    Returns
    -------
    numpy.ndarray, shape (..., n)
        Residuals.
    """
    n = ts.shape[-1]
    t = np.arange(n, dtype=np.float64)
    t -= t.mean()
    centred = ts - ts.mean(axis=-1, keepdims=True)
    if n < 2:
        return centred
    slope = centred @ t / (t @ t)
    return centred - slope[..., None] * t


def _ideal_filter(ts: np.ndarray, tr: float, band) -> np.ndarray:
    """``y_IdealFilter`` on series with time on the last axis."""
    n = ts.shape[-1]
    p, k_low, k_high = dpabi_band_indices(n, tr, band)
    ts = ts - ts.mean(axis=-1, keepdims=True)
    spec = np.fft.rfft(ts, n=p, axis=-1)  # bins 0 .. P/2; the mirrors follow by symmetry
    keep = np.zeros(p // 2 + 1, dtype=bool)
    keep[k_low:k_high + 1] = True
    spec[..., ~keep] = 0.0
    return np.fft.irfft(spec, n=p, axis=-1)[..., :n]


def bandpass(data4d, tr: float, band=(0.01, 0.08), convention: str = "dpabi",
             mask=None) -> np.ndarray:
    """Band-pass filter series as DPABI/DPARSF (or C-PAC) does before ReHo, FC, DC and VMHC.

    Linear detrend, then the ideal (FFT) filter of DPABI's ``y_IdealFilter``: mean removed,
    zero-padded to the next power of two ``P``, bins ``ceil(L P TR) .. fix(H P TR)`` and
    their mirrors kept, the first ``n`` samples of the inverse FFT returned.
    ``reho(bandpass(x), ..., convention="dpabi")`` is DPABI's filtered ReHo.

    Parameters
    ----------
    data4d : array-like, shape (..., n)
        Series, time on the last axis (a 4D image or an (n_voxels, n) matrix).
    tr : float
        Repetition time in seconds.
    band : tuple of float
        ``(low, high)`` pass band in Hz.
    convention : {"dpabi", "cpac"}
        Whose filter to reproduce (identical kernels; see the module docstring).
    mask : array-like of bool, shape data4d.shape[:-1] | None
        Series to filter; the others are returned as 0. ``None`` filters all.

    Returns
    -------
    numpy.ndarray, shape data4d.shape
        Filtered series (float64).
    """
    _check_option("convention", convention, BANDPASS_CONVENTIONS)
    data = check_finite_array(data4d, "data4d", min_ndim=1)
    tr = check_positive_number(tr, "tr")
    n = data.shape[-1]
    if n < 3:
        raise ValueError(f"data4d must have at least 3 time points on its last axis, got {n}.")
    dpabi_band_indices(n, tr, band)  # validate before filtering
    if mask is None:
        return _ideal_filter(linear_detrend(data), tr, band)
    mask = check_mask(mask, data.shape[:-1])
    out = np.zeros(data.shape)
    out[mask] = _ideal_filter(linear_detrend(data[mask]), tr, band)
    return out
