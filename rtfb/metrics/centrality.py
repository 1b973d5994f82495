"""Voxel-wise degree centrality within a mask (binary and weighted, in one pass)."""

from __future__ import annotations

import numpy as np

from .._utils.checks import _check_option, check_finite_array, check_int, check_mask

CONVENTIONS = ("rtfb", "dpabi")


def _standardize(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows centred and scaled to unit norm; constant rows become 0 (flagged)."""
    centred = series - series.mean(axis=1, keepdims=True)
    norm = np.sqrt(np.einsum("vt,vt->v", centred, centred))
    constant = np.ptp(series, axis=1) == 0
    centred /= np.where(constant, 1.0, norm)[:, None]
    centred[constant] = 0.0
    return centred, constant


def degree_centralities(data4d, mask=None, threshold: float = 0.25, convention: str = "rtfb",
                        block_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Binary and weighted degree centrality from one pass over the correlation matrix.

    Binary: number of other in-mask voxels whose Pearson correlation with the voxel is
    above ``threshold``; weighted: sum of those correlations (METHODS.md). The
    correlation matrix is built block by block (memory O(block_size * n_voxels)) and
    each block serves both maps. A constant voxel has no correlation: its degree is 0
    (``convention="rtfb"``) or -1 (``"dpabi"``: DPABI's ``y_DegreeCentrality`` counts the
    self-correlation, then subtracts 1, and a constant voxel's self-correlation is 0).

    Parameters
    ----------
    data4d : array-like, shape (X, Y, Z, n)
        Series, time on the last axis.
    mask : array-like of bool, shape (X, Y, Z) | None
        Voxels to use; ``None`` uses all.
    threshold : float
        Correlation threshold in (-1, 1).
    convention : {"rtfb", "dpabi"}
        Value of constant voxels (0 or -1).
    block_size : int
        Rows of the correlation matrix computed at once.

    Returns
    -------
    binary, weighted : numpy.ndarray, shape (X, Y, Z)
        Degree centrality maps, 0 outside the mask.
    """
    data = check_finite_array(data4d, "data4d", ndim=4)
    mask = check_mask(mask, data.shape[:3])
    _check_option("convention", convention, CONVENTIONS)
    if not -1 < float(threshold) < 1:
        raise ValueError(f"threshold must lie in (-1, 1), got {threshold!r}.")
    block_size = check_int(block_size, "block_size", minimum=1)
    if data.shape[-1] < 3:
        raise ValueError(f"data4d must have at least 3 time points, got {data.shape[-1]}.")
    z, constant = _standardize(data[mask])
    n_vox = z.shape[0]
    binary = np.zeros(n_vox)
    weighted = np.zeros(n_vox)
    for start in range(0, n_vox, block_size):
        stop = min(start + block_size, n_vox)
        r = z[start:stop] @ z.T
        r[np.arange(stop - start), np.arange(start, stop)] = 0.0  # no self-connection
        above = r > threshold
        binary[start:stop] = np.count_nonzero(above, axis=1)
        np.multiply(r, above, out=r)  # in place: the block is not needed any more
        weighted[start:stop] = r.sum(axis=1)
    if convention == "dpabi":
        binary[constant] = -1.0
        weighted[constant] = -1.0
    out_b = np.zeros(data.shape[:3])
    out_w = np.zeros(data.shape[:3])
    out_b[mask] = binary
    out_w[mask] = weighted
    return out_b, out_w


def degree_centrality(data4d, mask=None, threshold: float = 0.25, weighted: bool = False,
                      block_size: int = 2048, convention: str = "rtfb") -> np.ndarray:
    """Degree centrality of every in-mask voxel (one of :func:`degree_centralities`' maps).

    Both maps are computed in one pass; prefer :func:`degree_centralities` when both are
    needed.

    Parameters
    ----------
    data4d, mask, threshold, block_size, convention
        As in :func:`degree_centralities`.
    weighted : bool
        Return the weighted map (sum of correlations) instead of the binary one (count).

    Returns
    -------
    numpy.ndarray, shape (X, Y, Z)
        Degree centrality, 0 outside the mask.
    """
    binary, weighted_map = degree_centralities(data4d, mask, threshold, convention, block_size)
    return weighted_map if weighted else binary
