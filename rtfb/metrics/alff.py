"""ALFF, fALFF and their normalisations (Zang 2007; Zou 2008), batch and sliding.

Definitions follow METHODS.md exactly (``convention="rtfb"``): per window of ``n``
volumes the linear trend is removed by least squares, ``A_k = 2 |X_k| / n`` for
``k = 0 .. n // 2`` with ``f_k = k / (n TR)``, ALFF is the mean of ``A_k`` over the band
(bounds inclusive), fALFF the sum over the band divided by the sum over
``k = 1 .. n // 2``. No band-pass filtering is applied. A series that is constant over
the window has ALFF = fALFF = 0.

``convention="dpabi"`` reproduces DPABI's ``y_alff_falff``: the detrended series is
zero-padded to the next power of two ``P`` (still divided by the unpadded ``n``), the band
is bins ``ceil(L P TR) .. fix(H P TR)`` (:func:`rtfb.preprocess.bandpass.dpabi_band_indices`)
and fALFF's denominator is bins ``1 .. P / 2``; mALFF/zALFF use the sample standard
deviation (ddof 1). ``convention="cpac"`` follows C-PAC: ALFF is the standard deviation
(ddof 0) of the band-passed series (:func:`rtfb.preprocess.bandpass`, ideal filter,
padded) and fALFF the ratio of that to the standard deviation of the detrended series, i.e.
the square root of a power ratio.
"""

from __future__ import annotations

import numpy as np

from .._utils.checks import (
    _check_option,
    check_finite_array,
    check_mask,
    check_positive_number,
)
from .._utils.jit import jit, pjit, prange
from ..preprocess.bandpass import bandpass, dpabi_band_indices, linear_detrend
from ._sliding import SlidingState, _track_runs

_BAND_RTOL = 1e-9  # f_k equal to a band edge up to rounding counts as inside
CONVENTIONS = ("rtfb", "dpabi", "cpac")
NORM_CONVENTIONS = ("rtfb", "dpabi")
SLIDING_CONVENTIONS = ("rtfb", "dpabi")


def _check_band(band) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in band)
    except (TypeError, ValueError) as err:
        raise ValueError(f"band must be a pair (low, high) in Hz, got {band!r}.") from err
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
        raise ValueError(f"band must satisfy 0 <= low < high (Hz), got {band!r}.")
    return low, high


