"""Framewise displacement (Power et al. 2012), batch and incremental.

Motion parameters are ordered ``(tx, ty, tz, rx, ry, rz)``: translations in millimetres,
rotations in **degrees** (as the realignment reports them). Between consecutive volumes,

``FD_t = |dtx| + |dty| + |dtz| + radius * (|drx| + |dry| + |drz|)``

with the rotation differences converted to radians, i.e. rotations become arc lengths on a
sphere of ``radius`` mm (50 mm, roughly the cortex-to-centre distance). ``FD_0 = 0``.
Rotation differences are not wrapped: parameters must be continuous in time (as a
realignment to a fixed reference gives them), not folded into (-180, 180].

References
----------
Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE (2012). Spurious but systematic
correlations in functional connectivity MRI networks arise from subject motion.
NeuroImage 59(3):2142-2154.
"""

from __future__ import annotations

import numpy as np

from .._utils.checks import check_finite_array, check_positive_number

__all__ = ["FramewiseDisplacement", "framewise_displacement"]


def _displacement(delta: np.ndarray, radius: float) -> np.ndarray:
    """FD of parameter differences ``delta`` (..., 6), rotations in degrees."""
    return (np.abs(delta[..., :3]).sum(axis=-1)
            + radius * np.deg2rad(np.abs(delta[..., 3:])).sum(axis=-1))


def framewise_displacement(params, radius: float = 50.0) -> np.ndarray:
    """Framewise displacement of a run (Power 2012).

    Parameters
    ----------
    params : array-like, shape (n_volumes, 6)
        Motion parameters ``(tx, ty, tz, rx, ry, rz)``: translations in mm, rotations
        in degrees.
    radius : float
        Radius in mm of the sphere on which rotations are converted to displacements.

    Returns
    -------
    numpy.ndarray, shape (n_volumes,)
        FD in mm; ``FD[0] = 0``.
    """
    radius = check_positive_number(radius, "radius")
    params = check_finite_array(params, "params", ndim=2)
    if params.shape[1] != 6 or params.shape[0] == 0:
        raise ValueError(
            f"params must have shape (n_volumes >= 1, 6) ordered (tx, ty, tz, rx, ry, rz), "
            f"got {params.shape}."
        )
    fd = np.zeros(params.shape[0])
    fd[1:] = _displacement(np.diff(params, axis=0), radius)
    return fd


class FramewiseDisplacement:
    """Incremental framewise displacement with censoring flags.

    Each :meth:`partial_fit` receives the motion parameters of the newest volume and
    updates the FD of that volume relative to the previous one. A volume whose FD exceeds
    ``threshold`` is *flagged* (``censored_``), never dropped: what to do with it (skip
    feedback, exclude from a metric) is the caller's decision.

    Parameters
    ----------
    radius : float
        Radius in mm of the sphere on which rotations are converted to displacements.
    threshold : float
        FD in mm above which a volume is flagged (strictly greater).

    Attributes
    ----------
    fd_ : float
        FD of the newest volume (0 for the first volume).
    censored_ : bool
        ``fd_ > threshold``.
    n_censored_ : int
        Number of flagged volumes so far.
    n_seen_ : int
        Number of volumes received.
    params_ : numpy.ndarray, shape (6,)
        Parameters of the newest volume.
    """

    def __init__(self, radius: float = 50.0, threshold: float = 0.5):
        self.radius = radius
        self.threshold = threshold

    def partial_fit(self, params6) -> FramewiseDisplacement:
        """Add the motion parameters of the newest volume.

        Parameters
        ----------
        params6 : array-like, shape (6,)
            ``(tx, ty, tz, rx, ry, rz)``: translations in mm, rotations in degrees.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If ``params6`` does not have 6 finite values; the state is then unchanged.
        """
        if not hasattr(self, "n_seen_"):
            self._radius = check_positive_number(self.radius, "radius")
            self._threshold = check_positive_number(self.threshold, "threshold")
        p = check_finite_array(params6, "params6")
        if p.shape != (6,):
            raise ValueError(f"params6 must have shape (6,) ordered (tx, ty, tz, rx, ry, rz), "
                             f"got {p.shape}.")
        if not hasattr(self, "n_seen_"):
            self.fd_ = 0.0
            self.n_seen_ = 0
            self.n_censored_ = 0
            self.params_ = p.copy()
        else:
            self.fd_ = float(_displacement(p - self.params_, self._radius))
            self.params_[:] = p
        self.censored_ = bool(self.fd_ > self._threshold)
        self.n_censored_ += int(self.censored_)
        self.n_seen_ += 1
        return self
