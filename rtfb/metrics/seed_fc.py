"""Seed-based functional connectivity: Fisher z of Pearson correlations, batch and sliding.

``z = arctanh(r)`` with ``r`` clipped to ``±(1 - 1e-7)`` (METHODS.md). A series that is
constant over the window (voxel or seed) has no defined correlation; its z is 0.
"""

from __future__ import annotations

import numpy as np

from .._utils.checks import _check_option, check_finite_array
from .._utils.jit import pjit, prange
from ._sliding import SlidingState, _track_runs

R_CLIP = 1.0 - 1e-7
CONVENTIONS = ("rtfb", "dpabi")


def fisher_z(r) -> np.ndarray:
    """Fisher transform ``arctanh(r)`` with ``r`` clipped to ``±(1 - 1e-7)``."""
    return np.arctanh(np.clip(r, -R_CLIP, R_CLIP))


def seed_fc(seed, voxels, convention: str = "rtfb") -> np.ndarray:
    """Fisher z of the correlation between a seed series and each voxel series.

    Parameters
    ----------
    seed : array-like, shape (n,)
        Seed series (e.g. mean of the seed ROI's voxels).
    voxels : array-like, shape (..., n)
        Series to correlate with the seed, time on the last axis.
    convention : {"rtfb", "dpabi"}
        ``"rtfb"``: :func:`fisher_z` (``r`` clipped to ``±(1 - 1e-7)``); ``"dpabi"``
        (``y_SCA``'s zFC): ``0.5 log((1 + r) / (1 - r))`` unclipped (``r = 1``: inf).

    Returns
    -------
    numpy.ndarray, shape (...)
        Fisher z; 0 where the seed or the voxel is constant.
    """
    _check_option("convention", convention, CONVENTIONS)
    seed = check_finite_array(seed, "seed", ndim=1)
    voxels = check_finite_array(voxels, "voxels", min_ndim=1)
    n = seed.size
    if voxels.shape[-1] != n:
        raise ValueError(
            f"voxels must have the seed's {n} time points on their last axis, "
            f"got shape {voxels.shape}."
        )
    if n < 3:
        raise ValueError(f"seed must have at least 3 time points, got {n}.")
    yc = seed - seed.mean()
    xc = voxels - voxels.mean(axis=-1, keepdims=True)
    cov = xc @ yc
    norm = np.sqrt(np.einsum("...t,...t->...", xc, xc) * (yc @ yc))
    constant = (np.ptp(voxels, axis=-1) == 0) | (np.ptp(seed) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(constant, 0.0, cov / np.where(constant, 1.0, norm))
        if convention == "dpabi":
            r = np.clip(r, -1.0, 1.0)  # rounding: |r| = 1 + eps is |r| = 1 (z = +-inf)
            return 0.5 * np.log((1.0 + r) / (1.0 - r))
    return fisher_z(r)


@pjit
def _fc_update(x, y, seed_state, buf, last, runlen, sums, slot, n_seen, out):
    """Advance per-voxel sums (x, x^2, x*y) and write z; ``seed_state`` is updated first."""
    n = buf.shape[1]
    full = n_seen + 1 >= n
    sy, syy, yo, seed_constant = seed_state[0], seed_state[1], seed_state[2], seed_state[3]
    vary = syy - sy * sy / n
    for j in prange(x.shape[0]):
        if n_seen == 0:
            sums[j, 3] = x[j]  # reference value: sums are of x - ref
        _track_runs(j, x, last, runlen, n_seen)
        xv = x[j] - sums[j, 3]
        if n_seen >= n:
            xo = buf[j, slot]
            sums[j, 0] -= xo
            sums[j, 1] -= xo * xo
            sums[j, 2] -= xo * yo
        sums[j, 0] += xv
        sums[j, 1] += xv * xv
        sums[j, 2] += xv * y
        buf[j, slot] = xv
        if not full:
            continue
        if seed_constant > 0 or runlen[j] >= n - 1:
            out[j] = 0.0
            continue
        varx = sums[j, 1] - sums[j, 0] * sums[j, 0] / n
        cov = sums[j, 2] - sums[j, 0] * sy / n
        r = cov / np.sqrt(varx * vary)
        r = min(max(r, -1.0 + 1e-7), 1.0 - 1e-7)
        out[j] = np.arctanh(r)


class SlidingSeedFC(SlidingState):
    """Seed-based FC (Fisher z) over the last ``window`` volumes, updated every volume.

    The seed series is the mean of the signals selected by ``seed`` in each volume.
    After each :meth:`partial_fit`, ``z_`` equals :func:`seed_fc` on exactly the last
    ``window`` volumes (NaN until the window is full); the update is O(V) (running
    sums of the reference-shifted series).

    Parameters
    ----------
    window : int
        Window length in volumes (>= 3).
    seed : array-like of bool or int, shape (n_signals,) or (n_seed,)
        Seed signals, as a boolean selection or indices into each volume.

    Attributes
    ----------
    z_ : numpy.ndarray, shape (n_signals,)
        Fisher z of every signal with the seed.
    seed_series_ : float
        Seed value of the newest volume.
    n_seen_ : int
        Number of volumes received.
    """

    _min_window = 3

    def __init__(self, window: int, seed):
        super().__init__(window)
        self.seed = seed

    def _allocate(self, n_signals: int) -> None:
        seed = np.asarray(self.seed)
        if seed.dtype == bool:
            if seed.shape != (n_signals,):
                raise ValueError(f"seed must be a boolean vector of shape ({n_signals},), "
                                 f"got shape {seed.shape}.")
            seed = np.flatnonzero(seed)
        elif not np.issubdtype(seed.dtype, np.integer) or seed.ndim != 1:
            raise ValueError("seed must be a boolean vector or a 1-D array of indices.")
        if seed.size == 0:
            raise ValueError("seed selects no signal; expected at least one.")
        if seed.min() < 0 or seed.max() >= n_signals:
            raise ValueError(f"seed indices must lie in [0, {n_signals}), "
                             f"got [{seed.min()}, {seed.max()}].")
        self.seed_indices_ = seed
        n = self.window
        self._buf = np.zeros((n_signals, n))
        self._last = np.zeros(n_signals)
        self._runlen = np.zeros(n_signals, dtype=np.int64)
        self._sums = np.zeros((n_signals, 4))
        self._seed_buf = np.zeros(n)
        self._seed = np.zeros(4)  # sum, sum of squares, outgoing value, constant flag
        self._seed_ref = 0.0
        self._seed_run = 0
        self._seed_last = np.nan
        self.z_ = np.full(n_signals, np.nan)

    def _update(self, x: np.ndarray) -> None:
        n, slot = self.window, self._next_slot()
        y_raw = float(x[self.seed_indices_].mean())
        self.seed_series_ = y_raw
        if self.n_seen_ == 0:
            self._seed_ref = y_raw
        self._seed_run = self._seed_run + 1 if y_raw == self._seed_last else 0
        self._seed_last = y_raw
        y = y_raw - self._seed_ref
        yo = self._seed_buf[slot] if self.n_seen_ >= n else 0.0
        self._seed[0] += y - yo
        self._seed[1] += y * y - yo * yo
        self._seed[2] = yo
        self._seed[3] = float(self._seed_run >= n - 1)
        self._seed_buf[slot] = y
        _fc_update(x, y, self._seed, self._buf, self._last, self._runlen, self._sums, slot,
                   self.n_seen_, self.z_)
