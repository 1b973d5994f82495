"""Regional homogeneity: Kendall's coefficient of concordance W (Zang 2004).

For a voxel and its neighbourhood (7, 19 or 27 voxels including itself; neighbours
outside the mask are left out, ``K`` = number kept), each series is ranked over time
(ties get average ranks), ``R_t`` is the sum of the ``K`` ranks at time ``t`` and
``W = 12 sum_t (R_t - K (n + 1) / 2) ** 2 / (K ** 2 (n ** 3 - n))`` (METHODS.md; no
tie correction). Voxels outside the mask get 0. With ``convention="dpabi"`` (DPABI's
``y_reho``, also C-PAC's) the voxels on the faces of the volume, whose cube leaves the
grid, are left 0 as well; rtfb (like AFNI's 3dReHo) computes them from the neighbours that
exist.

Both implementations use the doubled, centred rank ``q_t = 2 r_t - (n + 1)``, an
integer even with ties, so that neighbourhood sums are exact:
``q_t = sum_u sign(x_t - x_u)`` and ``W = 3 sum_t Q_t ** 2 / (K ** 2 (n ** 3 - n))``
with ``Q_t`` the neighbourhood sum of ``q_t``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .._utils.checks import _check_option, check_finite_array, check_mask
from .._utils.jit import pjit, prange
from ._sliding import SlidingState

NEIGHBORHOODS = (7, 19, 27)
CONVENTIONS = ("rtfb", "dpabi")


def neighbor_offsets(neighborhood: int = 27) -> np.ndarray:
    """Offsets (including 0, 0, 0) of a 7-, 19- or 27-voxel neighbourhood.

    Parameters
    ----------
    neighborhood : int
        7 (faces), 19 (faces and edges) or 27 (the whole 3x3x3 cube).

    Returns
    -------
    numpy.ndarray of int, shape (neighborhood, 3)
    """
    _check_option("neighborhood", neighborhood, NEIGHBORHOODS)
    grid = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    n_nonzero = np.abs(grid).sum(axis=1)
    max_nonzero = {7: 1, 19: 2, 27: 3}[neighborhood]
    return grid[n_nonzero <= max_nonzero]


def neighbor_table(mask: np.ndarray, neighborhood: int = 27) -> tuple[np.ndarray, np.ndarray]:
    """In-mask neighbours of every in-mask voxel, as indices into ``mask``'s voxels.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (X, Y, Z)
        Brain mask; voxels are numbered in C order of ``np.flatnonzero(mask)``.
    neighborhood : int
        7, 19 or 27.

    Returns
    -------
    table : numpy.ndarray of int32, shape (n_voxels, neighborhood)
        Row ``c`` lists the in-mask neighbours of voxel ``c`` (itself first),
        padded with -1.
    counts : numpy.ndarray of int32, shape (n_voxels,)
        Number of in-mask neighbours ``K`` of each voxel (including itself).
    """
    offsets = neighbor_offsets(neighborhood)
    offsets = offsets[np.argsort(np.abs(offsets).sum(axis=1), kind="stable")]  # self first
    index = np.full(np.add(mask.shape, 2), -1, dtype=np.int64)
    index[1:-1, 1:-1, 1:-1][mask] = np.arange(int(mask.sum()))
    coords = np.argwhere(mask) + 1
    cand = index[tuple((coords[:, None, :] + offsets[None, :, :]).transpose(2, 0, 1))]
    order = np.argsort(cand < 0, axis=1, kind="stable")  # in-mask first, keep order
    table = np.take_along_axis(cand, order, axis=1).astype(np.int32)
    counts = (table >= 0).sum(axis=1).astype(np.int32)
    return table, counts


def _neighborhood_sum(grid: np.ndarray, neighborhood: int) -> np.ndarray:
    """Sum over each voxel's neighbourhood (zero padding) of a (X, Y, Z, ...) array."""
    pad = np.pad(grid, [(1, 1)] * 3 + [(0, 0)] * (grid.ndim - 3))
    shape = grid.shape[:3]
    out = np.zeros(grid.shape, dtype=grid.dtype)
    for dx, dy, dz in neighbor_offsets(neighborhood):
        out += pad[1 + dx:1 + dx + shape[0], 1 + dy:1 + dy + shape[1], 1 + dz:1 + dz + shape[2]]
    return out


