"""Nuisance design rows, one volume at a time.

The nuisance design matrix ``X`` has one row per volume. Its columns are, in order:

1. drift regressors (:class:`DriftModel`): **the first drift column is the constant
   term** (intercept), followed by Legendre polynomials / powers of time / discrete
   cosines;
2. motion regressors: the 6 realignment parameters and, optionally, their backward
   differences (0 for the first volume);
3. extra columns supplied by the caller, e.g. the mean CSF, white-matter or global signal
   of the volume computed from masks.

The fit of these rows is :class:`rtfb.preprocess.nuisance.IncrementalGLM`.
"""

from __future__ import annotations

import numpy as np

from .._utils.checks import (
    _check_option,
    _validate_type,
    check_finite_array,
    check_int,
    check_positive_number,
)

__all__ = ["DriftModel", "NuisanceDesign", "drift_regressors", "drift_row", "motion_regressors"]

_KINDS = ("legendre", "polynomial", "cosine")


class DriftModel:
    """Slow-drift regressors, produced one row per volume.

    The first column is always the constant term. Time is the 0-based volume index
    ``t``; ``n_expected`` (the planned number of volumes of the run) fixes the scale of
    the basis, so row ``t`` never changes when later volumes arrive.

    - ``"legendre"``: Legendre polynomials ``P_0 .. P_order`` of
      ``s = 2 t / (n_expected - 1) - 1`` (``s`` spans [-1, 1] over the planned run and
      simply continues beyond it if the run is longer).
    - ``"polynomial"``: powers ``s**0 .. s**order`` of the same ``s`` (same column space
      as ``"legendre"``, less well conditioned).
    - ``"cosine"``: the constant plus ``cos(pi k (t + 0.5) / n_expected)`` for
      ``k = 1 .. floor(2 n_expected tr / cutoff_s)``, i.e. every discrete cosine of
      period >= ``cutoff_s`` seconds over the planned run (SPM's high-pass set; columns
      have unit amplitude).

    Parameters
    ----------
    n_expected : int
        Planned number of volumes of the run (>= 2).
    kind : {"legendre", "polynomial", "cosine"}
        Basis.
    order : int
        Highest polynomial degree (``"legendre"`` and ``"polynomial"``).
    cutoff_s : float
        High-pass cutoff period in seconds (``"cosine"``).
    tr : float | None
        Repetition time in seconds (required for ``"cosine"``).
    """

    def __init__(self, n_expected: int, kind: str = "legendre", order: int = 2,
                 cutoff_s: float = 128.0, tr: float | None = None):
        self.n_expected = n_expected
        self.kind = kind
        self.order = order
        self.cutoff_s = cutoff_s
        self.tr = tr

    def _check_params(self) -> None:
        if hasattr(self, "n_regressors_"):
            return
        _check_option("kind", self.kind, _KINDS)
        n = check_int(self.n_expected, "n_expected", minimum=2)
        if self.kind == "cosine":
            if self.tr is None:
                raise ValueError("tr (repetition time in s) is required for kind='cosine'.")
            tr = check_positive_number(self.tr, "tr")
            cutoff = check_positive_number(self.cutoff_s, "cutoff_s")
            self._freqs = np.pi * np.arange(1, int(np.floor(2 * n * tr / cutoff)) + 1) / n
            self.n_regressors_ = 1 + self._freqs.size
        else:
            self.n_regressors_ = check_int(self.order, "order", minimum=0) + 1

    @property
    def n_regressors(self) -> int:
        """Number of columns (constant included)."""
        self._check_params()
        return self.n_regressors_

    @property
    def names(self) -> list[str]:
        """Column names."""
        self._check_params()
        if self.kind == "cosine":
            return ["constant"] + [f"cosine{k:02d}" for k in range(1, self.n_regressors_)]
        return ["constant"] + [f"{self.kind}{k}" for k in range(1, self.n_regressors_)]

    def _rows(self, t: np.ndarray) -> np.ndarray:
        self._check_params()
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "cosine":
            out = np.ones(t.shape + (self.n_regressors_,))
            out[..., 1:] = np.cos(np.multiply.outer(t + 0.5, self._freqs))
            return out
        s = 2.0 * t / (self.n_expected - 1) - 1.0
        if self.kind == "legendre":
            return np.polynomial.legendre.legvander(s, self.order)
        return np.polynomial.polynomial.polyvander(s, self.order)

    def row(self, t: int) -> np.ndarray:
        """Regressor values of volume ``t``.

        Parameters
        ----------
        t : int
            0-based volume index.

        Returns
        -------
        numpy.ndarray, shape (n_regressors,)
        """
        return self._rows(np.array([check_int(t, "t", minimum=0)]))[0]

    def matrix(self, n_volumes: int) -> np.ndarray:
        """Rows of volumes ``0 .. n_volumes - 1``.

        Parameters
        ----------
        n_volumes : int
            Number of volumes.

        Returns
        -------
        numpy.ndarray, shape (n_volumes, n_regressors)
        """
        return self._rows(np.arange(check_int(n_volumes, "n_volumes", minimum=1)))


def drift_regressors(n_volumes: int, kind: str = "legendre", order: int = 2,
                     cutoff_s: float = 128.0, tr: float | None = None,
                     n_expected: int | None = None) -> np.ndarray:
    """Drift design matrix of a run (first column constant); see :class:`DriftModel`.

    Parameters
    ----------
    n_volumes : int
        Number of rows (volumes ``0 .. n_volumes - 1``).
    kind : {"legendre", "polynomial", "cosine"}
        Basis.
    order : int
        Highest polynomial degree.
    cutoff_s : float
        High-pass cutoff period in seconds (``"cosine"``).
    tr : float | None
        Repetition time in seconds (required for ``"cosine"``).
    n_expected : int | None
        Planned run length fixing the basis scale; defaults to ``n_volumes``.

    Returns
    -------
    numpy.ndarray, shape (n_volumes, n_regressors)
    """
    n_expected = n_volumes if n_expected is None else n_expected
    return DriftModel(n_expected, kind, order, cutoff_s, tr).matrix(n_volumes)


