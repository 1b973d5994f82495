"""Incremental nuisance regression: a least-squares fit updated per volume (cumulative over
the run, or over a sliding window).

Design
------
The design rows (drift, motion and extra regressors) come from :mod:`rtfb.preprocess.design`.
:class:`IncrementalGLM` takes any design rows: it does not add an intercept itself (use a
drift model, or a column of ones, to include one).

Least-squares fit
-----------------
With ``X`` the rows of the fit (all volumes so far, or the last ``window`` volumes) and
``Y`` the matching data, the fit is the minimum-norm least-squares solution
``B = pinv(X'X) X'Y`` (the solution of :func:`numpy.linalg.lstsq`, including its rank
rule: singular values ``<= rcond * s_max`` are dropped, ``rcond = eps * max(n_rows, p)``).
``X'Y`` (V x p) is kept as a running sum, updated in O(V p) per volume; the p x p algebra
uses the singular values of ``X`` itself, never an inverted Gram matrix (see
:class:`IncrementalGLM` for the numerical details).
"""

from __future__ import annotations

import numpy as np

from .._utils.checks import (
    _check_option,
    check_finite_array,
    check_int,
    check_positive_number,
)
from .._utils.jit import jit

__all__ = ["IncrementalGLM"]



# ----------------------------------------------------------------------------- kernels


@jit
def _all_finite(y):
    for j in range(y.shape[0]):
        if not np.isfinite(y[j]):
            return False
    return True


@jit
def _glm_step(y, ref, xty, ybuf, slot, store, x_in, x_out, has_out, w, c, first, cleaned):
    """Update X'Y' (and the data buffer) with one volume and write its cleaned values.

    Serial on purpose: the pass is memory bound (~0.2 ms for 42k voxels, p = 12) and a
    parallel loop stalls whenever the other core is busy (acquisition thread).
    """
    n_sig, p = xty.shape
    for j in range(n_sig):
        if first:
            ref[j] = y[j]
        yp = y[j] - ref[j]
        yo = 0.0
        if has_out:
            yo = ybuf[slot, j]
        if store:
            ybuf[slot, j] = yp
        fit = 0.0
        for k in range(p):
            v = xty[j, k] + yp * x_in[k]
            if has_out:
                v -= yo * x_out[k]
            xty[j, k] = v
            fit += v * w[k]
        cleaned[j] = yp - fit + c * ref[j]


class _Rows:
    """Append-only row storage in fixed-size chunks (no copy of earlier rows on growth)."""

    def __init__(self, width: int, chunk: int):
        self.width = width
        self.chunk = chunk
        self.chunks: list[np.ndarray] = []

    def slot(self, t: int) -> tuple[np.ndarray, int]:
        """Chunk array and row holding row ``t`` (allocating a chunk when needed)."""
        i, r = divmod(t, self.chunk)
        if i == len(self.chunks):
            self.chunks.append(np.zeros((self.chunk, self.width)))
        return self.chunks[i], r

    def stack(self, n: int) -> np.ndarray:
        if n == 0:
            return np.empty((0, self.width))
        return np.concatenate(self.chunks)[:n]