def reho(data4d, mask=None, neighborhood: int = 27, convention: str = "rtfb") -> np.ndarray:
    """Regional homogeneity (Kendall's W) map of a 4D series.

    Parameters
    ----------
    data4d : array-like, shape (X, Y, Z, n)
        Series, time on the last axis (n >= 2).
    mask : array-like of bool, shape (X, Y, Z) | None
        Voxels to use; neighbours outside it are left out. ``None`` uses all.
    neighborhood : int
        7, 19 or 27 voxels including the centre.
    convention : {"rtfb", "dpabi"}
        ``"dpabi"`` leaves the voxels on the volume's faces 0, as DPABI's ``y_reho``.

    Returns
    -------
    numpy.ndarray, shape (X, Y, Z)
        W in [0, 1] inside the mask, 0 outside.
    """
    data = check_finite_array(data4d, "data4d", ndim=4)
    _check_option("neighborhood", neighborhood, NEIGHBORHOODS)
    _check_option("convention", convention, CONVENTIONS)
    n = data.shape[-1]
    if n < 2:
        raise ValueError(f"data4d must have at least 2 time points, got {n}.")
    mask = check_mask(mask, data.shape[:3])
    if convention == "dpabi":
        inner = np.zeros_like(mask)
        inner[1:-1, 1:-1, 1:-1] = True
        centres = mask & inner
    else:
        centres = mask
    q = np.zeros(data.shape, dtype=np.float64)
    q[mask] = 2.0 * rankdata(data[mask], axis=-1) - (n + 1)
    big_q = _neighborhood_sum(q, neighborhood)
    counts = _neighborhood_sum(mask.astype(np.float64), neighborhood)
    out = np.zeros(data.shape[:3])
    out[centres] = 3.0 * np.einsum("vt,vt->v", big_q[centres], big_q[centres]) / (
        counts[centres] ** 2 * (n**3 - n)
    )
    return out


@pjit
def _rank_update(x, buf, q, slot, n_seen):
    """Update the doubled centred ranks ``q`` for the new volume ``x`` written at ``slot``."""
    n = buf.shape[1]
    for j in prange(x.shape[0]):
        xn = x[j]
        acc = 0
        if n_seen < n:  # warm-up: slots 0 .. slot-1 hold the window
            for t in range(slot):
                v = buf[j, t]
                sn = (v > xn) - (v < xn)
                q[j, t] += sn
                acc -= sn
        else:
            xo = buf[j, slot]
            for t in range(n):
                if t == slot:
                    continue
                v = buf[j, t]
                sn = (v > xn) - (v < xn)
                so = (v > xo) - (v < xo)
                q[j, t] += sn - so
                acc -= sn
        q[j, slot] = acc
        buf[j, slot] = xn


@pjit
def _kendall_w(q, table, counts, n_chunks, out):
    """W of each voxel from the ranks ``q`` of its neighbours (exact integer sums)."""
    n_vox, n = q.shape
    denom = float(n) ** 3 - n
    chunk = (n_vox + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        acc = np.empty(n, dtype=np.int32)
        for v in range(c * chunk, min(n_vox, (c + 1) * chunk)):
            acc[:] = 0
            k = counts[v]
            for i in range(k):
                row = q[table[v, i]]
                for t in range(n):
                    acc[t] += row[t]
            s = 0
            for t in range(n):
                s += np.int64(acc[t]) * acc[t]
            out[v] = 3.0 * s / (k * k * denom)


class SlidingReHo(SlidingState):
    """ReHo (Kendall's W) of the last ``window`` volumes, updated every volume.

    After each :meth:`partial_fit`, ``reho_`` equals :func:`reho` applied to exactly
    the last ``window`` volumes inside ``mask`` (NaN until the window is full).
    Ranks are never re-sorted: the doubled centred rank of each kept sample changes
    by ``sign(x_t - x_new) - sign(x_t - x_old)``, an O(V * window) integer update,
    and W is then an exact integer neighbourhood sum.

    Parameters
    ----------
    window : int
        Window length in volumes (>= 2).
    mask : array-like of bool, shape (X, Y, Z)
        Brain mask; each update takes the in-mask values in C order
        (``volume3d[mask]``).
    neighborhood : int
        7, 19 or 27.

    Attributes
    ----------
    reho_ : numpy.ndarray, shape (n_voxels,)
        Kendall's W of each in-mask voxel for the current window.
    n_seen_ : int
        Number of volumes received.
    """

    def __init__(self, window: int, mask, neighborhood: int = 27):
        super().__init__(window)
        self.mask = mask
        self.neighborhood = neighborhood

    def _check_params(self) -> None:
        super()._check_params()
        mask = np.asarray(self.mask)
        if mask.ndim != 3:
            raise ValueError(f"mask must be a 3D array, got shape {mask.shape}.")
        self.mask_ = check_mask(mask, mask.shape)
        self._table, self._counts = neighbor_table(self.mask_, self.neighborhood)

    def _allocate(self, n_signals: int) -> None:
        if n_signals != self._counts.size:
            raise ValueError(
                f"volume must hold the {self._counts.size} in-mask voxels of mask, "
                f"got {n_signals} values."
            )
        n = self.window
        self._buf = np.zeros((n_signals, n))
        self._q = np.zeros((n_signals, n), dtype=np.int16 if n < 2**14 else np.int32)
        self._n_chunks = 64
        self.reho_ = np.full(n_signals, np.nan)

    def _update(self, x: np.ndarray) -> None:
        _rank_update(x, self._buf, self._q, self._next_slot(), self.n_seen_)
        if self.n_seen_ + 1 >= self.window:
            _kendall_w(self._q, self._table, self._counts, self._n_chunks, self.reho_)