def band_bins(n: int, tr: float, band=(0.01, 0.08)) -> np.ndarray:
    """Boolean selection of the DFT bins ``k = 1 .. n // 2`` inside ``band``.

    Parameters
    ----------
    n : int
        Window length in volumes.
    tr : float
        Repetition time in seconds.
    band : tuple of float
        Inclusive frequency band in Hz.

    Returns
    -------
    numpy.ndarray of bool, shape (n // 2,)
        ``out[k - 1]`` is True when bin ``k`` is in the band.

    Raises
    ------
    ValueError
        If no bin falls in the band (window too short for the band).
    """
    tr = check_positive_number(tr, "tr")
    low, high = _check_band(band)
    k = np.arange(1, n // 2 + 1)
    freqs = k / (n * tr)
    sel = (freqs >= low * (1 - _BAND_RTOL)) & (freqs <= high * (1 + _BAND_RTOL))
    if not sel.any():
        need = int(np.ceil(1.0 / (high * tr)))
        raise ValueError(
            f"A window of {n} volumes at tr={tr} s has frequency bins k/({n}*{tr}) Hz, none of "
            f"which lies in band={band!r}; the window needs at least {need} volumes "
            f"(and at least 3) to resolve the band."
        )
    return sel


def _check_timeseries(ts, tr, band):
    ts = check_finite_array(ts, "ts", min_ndim=1)
    n = ts.shape[-1]
    if n < 3:
        raise ValueError(f"ts must have at least 3 time points on its last axis, got {n}.")
    return ts, band_bins(n, tr, band)


def _amplitudes(ts: np.ndarray, n_fft: int | None = None) -> np.ndarray:
    """Amplitudes ``2 |X_k| / n`` for ``k = 1 .. n_fft // 2`` of the linearly detrended series.

    ``n_fft`` > ``n`` zero-pads the detrended series (DPABI); ``n`` stays the divisor.
    """
    n = ts.shape[-1]
    resid = linear_detrend(ts)
    return 2.0 * np.abs(np.fft.rfft(resid, n=n_fft, axis=-1)[..., 1:]) / n


def _alff_falff(ts, tr, band, convention="rtfb"):
    _check_option("convention", convention, CONVENTIONS)
    if convention == "rtfb":
        ts, sel = _check_timeseries(ts, tr, band)
        amp = _amplitudes(ts)
        n_sel = sel.sum()
    else:
        ts = check_finite_array(ts, "ts", min_ndim=1)
        n = ts.shape[-1]
        if n < 3:
            raise ValueError(f"ts must have at least 3 time points on its last axis, got {n}.")
        if convention == "cpac":
            return _cpac_alff_falff(ts, tr, band)
        p, k_low, k_high = dpabi_band_indices(n, tr, band)
        amp = _amplitudes(ts, p)  # bins 1 .. P/2
        sel = np.zeros(p // 2, dtype=bool)
        sel[max(k_low, 1) - 1:k_high] = True
        n_sel = k_high - k_low + 1  # DPABI's mean counts the DC bin when low = 0
    in_band = amp[..., sel].sum(axis=-1)
    total = amp.sum(axis=-1)
    constant = np.ptp(ts, axis=-1) == 0
    alff_ = np.where(constant, 0.0, in_band / n_sel)
    with np.errstate(invalid="ignore", divide="ignore"):
        falff_ = np.where(constant, 0.0, in_band / total)
    return alff_, falff_


def _cpac_alff_falff(ts, tr, band):
    filtered = bandpass(ts, tr, band, convention="cpac")
    sd_band = filtered.std(axis=-1)
    sd_all = linear_detrend(ts).std(axis=-1)
    constant = np.ptp(ts, axis=-1) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        falff_ = np.where(constant, 0.0, sd_band / np.where(constant, 1.0, sd_all))
    return np.where(constant, 0.0, sd_band), falff_


def alff(ts, tr: float, band=(0.01, 0.08), convention: str = "rtfb") -> np.ndarray:
    """Amplitude of low-frequency fluctuations.

    Parameters
    ----------
    ts : array-like, shape (..., n)
        Time series, time on the last axis (a 4D image gives a 3D map).
    tr : float
        Repetition time in seconds (> 0).
    band : tuple of float
        Frequency band in Hz (inclusive; ``"dpabi"``: DPABI's bin rounding).
    convention : {"rtfb", "dpabi", "cpac"}
        Whose definition (module docstring): rtfb's unpadded DFT, DPABI's
        ``y_alff_falff`` (zero-padded to the next power of two) or C-PAC's standard
        deviation of the band-passed series.

    Returns
    -------
    numpy.ndarray, shape (...)
        ALFF; 0 for series constant in time.
    """
    return _alff_falff(ts, tr, band, convention)[0]


def falff(ts, tr: float, band=(0.01, 0.08), convention: str = "rtfb") -> np.ndarray:
    """Fractional ALFF: band amplitude over the amplitude of all bins ``1 .. n // 2``.

    Parameters
    ----------
    ts : array-like, shape (..., n)
        Time series, time on the last axis.
    tr : float
        Repetition time in seconds (> 0).
    band : tuple of float
        Frequency band in Hz (inclusive; ``"dpabi"``: DPABI's bin rounding).
    convention : {"rtfb", "dpabi", "cpac"}
        As in :func:`alff`; ``"dpabi"`` sums bins ``1 .. P / 2`` of the padded DFT,
        ``"cpac"`` is the ratio of standard deviations (square root of a power ratio).

    Returns
    -------
    numpy.ndarray, shape (...)
        fALFF in [0, 1]; 0 for series constant in time.
    """
    return _alff_falff(ts, tr, band, convention)[1]


def _mask_stats(values, mask):
    values = check_finite_array(values, "values")
    mask = check_mask(mask, values.shape)
    return values, mask, values[mask]


def malff(values, mask=None, convention: str = "rtfb") -> np.ndarray:
    """Divide a map by its mean within ``mask`` (mALFF from ALFF; also for fALFF).

    Parameters
    ----------
    values : array-like
        Map (e.g. ALFF) of any shape.
    mask : array-like of bool | None
        Brain mask of the same shape; ``None`` uses every voxel.
    convention : {"rtfb", "dpabi"}
        Accepted for symmetry with :func:`zalff`: both divide by the mean.

    Returns
    -------
    numpy.ndarray
        Normalised map, 0 outside the mask.
    """
    _check_option("convention", convention, NORM_CONVENTIONS)
    values, mask, inside = _mask_stats(values, mask)
    mean = inside.mean()
    if mean == 0:
        raise ValueError("values have a zero mean inside the mask; mALFF is undefined.")
    return np.where(mask, values / mean, 0.0)


def zalff(values, mask=None, convention: str = "rtfb") -> np.ndarray:
    """Z-score a map within ``mask``: ``(value - mean) / std`` (zALFF from ALFF).

    Parameters
    ----------
    values : array-like
        Map (e.g. ALFF) of any shape.
    mask : array-like of bool | None
        Brain mask of the same shape; ``None`` uses every voxel.
    convention : {"rtfb", "dpabi"}
        ``"rtfb"``: population standard deviation (ddof 0); ``"dpabi"`` (DPARSF's zALFF):
        sample standard deviation (ddof 1).

    Returns
    -------
    numpy.ndarray
        Standardised map, 0 outside the mask.
    """
    _check_option("convention", convention, NORM_CONVENTIONS)
    values, mask, inside = _mask_stats(values, mask)
    std = inside.std(ddof=0 if convention == "rtfb" else 1)
    if std == 0:
        raise ValueError("values are constant inside the mask; zALFF is undefined.")
    return np.where(mask, (values - inside.mean()) / std, 0.0)


@jit
def _push(j, x, ref, buf, last, runlen, s0, s1, slot, n_seen):
    """Take sample ``x[j]`` of signal ``j`` into the window (shared by both ALFF kernels).

    Tracks the run of repeated values (a constant window gives ALFF = fALFF = 0), stores
    the sample relative to the first one in ring-buffer ``slot`` and updates the running
    sums of the window (``s0``: of the samples, ``s1``: of position x sample). Returns the
    new sample and the one it replaced (0 while the window fills).
    """
    n = buf.shape[1]
    if n_seen == 0:
        ref[j] = x[j]
    _track_runs(j, x, last, runlen, n_seen)
    xv = x[j] - ref[j]
    xo = 0.0
    if n_seen < n:  # warm-up: append at position m = slot
        s1[j] += slot * xv
        s0[j] += xv
    else:  # drop the oldest (position 0) and append at position n - 1
        xo = buf[j, slot]
        s1[j] += -(s0[j] - xo) + (n - 1) * xv
        s0[j] += xv - xo
    buf[j, slot] = xv
    return xv, xo


@pjit
def _alff_update(x, ref, buf, last, runlen, s0, s1, yr, yi, pr, pi, er, ei, sel, n_sel,
                 slot, n_seen, alff_out, falff_out):
    n, n_bins = pr.shape
    full_after = n_seen + 1 >= n
    head = (slot + 1) % n if n_seen + 1 > n else 0  # oldest slot after the update
    slope_den = n * (n * n - 1) / 12.0
    for j in prange(x.shape[0]):
        xv, xo = _push(j, x, ref, buf, last, runlen, s0, s1, slot, n_seen)
        d = xv - xo
        for k in range(n_bins):
            yr[j, k] += d * pr[slot, k]
            yi[j, k] += d * pi[slot, k]
        if not full_after:
            continue
        if runlen[j] >= n - 1:
            alff_out[j] = 0.0
            falff_out[j] = 0.0
            continue
        b = (s1[j] - s0[j] * (n - 1) / 2.0) / slope_den
        in_band = 0.0
        total = 0.0
        for k in range(n_bins):
            re = yr[j, k] - b * er[head, k]
            im = yi[j, k] - b * ei[head, k]
            a = np.sqrt(re * re + im * im)
            total += a
            if sel[k]:
                in_band += a
        alff_out[j] = 2.0 * in_band / (n * n_sel)
        falff_out[j] = in_band / total if total > 0 else 0.0


@pjit
def _alff_update_padded(x, ref, buf, last, runlen, s0, s1, yr, yi, pr, pi, dr, di, rr, ri,
                        sel, n_sel, slot, n_seen, alff_out, falff_out):
    """DPABI's zero-padded ALFF: the DFT kept in the frame of absolute time modulo ``P``."""
    n = buf.shape[1]
    p_len, n_bins = pr.shape
    full_after = n_seen + 1 >= n
    p_new = n_seen % p_len  # phase of the new sample's absolute time
    p_old = (n_seen - n) % p_len  # phase of the outgoing sample (when the window is full)
    head = (n_seen + 1 - n) % p_len if full_after else 0  # phase of the window's first sample
    slope_den = n * (n * n - 1) / 12.0
    for j in prange(x.shape[0]):
        xv, xo = _push(j, x, ref, buf, last, runlen, s0, s1, slot, n_seen)
        if n_seen < n:
            for k in range(n_bins):
                yr[j, k] += xv * pr[p_new, k]
                yi[j, k] += xv * pi[p_new, k]
        else:
            for k in range(n_bins):
                yr[j, k] += xv * pr[p_new, k] - xo * pr[p_old, k]
                yi[j, k] += xv * pi[p_new, k] - xo * pi[p_old, k]
        if not full_after:
            continue
        if runlen[j] >= n - 1:
            alff_out[j] = 0.0
            falff_out[j] = 0.0
            continue
        b = (s1[j] - s0[j] * (n - 1) / 2.0) / slope_den
        c = s0[j] / n - b * (n - 1) / 2.0
        in_band = 0.0
        total = 0.0
        for k in range(n_bins):
            re = yr[j, k] - c * dr[head, k] - b * rr[head, k]
            im = yi[j, k] - c * di[head, k] - b * ri[head, k]
            a = np.sqrt(re * re + im * im)
            total += a
            if sel[k]:
                in_band += a
        alff_out[j] = 2.0 * in_band / (n * n_sel)
        falff_out[j] = in_band / total if total > 0 else 0.0


class SlidingALFF(SlidingState):
    """ALFF and fALFF of the last ``window`` volumes, updated every volume.

    After each :meth:`partial_fit`, ``alff_`` and ``falff_`` equal :func:`alff` and
    :func:`falff` applied to exactly the last ``window`` volumes (NaN until the
    window is full). The update costs O(V * window / 2), with no FFT: the DFT is kept
    in the ring buffer's slot frame and updated by one rank-one correction per
    volume; the linear detrend enters analytically through the window's running
    sums (the DFT of the time ramp is known in closed form).

    With ``convention="dpabi"`` the values equal :func:`alff` / :func:`falff` with
    ``convention="dpabi"`` on the window: the DFT zero-padded to ``P`` (next power of
    two) is still linear in the samples, so it is kept in the frame of absolute time
    modulo ``P`` and updated by adding the new sample and removing the outgoing one;
    the mean and the linear trend enter through the padded DFTs of a constant and of
    the ramp. The update costs O(V * P / 2).

    Parameters
    ----------
    window : int
        Window length in volumes.
    tr : float
        Repetition time in seconds.
    band : tuple of float
        Inclusive frequency band in Hz.
    convention : {"rtfb", "dpabi"}
        Definition of :func:`alff` reproduced.

    Attributes
    ----------
    alff_ : numpy.ndarray, shape (n_signals,)
        ALFF of the current window.
    falff_ : numpy.ndarray, shape (n_signals,)
        fALFF of the current window.
    n_seen_ : int
        Number of volumes received.
    """

    _min_window = 3

    def __init__(self, window: int, tr: float, band=(0.01, 0.08), convention: str = "rtfb"):
        super().__init__(window)
        self.tr = tr
        self.band = band
        self.convention = convention

    def _check_params(self) -> None:
        super()._check_params()
        _check_option("convention", self.convention, SLIDING_CONVENTIONS)
        if self.convention == "dpabi":
            p, k_low, k_high = dpabi_band_indices(self.window, self.tr, self.band)
            self.band_bins_ = np.zeros(p // 2, dtype=bool)
            self.band_bins_[max(k_low, 1) - 1:k_high] = True
            self._n_band = k_high - k_low + 1
        else:
            self.band_bins_ = band_bins(self.window, self.tr, self.band)
            self._n_band = int(self.band_bins_.sum())

    def _allocate(self, n_signals: int) -> None:
        if self.convention == "dpabi":
            self._allocate_padded(n_signals)
            return
        n = self.window
        n_bins = n // 2
        k = np.arange(1, n_bins + 1)
        slots = np.arange(n)
        phase = np.exp(-2j * np.pi * np.outer(slots, k) / n)  # w_k ** slot
        ramp_dft = n / (np.exp(-2j * np.pi * k / n) - 1.0)  # DFT of m = 0 .. n-1
        corr = ramp_dft[None, :] * phase  # c_k w_k ** head
        self._pr, self._pi = np.ascontiguousarray(phase.real), np.ascontiguousarray(phase.imag)
        self._er, self._ei = np.ascontiguousarray(corr.real), np.ascontiguousarray(corr.imag)
        self._sel = self.band_bins_.copy()
        self._n_sel = int(self._sel.sum())
        self._buf = np.zeros((n_signals, n))
        self._ref = np.zeros(n_signals)
        self._last = np.zeros(n_signals)
        self._runlen = np.zeros(n_signals, dtype=np.int64)
        self._s0 = np.zeros(n_signals)
        self._s1 = np.zeros(n_signals)
        self._yr = np.zeros((n_signals, n_bins))
        self._yi = np.zeros((n_signals, n_bins))
        self.alff_ = np.full(n_signals, np.nan)
        self.falff_ = np.full(n_signals, np.nan)

    def _allocate_padded(self, n_signals: int) -> None:
        n = self.window
        p = 2 * self.band_bins_.size
        k = np.arange(1, p // 2 + 1)
        phase = np.exp(-2j * np.pi * np.outer(np.arange(p), k) / p)  # w_k ** phase
        window_phase = np.exp(-2j * np.pi * np.outer(np.arange(n), k) / p)
        const_dft = window_phase.sum(axis=0)  # padded DFT of ones at positions 0 .. n-1
        ramp_dft = np.arange(n) @ window_phase  # padded DFT of m = 0 .. n-1
        for name, arr in (("_pr", phase.real), ("_pi", phase.imag),
                          ("_dr", (phase * const_dft).real), ("_di", (phase * const_dft).imag),
                          ("_rr", (phase * ramp_dft).real), ("_ri", (phase * ramp_dft).imag)):
            setattr(self, name, np.ascontiguousarray(arr))
        self._sel = self.band_bins_.copy()
        self._buf = np.zeros((n_signals, n))
        self._ref = np.zeros(n_signals)
        self._last = np.zeros(n_signals)
        self._runlen = np.zeros(n_signals, dtype=np.int64)
        self._s0 = np.zeros(n_signals)
        self._s1 = np.zeros(n_signals)
        self._yr = np.zeros((n_signals, p // 2))
        self._yi = np.zeros((n_signals, p // 2))
        self.alff_ = np.full(n_signals, np.nan)
        self.falff_ = np.full(n_signals, np.nan)

    def _update(self, x: np.ndarray) -> None:
        if self.convention == "dpabi":
            _alff_update_padded(
                x, self._ref, self._buf, self._last, self._runlen, self._s0, self._s1,
                self._yr, self._yi, self._pr, self._pi, self._dr, self._di, self._rr,
                self._ri, self._sel, self._n_band, self._next_slot(), self.n_seen_,
                self.alff_, self.falff_)
            return
        _alff_update(x, self._ref, self._buf, self._last, self._runlen, self._s0, self._s1,
                     self._yr, self._yi, self._pr, self._pi, self._er, self._ei, self._sel,
                     self._n_sel, self._next_slot(), self.n_seen_, self.alff_, self.falff_)