def drift_row(t: int, n_expected: int, kind: str = "legendre", order: int = 2,
              cutoff_s: float = 128.0, tr: float | None = None) -> np.ndarray:
    """Drift regressors of volume ``t`` alone (row ``t`` of :func:`drift_regressors`).

    For a row per volume in a session, build one :class:`DriftModel` and call its
    :meth:`DriftModel.row` (this function re-validates the parameters on every call).

    Parameters
    ----------
    t : int
        0-based volume index.
    n_expected : int
        Planned number of volumes of the run.
    kind : {"legendre", "polynomial", "cosine"}
        Basis.
    order : int
        Highest polynomial degree.
    cutoff_s : float
        High-pass cutoff period in seconds (``"cosine"``).
    tr : float | None
        Repetition time in seconds (required for ``"cosine"``).

    Returns
    -------
    numpy.ndarray, shape (n_regressors,)
    """
    return DriftModel(n_expected, kind, order, cutoff_s, tr).row(t)


def motion_regressors(params, derivatives: bool = False) -> np.ndarray:
    """Motion regressors of a run.

    Parameters
    ----------
    params : array-like, shape (n_volumes, 6)
        Realignment parameters (any units: regression is scale invariant).
    derivatives : bool
        Also return the backward differences ``params[t] - params[t - 1]`` (0 for the
        first volume).

    Returns
    -------
    numpy.ndarray, shape (n_volumes, 6) or (n_volumes, 12)
    """
    params = check_finite_array(params, "params", ndim=2)
    if params.shape[1] != 6 or params.shape[0] == 0:
        raise ValueError(f"params must have shape (n_volumes >= 1, 6), got {params.shape}.")
    if not derivatives:
        return params.copy()
    diff = np.zeros_like(params)
    diff[1:] = np.diff(params, axis=0)
    return np.hstack([params, diff])


class NuisanceDesign:
    """One nuisance design row per volume: drift, motion (+ derivatives), extra columns.

    Parameters
    ----------
    drift : DriftModel | None
        Drift regressors (they contain the constant term); ``None`` for none.
    motion : bool
        Include the 6 motion parameters.
    derivatives : bool
        Include their backward differences: the difference from the parameters given at
        the previous call of :meth:`row` (the previous *received* volume), 0 at the first
        call.
    n_extra : int
        Number of extra columns (mean CSF / WM / global signals computed by the caller).

    Attributes
    ----------
    names_ : list of str
        Column names (set at the first call of :meth:`row`).
    """

    def __init__(self, drift: DriftModel | None = None, motion: bool = True,
                 derivatives: bool = False, n_extra: int = 0):
        self.drift = drift
        self.motion = motion
        self.derivatives = derivatives
        self.n_extra = n_extra

    def _check_params(self) -> None:
        if self.drift is not None:
            _validate_type(self.drift, DriftModel, "drift")
        self._n_extra = check_int(self.n_extra, "n_extra", minimum=0)
        names = [] if self.drift is None else list(self.drift.names)
        axes = ("tx", "ty", "tz", "rx", "ry", "rz")
        if self.motion:
            names += list(axes)
            if self.derivatives:
                names += [f"d_{a}" for a in axes]
        elif self.derivatives:
            raise ValueError("derivatives=True requires motion=True.")
        names += [f"extra{k}" for k in range(self._n_extra)]
        if not names:
            raise ValueError("The design has no column: give a drift model, motion=True "
                             "or n_extra > 0.")
        self.names_ = names
        self._previous = None

    @property
    def n_regressors(self) -> int:
        """Number of columns."""
        if not hasattr(self, "names_"):
            self._check_params()
        return len(self.names_)

    def row(self, index: int, motion=None, extra=None) -> np.ndarray:
        """Design row of one volume.

        Parameters
        ----------
        index : int
            0-based volume index in the run (drives the drift regressors).
        motion : array-like, shape (6,) | None
            Realignment parameters of the volume (required when ``motion=True``).
        extra : array-like, shape (n_extra,) | None
            Extra regressor values of the volume (required when ``n_extra > 0``).

        Returns
        -------
        numpy.ndarray, shape (n_regressors,)
        """
        if not hasattr(self, "names_"):
            self._check_params()
        parts = []
        if self.drift is not None:
            parts.append(self.drift.row(index))
        if self.motion:
            if motion is None:
                raise ValueError("motion must be given (6 parameters) when motion=True.")
            m = check_finite_array(motion, "motion")
            if m.shape != (6,):
                raise ValueError(f"motion must have shape (6,), got {m.shape}.")
            parts.append(m)
            if self.derivatives:
                parts.append(np.zeros(6) if self._previous is None else m - self._previous)
        if self._n_extra:
            if extra is None:
                raise ValueError(f"extra must be given ({self._n_extra} values).")
            e = check_finite_array(extra, "extra")
            if e.shape != (self._n_extra,):
                raise ValueError(f"extra must have shape ({self._n_extra},), got {e.shape}.")
            parts.append(e)
        elif extra is not None:
            raise ValueError("extra was given but the design has n_extra=0.")
        if self.motion:
            self._previous = m.copy()
        return np.concatenate(parts)
