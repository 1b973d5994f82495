"""Shared machinery of the sliding-window (incremental) metric states."""

from __future__ import annotations

import numpy as np

from .._utils.checks import check_finite_array, check_int
from .._utils.jit import jit


@jit
def _track_runs(j, x, last, runlen, n_seen):
    """Count the samples in a row that repeat the last value of signal ``j`` (kernel helper).

    ``runlen[j]`` is 0 at the first sample and whenever the value changes; a window of
    ``n`` samples is constant when ``runlen[j] >= n - 1``.
    """
    if n_seen == 0 or x[j] != last[j]:
        runlen[j] = 0
    else:
        runlen[j] += 1
    last[j] = x[j]


class SlidingState:
    """Base class: a window of the last ``window`` volumes of ``V`` signals.

    Subclasses implement ``_allocate(n_signals)`` and ``_update(x)``. State is created
    on the first call to :meth:`partial_fit`; all arrays are preallocated then, and
    later updates write into them in place (maps returned by the properties are
    views of that state: copy them to keep a value beyond the next update).

    Parameters
    ----------
    window : int
        Number of volumes in the sliding window.
    """

    _min_window = 2

    def __init__(self, window: int):
        self.window = window

    def _check_params(self) -> None:
        check_int(self.window, "window", minimum=self._min_window)

    def partial_fit(self, volume) -> SlidingState:
        """Add one volume (a 1-D vector of signals) to the window.

        Parameters
        ----------
        volume : array-like, shape (n_signals,)
            In-mask voxel values (or ROI means) of the newest volume.

        Returns
        -------
        self
        """
        x = np.asarray(volume)
        if not hasattr(self, "n_seen_"):
            self._check_params()
            x = check_finite_array(x, "volume", ndim=1)
            if x.size == 0:
                raise ValueError("volume must contain at least one signal, got an empty array.")
            self.n_signals_ = x.size
            self.n_seen_ = 0
            self._allocate(x.size)
        else:
            if x.shape != (self.n_signals_,):
                raise ValueError(
                    f"volume must have shape ({self.n_signals_},) like the first volume, "
                    f"got {x.shape}."
                )
            x = check_finite_array(x, "volume")
        self._update(x)
        self.n_seen_ += 1
        return self

    @property
    def is_full_(self) -> bool:
        """True once ``window`` volumes have been seen."""
        return getattr(self, "n_seen_", 0) >= self.window

    # ring-buffer bookkeeping: slot written by the next update, and oldest slot
    def _next_slot(self) -> int:
        return self.n_seen_ % self.window
