"""Real-time quality assurance: running tSNR and DVARS spikes, batch and incremental.

``tSNR`` of a voxel is the mean of its signal over the volumes so far divided by its
standard deviation (``ddof=1``); a region's tSNR is the mean of its voxels' tSNR (voxels
with zero variance are left out). ``DVARS_t`` is the root mean square over voxels of
``x_t - x_{t-1}``. A volume is a *spike* when its DVARS lies more than ``spike_z``
standard deviations above the mean DVARS of the earlier non-spike volumes (once
``min_volumes`` DVARS values are known); spikes are left out of that running mean and
variance so that one spike does not hide the next.

The running state (:class:`RunningQA`) is one pass over the voxels per volume (Welford's
update of the mean and the sum of squared deviations, in float64), so it costs the
processing thread a fraction of a millisecond; its values equal :func:`tsnr` and
:func:`dvars` on all the volumes seen so far.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .._utils.checks import check_finite_array
from .._utils.jit import jit

__all__ = ["RunningQA", "dvars", "tsnr"]


def tsnr(ts) -> np.ndarray:
    """Temporal signal-to-noise ratio of each voxel: ``mean / std`` (``ddof=1``).

    Parameters
    ----------
    ts : array-like, shape (..., n)
        Signals, time on the last axis (n >= 2).

    Returns
    -------
    numpy.ndarray, shape (...)
        tSNR; NaN where the standard deviation is 0.
    """
    ts = check_finite_array(ts, "ts", min_ndim=1)
    if ts.shape[-1] < 2:
        raise ValueError(f"tsnr needs at least 2 time points, got {ts.shape[-1]}.")
    sd = ts.std(axis=-1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, ts.mean(axis=-1) / np.where(sd > 0, sd, 1.0), np.nan)


def dvars(ts) -> np.ndarray:
    """DVARS of each time point after the first: RMS over voxels of the temporal difference.

    Parameters
    ----------
    ts : array-like, shape (n_voxels, n)
        Signals, time on the last axis.

    Returns
    -------
    numpy.ndarray, shape (n - 1,)
        ``sqrt(mean_v (x[v, t] - x[v, t-1])**2)`` for t = 1 .. n-1.
    """
    ts = check_finite_array(ts, "ts", ndim=2)
    return np.sqrt(np.mean(np.diff(ts, axis=-1) ** 2, axis=0))


@jit
def _update(x, mean, m2, prev, k):
    """Welford update of every voxel; returns (sum of tSNR, voxels counted, sum sq diff)."""
    total = 0.0
    count = 0
    sq = 0.0
    for v in range(x.size):
        xv = float(x[v])
        d = xv - prev[v]
        sq += d * d
        prev[v] = xv
        delta = xv - mean[v]
        mean[v] += delta / k
        m2[v] += delta * (xv - mean[v])
        if k >= 2 and m2[v] > 0.0:
            total += mean[v] / math.sqrt(m2[v] / (k - 1))
            count += 1
    return total, count, sq


class RunningQA:
    """Running tSNR (brain and regions) and DVARS spike detection, one volume at a time.

    Parameters
    ----------
    regions : mapping of str to array of int | None
        Region name -> indices into the volume vectors (e.g. an ROI's voxels within the
        brain mask). The whole vector is reported as ``"brain"``.
    spike_z : float
        DVARS z-score above which a volume is a spike.
    min_volumes : int
        DVARS values needed before spikes are flagged.

    Attributes
    ----------
    n_ : int
        Volumes seen.
    tsnr_ : dict of str to float | None
        ``"brain"`` and each region's mean voxel tSNR (None before 2 volumes).
    dvars_ : float | None
        DVARS of the last volume (None for the first).
    dvars_z_ : float | None
        Its z-score against the earlier non-spike DVARS values (None until known).
    spike_ : bool
        Whether the last volume is a spike.
    n_spikes_ : int
        Spikes so far.
    """

    def __init__(self, regions: Mapping[str, np.ndarray] | None = None, spike_z: float = 5.0,
                 min_volumes: int = 10):
        self.regions = regions
        self.spike_z = spike_z
        self.min_volumes = min_volumes

    def _init(self, n: int) -> None:
        self._mean = np.zeros(n)
        self._m2 = np.zeros(n)
        self._prev = np.zeros(n)
        self._regions = {str(k): np.asarray(v, dtype=np.intp)
                         for k, v in (self.regions or {}).items()}
        for name, idx in self._regions.items():
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"region {name!r} indexes outside the {n} voxels.")
        self._d_n, self._d_mean, self._d_m2 = 0, 0.0, 0.0
        self.n_ = 0
        self.n_spikes_ = 0

    def partial_fit(self, x) -> RunningQA:
        """Add one volume (1D vector of voxel values, same voxels every time)."""
        x = np.asarray(x)
        if x.ndim != 1:
            raise ValueError(f"x must be a 1D vector of voxels, got shape {x.shape}.")
        if getattr(self, "n_", 0) == 0:
            self._init(x.size)
        elif x.size != self._mean.size:
            raise ValueError(f"x has {x.size} voxels, expected {self._mean.size}.")
        self.n_ += 1
        total, count, sq = _update(x, self._mean, self._m2, self._prev, self.n_)
        tsnr_ = {"brain": total / count if count else None}
        for name, idx in self._regions.items():
            tsnr_[name] = self._region_tsnr(idx)
        self.tsnr_ = tsnr_
        self.spike_ = False
        self.dvars_ = self.dvars_z_ = None
        if self.n_ >= 2 and x.size:
            d = math.sqrt(sq / x.size)
            self.dvars_ = d
            if self._d_n >= 2:
                sd = math.sqrt(self._d_m2 / (self._d_n - 1))
                if sd > 0:
                    self.dvars_z_ = (d - self._d_mean) / sd
            self.spike_ = bool(self._d_n >= self.min_volumes and self.dvars_z_ is not None
                               and self.dvars_z_ > self.spike_z)
            if self.spike_:
                self.n_spikes_ += 1
            else:
                self._d_n += 1
                delta = d - self._d_mean
                self._d_mean += delta / self._d_n
                self._d_m2 += delta * (d - self._d_mean)
        return self

    def _region_tsnr(self, idx: np.ndarray) -> float | None:
        if self.n_ < 2 or idx.size == 0:
            return None
        sd = np.sqrt(self._m2[idx] / (self.n_ - 1))
        ok = sd > 0
        if not ok.any():
            return None
        return float(np.mean(self._mean[idx][ok] / sd[ok]))

    def summary(self) -> dict:
        """The message/record form: ``{"tsnr": {...}, "dvars", "dvars_z", "spike"}``."""
        return {"tsnr": dict(self.tsnr_), "dvars": self.dvars_, "dvars_z": self.dvars_z_,
                "spike": self.spike_}