class IncrementalGLM:
    """Nuisance regression updated one volume at a time.

    Each :meth:`partial_fit` adds a volume's in-mask values ``y`` and its design row
    ``x`` and updates the least-squares fit of the data on the design:

    - ``mode="cumulative"``: over all volumes seen so far;
    - ``mode="sliding"``: over the last ``window`` volumes (the outgoing volume's
      contribution is subtracted; its row and data come from preallocated ring buffers).

    ``cleaned_`` is then the newest volume minus its fitted nuisance under the *current*
    estimate, ``y_t - (X'Y)' pinv(X'X) x_t``, computed in O(V p) without forming the
    coefficients. :meth:`residuals` gives all volumes of the fit cleaned with the current
    estimate; it equals ``Y - X @ numpy.linalg.lstsq(X, Y)[0]`` at every step.

    Rank-deficient designs (fewer volumes than regressors, a motion parameter still
    constant at 0 early in the run, collinear columns) are fitted with the pseudo-inverse
    (minimum-norm least squares with lstsq's rank rule) and flagged by
    ``rank_deficient_``; they never raise. The design does not get an implicit
    intercept: include the constant column (the drift regressors of :class:`DriftModel`
    start with it).

    Notes
    -----
    Per volume the cost is O(V p) (one pass over ``X'Y``) plus O(p^2 max(window, p)) for
    an SVD of the window rows (sliding) or of a p x p QR factor updated per volume
    (cumulative). Forming and inverting ``X'X`` would lose ``eps * cond(X)**2`` of
    accuracy, and nuisance designs are ill conditioned early in a run or over a short
    window (cond(X) ~ 1e3-1e6 with polynomial drifts over a few volumes). Instead,
    ``X'Y`` is stored in a *whitened* basis of the design, ``Z = X'Y P`` with ``X P``
    nearly orthonormal, and the design rows are stored in that basis too. When the
    condition number of ``X P`` exceeds ``max_cond`` (warm-up, a column becoming active,
    a drifting window) the basis is renewed: ``Z``, the stored rows and their sums are
    multiplied by the same p x p matrix (one O(V p^2) product, ~1 ms for 42k voxels),
    so that what is later subtracted is exactly what was added. The residuals then
    agree with lstsq to ~1e-11 relative in the tests, and to ~1e-9 after 3,000 volumes
    of a 30-volume window with cond(X) ~ 1e6.

    Data are stored relative to the first volume (``y - y_0``) to keep the sums small.
    The offset ``y_0`` is fitted exactly by a design column that has been constant and
    nonzero in every row (the drift's constant term); without such a column the exact
    correction ``(1 - x_t' pinv(X'X) X'1) y_0`` is applied. Running sums in sliding mode
    accumulate one rounding error per added and removed volume (a slow random walk).

    Parameters
    ----------
    mode : {"cumulative", "sliding"}
        Fit over the whole run or over the last ``window`` volumes.
    window : int | None
        Window length in volumes (``"sliding"`` only, >= 2).
    keep_data : bool
        ``"cumulative"`` only: store every volume (float64, V values per volume; memory
        grows with the run, e.g. 670 MB for 2,000 volumes of 42k voxels) so that
        :meth:`residuals` can be called without passing the data. The design rows are
        always stored (2 p values per volume, also growing with the run). The sliding
        mode always keeps its window (``window`` x V floats) and nothing else.
    rcond : float | None
        Relative singular-value cutoff; ``None`` uses lstsq's ``eps * max(n_rows, p)``.
    max_cond : float
        Condition number of the whitened design above which the basis is renewed.

    Attributes
    ----------
    cleaned_ : numpy.ndarray, shape (n_signals,)
        Newest volume minus its fitted nuisance (a buffer overwritten by every update:
        copy it to keep it).
    rank_ : int
        Numerical rank of the current design.
    rank_deficient_ : bool
        ``rank_ < n_regressors_``.
    singular_values_ : numpy.ndarray
        Singular values of the current design.
    xtx_ : numpy.ndarray, shape (p, p)
        ``X'X`` of the current fit.
    n_rows_ : int
        Number of volumes in the current fit.
    n_seen_ : int
        Number of volumes received.
    n_signals_ : int
        Number of signals (voxels) V.
    n_regressors_ : int
        Number of design columns p.
    n_rebasis_ : int
        Number of basis renewals so far.
    """

    _chunk = 64

    def __init__(self, mode: str = "cumulative", window: int | None = None,
                 keep_data: bool = False, rcond: float | None = None,
                 max_cond: float = 100.0):
        self.mode = mode
        self.window = window
        self.keep_data = keep_data
        self.rcond = rcond
        self.max_cond = max_cond

    # ------------------------------------------------------------------ set-up / checks
    def _check_params(self) -> None:
        _check_option("mode", self.mode, ("cumulative", "sliding"))
        if self.mode == "sliding":
            if self.window is None:
                raise ValueError("window (number of volumes) is required for mode='sliding'.")
            self._window = check_int(self.window, "window", minimum=2)
        elif self.window is not None:
            raise ValueError(f"window must be None for mode='cumulative', got {self.window!r}.")
        if self.rcond is not None:
            check_positive_number(self.rcond, "rcond")
        if check_positive_number(self.max_cond, "max_cond") < 2:
            raise ValueError(f"max_cond must be >= 2, got {self.max_cond!r}.")

    def _allocate(self, n_signals: int, p: int) -> None:
        self.n_signals_ = n_signals
        self.n_regressors_ = p
        self.n_seen_ = 0
        self.n_rows_ = 0
        self.n_rebasis_ = 0
        self._ref = np.zeros(n_signals)
        self._z = np.zeros((n_signals, p))  # X'(Y - y_0) P
        self._z_tmp = np.zeros((n_signals, p))
        self._p = np.eye(p)  # whitening basis (x_white = P' x) and its inverse
        self._pinv = np.eye(p)
        self._sxw = np.zeros(p)  # (XP)'1
        self._constant = np.ones(p, dtype=bool)  # columns constant over every row so far
        self._x0 = np.zeros(p)
        self.xtx_ = np.zeros((p, p))
        self.cleaned_ = np.zeros(n_signals)
        self._dummy = np.zeros((1, 1))
        if self.mode == "sliding":
            self._xbuf = np.zeros((self._window, p))  # rows as given
            # the same rows in the current basis, plus the outgoing row in the last slot
            self._xwbuf = np.zeros((self._window + 1, p))
            self._ybuf = np.zeros((self._window, n_signals))
        else:
            self._xrows = _Rows(p, self._chunk)
            self._xwrows = _Rows(p, self._chunk)
            self._yrows = _Rows(n_signals, self._chunk) if self.keep_data else None
            self._r = np.zeros((0, p))  # R factors of X and of X P
            self._rw = np.zeros((0, p))

    def _check_inputs(self, y, x) -> tuple[np.ndarray, np.ndarray]:
        x = check_finite_array(x, "x")
        y = np.asarray(y)
        if y.dtype not in (np.float64, np.float32):
            y = check_finite_array(y, "y")
        if not hasattr(self, "n_seen_"):
            self._check_params()
            if y.ndim != 1 or y.size == 0:
                raise ValueError(f"y must be a non-empty 1-D array of in-mask values, got "
                                 f"shape {y.shape}.")
            if x.ndim != 1 or x.size == 0:
                raise ValueError(f"x (design row) must be a non-empty 1-D array, got shape "
                                 f"{x.shape}.")
        else:
            if y.shape != (self.n_signals_,):
                raise ValueError(f"y must have shape ({self.n_signals_},) like the first "
                                 f"volume, got {y.shape}.")
            if x.shape != (self.n_regressors_,):
                raise ValueError(f"x (design row) must have shape ({self.n_regressors_},) "
                                 f"like the first row, got {x.shape}.")
        if not _all_finite(y):
            n_bad = int(y.size - np.count_nonzero(np.isfinite(y)))
            raise ValueError(f"y contains {n_bad} NaN or infinite value(s); expected finite "
                             f"values (the GLM state is unchanged).")
        return y, x

    # ------------------------------------------------------------------------ fitting
    def _rank(self, s: np.ndarray, n_rows: int) -> int:
        rcond = self.rcond
        if rcond is None:
            rcond = np.finfo(np.float64).eps * max(n_rows, self.n_regressors_)
        if s.size == 0 or s[0] <= 0:
            return 0
        return int(np.count_nonzero(s > rcond * s[0]))

    def _white_factor(self) -> np.ndarray:
        if self.mode == "sliding":
            return self._xwbuf[:self.n_rows_]
        return self._rw

    def _rebasis(self, sw: np.ndarray, vtw: np.ndarray, k: int) -> None:
        """Change basis by M so that X P M is orthonormal in its k leading directions.

        Everything stored in the whitened basis (X'Y P, the whitened rows, their sum) is
        transformed by the same M, so that additions and later removals stay consistent.
        """
        d = np.full(self.n_regressors_, sw[0])
        d[:k] = sw[:k]
        m = vtw.T / d
        np.matmul(self._z, m, out=self._z_tmp)
        self._z, self._z_tmp = self._z_tmp, self._z
        self._p = self._p @ m
        self._pinv = (d[:, None] * vtw) @ self._pinv
        self._sxw = self._sxw @ m
        if self.mode == "sliding":
            self._xwbuf[:] = self._xwbuf @ m
        else:
            for chunk in self._xwrows.chunks:
                chunk[:] = chunk @ m
            self._rw = np.linalg.qr(self._rw @ m, mode="r")
        self.n_rebasis_ += 1

    def partial_fit(self, y, x) -> IncrementalGLM:
        """Add one volume and update the fit.

        Parameters
        ----------
        y : array-like, shape (n_signals,)
            In-mask values of the volume (float32 or float64, finite).
        x : array-like, shape (n_regressors,)
            Its design row (finite).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            If ``y`` or ``x`` has the wrong shape or contains NaN/inf; the state is then
            unchanged.
        """
        y, x = self._check_inputs(y, x)
        first = not hasattr(self, "n_seen_")
        if first:
            self._allocate(y.size, x.size)
            self._x0[:] = x
        t = self.n_seen_
        self._constant &= x == self._x0
        xw = self._p.T @ x
        if self.mode == "sliding":
            slot = t % self._window
            has_out = t >= self._window
            self._xwbuf[self._window] = self._xwbuf[slot]  # outgoing row, kept for re-basing
            self._xbuf[slot] = x
            self._xwbuf[slot] = xw
            self.n_rows_ = min(t + 1, self._window)
            factor = self._xbuf[:self.n_rows_]
            self.xtx_ = factor.T @ factor
            ybuf, ystore, store = self._ybuf, slot, True
        else:
            has_out = False
            self.n_rows_ = t + 1
            for rows, row in ((self._xrows, x), (self._xwrows, xw)):
                chunk, r = rows.slot(t)
                chunk[r] = row
            # Householder QR: column-wise backward stable, so small columns stay accurate
            self._r = np.linalg.qr(np.vstack([self._r, x]), mode="r")
            self._rw = np.linalg.qr(np.vstack([self._rw, xw]), mode="r")
            self._sxw += xw
            factor = self._r
            self.xtx_ += np.outer(x, x)
            if self._yrows is not None:
                ybuf, ystore = self._yrows.slot(t)
                store = True
            else:
                ybuf, ystore, store = self._dummy, 0, False
        s = np.linalg.svd(factor, compute_uv=False)
        k = self._rank(s, self.n_rows_)
        if k:
            _, sw, vtw = np.linalg.svd(self._white_factor(), full_matrices=True)
            if sw[0] > self.max_cond * sw[k - 1]:
                self._rebasis(sw, vtw, k)
                _, sw, vtw = np.linalg.svd(self._white_factor(), full_matrices=True)
            sw, vtw = sw[:k], vtw[:k]
        else:  # all-zero design so far: nothing is fitted
            sw, vtw = np.zeros(0), np.zeros((0, self.n_regressors_))
        # the newest (and outgoing) whitened rows exactly as stored (and re-based)
        if self.mode == "sliding":
            xw, xw_out = self._xwbuf[slot].copy(), self._xwbuf[self._window].copy()
            self._sxw = self._xwbuf[:self.n_rows_].sum(axis=0)
        else:
            xw = self._xwrows.slot(t)[0][t % self._chunk].copy()
            xw_out = xw  # unused (nothing leaves a cumulative fit)
        w = vtw.T @ ((vtw @ xw) / sw**2)
        intercept = bool((self._constant & (self._x0 != 0)).any())
        c = 0.0 if intercept else 1.0 - float(w @ self._sxw)
        _glm_step(y, self._ref, self._z, ybuf, ystore, store, xw, xw_out, has_out, w, c,
                  first, self.cleaned_)
        self.singular_values_ = s
        self.rank_ = k
        self.rank_deficient_ = k < self.n_regressors_
        self._sw, self._vtw = sw, vtw
        self._intercept = intercept
        self.n_seen_ = t + 1
        self._coef = None
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_seen_"):
            raise ValueError("This IncrementalGLM has seen no volume yet: call partial_fit "
                             "first.")

    def _gram_pinv_white(self) -> np.ndarray:
        """``pinv((XP)'(XP))`` restricted to the retained directions."""
        return (self._vtw.T / self._sw**2) @ self._vtw

    def _white_design(self) -> np.ndarray:
        """Whitened design rows of the current fit in time order."""
        if self.mode == "sliding":
            return self._xwbuf[self._order()]
        return self._xwrows.stack(self.n_rows_)

    def _order(self) -> np.ndarray:
        """Ring-buffer slots of the window in time order (sliding mode)."""
        t = self.n_seen_
        if t <= self._window:
            return np.arange(t)
        return np.arange(t - self._window, t) % self._window

    @property
    def design_(self) -> np.ndarray:
        """Design rows of the current fit in time order, shape (n_rows_, p)."""
        self._check_fitted()
        if self.mode == "sliding":
            return self._xbuf[self._order()]
        return self._xrows.stack(self.n_rows_)

    @property
    def xty_(self) -> np.ndarray:
        """``X'Y`` of the current fit, shape (n_signals_, p) (computed on access)."""
        self._check_fitted()
        return (self._z + np.outer(self._ref, self._sxw)) @ self._pinv

    @property
    def coef_(self) -> np.ndarray:
        """Minimum-norm least-squares coefficients, shape (n_signals_, p) (lazy)."""
        self._check_fitted()
        if self._coef is None:
            g = self._gram_pinv_white()
            coef = (self._z @ g + np.outer(self._ref, g @ self._sxw)) @ self._p.T
            # any least-squares solution projected on the row space of X is the min-norm one
            vt = np.linalg.svd(self.design_, full_matrices=False)[2][:self.rank_]
            self._coef = (coef @ vt.T) @ vt
        return self._coef

    def clean(self, Y, X, signals=None) -> np.ndarray:  # noqa: N803 (Y, X are matrices)
        """Any rows of data minus their nuisance fitted with the *current* estimate.

        This is how a sliding metric gets a window cleaned by one consistent model: every
        sample of the window (given here with its design row) is cleaned with the same,
        newest estimate, ``Y - X B`` with ``B`` the least-squares fit of all the volumes
        of the current fit. For rows that belong to the fit the result does not depend
        on which least-squares solution is used (rank-deficient designs included).

        Parameters
        ----------
        Y : array-like, shape (n, n_selected)
            Data of ``n`` volumes for the selected signals (as given to
            :meth:`partial_fit`, i.e. before cleaning).
        X : array-like, shape (n, n_regressors_)
            Their design rows.
        signals : array-like of int | None
            Indices of the selected signals among the ``n_signals_`` (``None``: all).

        Returns
        -------
        numpy.ndarray, shape (n, n_selected)
            Cost O(n p n_selected).
        """
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        sel = slice(None) if signals is None else np.asarray(signals)
        ref, z = self._ref[sel], self._z[sel]
        if X.ndim != 2 or X.shape[1] != self.n_regressors_:
            raise ValueError(f"X must have shape (n, {self.n_regressors_}), got {X.shape}.")
        if Y.shape != (X.shape[0], ref.size):
            raise ValueError(f"Y must have shape ({X.shape[0]}, {ref.size}) (rows of X x "
                             f"selected signals), got {Y.shape}.")
        h = (X @ self._p) @ self._gram_pinv_white()
        res = (Y - ref) - h @ z.T
        if not self._intercept:  # constant not in the design: correct for the offset y_0
            res += np.outer(1.0 - h @ self._sxw, ref)
        return res

    def residuals(self, Y=None) -> np.ndarray:  # noqa: N803 (Y is a matrix)
        """Data of the current fit minus the nuisance fitted with the current estimate.

        Parameters
        ----------
        Y : array-like, shape (n_rows_, n_signals) | None
            Data of the volumes of the fit, oldest first. ``None`` uses the stored data
            (always available in sliding mode; in cumulative mode only with
            ``keep_data=True``).

        Returns
        -------
        numpy.ndarray, shape (n_rows_, n_signals_)
            Residuals in time order (rows of the window in sliding mode, of the whole run
            in cumulative mode).
        """
        self._check_fitted()
        if Y is None:
            if self.mode == "sliding":
                yp = self._ybuf[self._order()]
            elif self._yrows is not None:
                yp = self._yrows.stack(self.n_rows_)
            else:
                raise ValueError("residuals() needs Y (the data of the run) in cumulative "
                                 "mode unless the GLM was created with keep_data=True.")
        else:
            Y = check_finite_array(Y, "Y", ndim=2)
            if Y.shape != (self.n_rows_, self.n_signals_):
                raise ValueError(f"Y must have shape ({self.n_rows_}, {self.n_signals_}) "
                                 f"(volumes of the fit x signals), got {Y.shape}.")
            yp = Y - self._ref
        h = self._white_design() @ self._gram_pinv_white()
        res = yp - h @ self._z.T
        if not self._intercept:  # constant not in the design: correct for the offset y_0
            res += np.outer(1.0 - h @ self._sxw, self._ref)
        return res
