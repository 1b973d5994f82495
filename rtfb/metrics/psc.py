"""Percent signal change relative to a baseline, batch and sliding.

``PSC_t = 100 (x_t - b) / b`` with ``b`` the mean of the baseline volumes (METHODS.md).
Where the baseline mean is 0 the PSC is undefined and set to NaN (no warning).
"""

from __future__ import annotations

import numpy as np

from .._utils.checks import check_finite_array
from ._sliding import SlidingState


def psc(ts, baseline) -> np.ndarray:
    """Percent signal change of each time point relative to the baseline mean.

    Parameters
    ----------
    ts : array-like, shape (..., n)
        Series (typically ROI means), time on the last axis.
    baseline : slice | array-like of int or bool
        Baseline volumes along the last axis.

    Returns
    -------
    numpy.ndarray, shape (..., n)
        PSC in percent; NaN where the baseline mean is 0.
    """
    ts = check_finite_array(ts, "ts", min_ndim=1)
    n = ts.shape[-1]
    if isinstance(baseline, slice):
        idx = np.arange(n)[baseline]
    else:
        baseline = np.asarray(baseline)
        if baseline.dtype == bool:
            if baseline.shape != (n,):
                raise ValueError(f"baseline as a boolean selection must have shape ({n},), "
                                 f"got {baseline.shape}.")
            idx = np.flatnonzero(baseline)
        elif np.issubdtype(baseline.dtype, np.integer) and baseline.ndim == 1:
            if baseline.size and (baseline.min() < -n or baseline.max() >= n):
                raise ValueError(f"baseline indices must lie in [0, {n}).")
            idx = baseline
        else:
            raise ValueError("baseline must be a slice, a boolean mask or integer indices.")
    if idx.size == 0:
        raise ValueError("baseline selects no volume; expected at least one.")
    base = ts[..., idx].mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(base == 0, np.nan, 100.0 * (ts - base) / np.where(base == 0, 1, base))


class SlidingPSC(SlidingState):
    """PSC of each new volume relative to the mean of the ``window`` volumes before it.

    After each :meth:`partial_fit` with volume ``x_t``, ``psc_`` equals
    ``psc(ts[..., t - window:t + 1], baseline=slice(0, window))[..., -1]`` (NaN until
    ``window`` earlier volumes exist). :meth:`freeze_baseline` keeps the current
    baseline for all later volumes (e.g. at the end of a baseline block).

    Parameters
    ----------
    window : int
        Number of preceding volumes forming the moving baseline (>= 1).

    Attributes
    ----------
    psc_ : numpy.ndarray, shape (n_signals,)
        PSC of the newest volume.
    baseline_ : numpy.ndarray, shape (n_signals,)
        Baseline mean used for the newest volume.
    n_seen_ : int
        Number of volumes received.
    """

    _min_window = 1

    def _allocate(self, n_signals: int) -> None:
        self._buf = np.zeros((n_signals, self.window))
        self._ref = np.zeros(n_signals)
        self._sum = np.zeros(n_signals)  # sum of (x - ref) over the baseline volumes
        self._tmp = np.zeros(n_signals)
        self.baseline_ = np.full(n_signals, np.nan)
        self.psc_ = np.full(n_signals, np.nan)
        self.frozen_ = False

    def freeze_baseline(self) -> SlidingPSC:
        """Fix the baseline to the mean of the last ``window`` volumes for all later volumes."""
        if not self.is_full_:
            raise ValueError(f"Cannot freeze the baseline before {self.window} volumes were seen "
                             f"(got {getattr(self, 'n_seen_', 0)}).")
        np.divide(self._sum, self.window, out=self.baseline_)
        self.baseline_ += self._ref
        self.frozen_ = True
        return self

    def _update(self, x: np.ndarray) -> None:
        n, slot = self.window, self._next_slot()
        if self.n_seen_ == 0:
            self._ref[:] = x
        if not self.frozen_ and self.n_seen_ >= n:
            np.divide(self._sum, n, out=self.baseline_)
            self.baseline_ += self._ref
        if self.n_seen_ >= n:
            np.subtract(x, self.baseline_, out=self._tmp)
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(self._tmp, self.baseline_, out=self.psc_)
            self.psc_ *= 100.0
            self.psc_[self.baseline_ == 0] = np.nan
        if not self.frozen_:
            np.subtract(x, self._ref, out=self._tmp)
            self._sum += self._tmp
            if self.n_seen_ >= n:
                self._sum -= self._buf[:, slot]
            self._buf[:, slot] = self._tmp
